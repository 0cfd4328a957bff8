"""How long the command line takes before it does anything: ``sparsify --help`` and a typo,
against ``import torch`` (what every command paid before the CLI became import-light), timed
interleaved in the same run so a loaded machine slows all of them alike.

    python -m benchmarks.bench_cli_startup            # 7 rounds
    python -m benchmarks.bench_cli_startup --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _sparsify() -> list[str]:
    exe = Path(sys.executable).with_name("sparsify")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sparsify_cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    commands = {
        "sparsify --help": [*_sparsify(), "--help"],
        "sparsify convrt (typo)": [*_sparsify(), "convrt"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, timeout=120)
            times[name].append(time.perf_counter() - start)
    print(f"{'command':28} {'median s':>9} {'best s':>7}  ({args.rounds} rounds, interleaved)")
    for name, values in times.items():
        print(f"{name:28} {statistics.median(values):9.3f} {min(values):7.3f}")


if __name__ == "__main__":
    main()
