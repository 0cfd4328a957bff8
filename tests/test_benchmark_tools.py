"""The benchmark tools' own parts that a wrong figure would hide: ``benchmarks/avx2_only.c``
(``bench_condensed --as-avx2``) really hides AVX-512 from every library that asks CPUID, and
leaves the results unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

PROBE = """
import torch
from sparsify_cli.exporters import condensed
x, w = torch.randn(2, 8, 9, 9), torch.randn(4, 8, 3, 3)
err = torch.nn.functional.conv2d(x, w) - torch.nn.functional.conv2d(x.double(), w.double())
print(torch.backends.cpu.get_cpu_capability(), condensed.kernel_isa(), float(err.abs().max()))
"""


@pytest.mark.skipif(
    " cpuid_fault" not in FLAGS or " avx512f" not in FLAGS or shutil.which("cc") is None,
    reason="needs Linux CPUID faulting, an AVX-512 CPU to hide and a C compiler",
)
def test_avx2_only_hides_avx512_from_torch_and_the_kernels(tmp_path: Path) -> None:
    lib = tmp_path / "avx2_only.so"
    src = ROOT / "benchmarks" / "avx2_only.c"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "SPARSIFY_CONDENSED_ISA"}
    plain = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    hidden = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, "LD_PRELOAD": str(lib)},
        capture_output=True,
        text=True,
    )
    assert plain.returncode == 0 and hidden.returncode == 0, plain.stderr + hidden.stderr
    assert plain.stdout.split()[:2] == ["AVX512", "avx512"]
    assert hidden.stdout.split()[:2] == ["AVX2", "avx2"]  # torch (cpuinfo) and our dispatch
    assert float(hidden.stdout.split()[2]) < 1e-3  # the AVX2 code computes the same conv


def test_bench_condensed_refuses_an_unknown_sparsity_by_name() -> None:
    """A sparsity the benchmark has no mask for is refused with the choices, not a KeyError."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_condensed", "--conv-sparsities", "2:4,0.875"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "--conv-sparsities: unknown 0.875; choose from 2:4, 0.75, 0.9, 0.95" in done.stderr
    assert "Traceback" not in done.stderr
