"""Is TensorRT usable here? Checked before any expensive work, explained in one message.

Building and timing engines needs three things: an NVIDIA GPU visible to CUDA, a CUDA build of
torch (engine buffers and streams are torch CUDA tensors) and the ``tensorrt`` Python package
(``pip install 'sparsify-cli[tensorrt]'``). The check looks the package up without importing it,
so it is cheap and safe on a CPU-only machine.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from sparsify_cli.passes.errors import SparsifyError


def missing_requirements() -> list[str]:
    """What is missing for the TensorRT exporter (empty when everything is there)."""
    import torch

    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the tensorrt Python package is not installed")
    if not torch.cuda.is_available():
        build = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        missing.append(
            f"torch {torch.__version__} ({build}) sees no CUDA GPU (torch.cuda.is_available() "
            "is False)"
        )
    return missing


def require_tensorrt() -> None:
    """Raise one :class:`SparsifyError` naming everything missing for ``--export tensorrt``."""
    missing = missing_requirements()
    if missing:
        raise SparsifyError(
            "--export tensorrt needs an NVIDIA GPU with CUDA and TensorRT",
            found="; ".join(missing),
            fix=(
                "run on a machine with an NVIDIA GPU (Ampere or newer for 2:4 sparse kernels), "
                "a CUDA build of torch and `pip install 'sparsify-cli[tensorrt]'` "
                "(TensorRT 10); or leave tensorrt out of --export"
            ),
        )


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` after :func:`require_tensorrt` (the only place it is imported)."""
    require_tensorrt()
    import tensorrt

    major = int(tensorrt.__version__.split(".")[0])
    if major != 10:
        raise SparsifyError(
            "unsupported TensorRT version",
            expected="TensorRT 10.x (weakly typed networks with FP16/INT8 builder flags)",
            found=tensorrt.__version__,
            fix="pip install 'tensorrt>=10,<11'",
        )
    return tensorrt
