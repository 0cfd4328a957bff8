"""Times ONNX models with DeepSparse; run by bench_condensed in the interpreter that has it.

DeepSparse (Neural Magic's sparse CPU runtime, end of life since 2025; ``pip install
deepsparse==1.8.0`` still installs on x86-64 Python 3.11) is no dependency of this project, so
this script imports nothing from it: bench_condensed starts it with ``--deepsparse-python``'s
interpreter. Reads a JSON job list on stdin, ``[{"path", "shape", "threads", "seconds",
"statistic"}]``, and prints one JSON list of milliseconds, the median or the fastest call (or an
error string per job).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def time_ms(path: str, shape: list[int], threads: int, seconds: float, statistic: str) -> float:
    from deepsparse import compile_model

    engine = compile_model(path, batch_size=shape[0], num_cores=threads)
    x = [np.random.default_rng(0).standard_normal(shape).astype(np.float32)]
    for _ in range(5):
        engine(x)
    times = []
    start = time.perf_counter()
    while len(times) < 25 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - t0)
    return float(np.min(times) if statistic == "min" else np.median(times)) * 1e3


def main() -> None:
    results: list[float | str] = []
    for job in json.load(sys.stdin):
        try:
            args = (job["path"], job["shape"], job["threads"], job["seconds"])
            results.append(time_ms(*args, job.get("statistic", "median")))
        except Exception as exc:  # one failed compile must not lose the other columns
            results.append(f"{type(exc).__name__}: {exc}"[:200])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
