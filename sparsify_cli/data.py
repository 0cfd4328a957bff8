"""The ``--data`` spec: a shipped dataset name, or an ``.npz`` with ``x``, ``y`` (optional
``x_test``, ``y_test``; without them a fixed 10% split is held out).

Inputs must match the model's example input without its batch axis; labels are 1-D integers
of the same length. Anything else is a :class:`SparsifyError` that names the array.

Models with several inputs (``--input``, Hugging Face folders) read an ``.npz`` with one array
per input named after it (``input_ids``, ``attention_mask``), optional ``<name>_test`` arrays
for the held-out split, and labels ``y`` (``y_test``).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import DTYPES, INTEGER_DTYPES, InputSpec
from sparsify_cli.samples.datasets import DATASETS, Dataset, holdout_split


def _inputs(arr: np.ndarray, name: str, sample_shape: Sequence[int], source: str) -> np.ndarray:
    if arr.dtype.kind not in "fiub":
        raise SparsifyError(
            f"array {name!r} in {source} has dtype {arr.dtype}", expected="a numeric array"
        )
    if arr.ndim == 0 or len(arr) == 0:
        raise SparsifyError(f"array {name!r} in {source} has no rows", expected="at least 1 row")
    if tuple(arr.shape[1:]) != tuple(sample_shape):
        raise SparsifyError(
            f"array {name!r} in {source} does not fit the model's input",
            expected=f"shape [N, {', '.join(map(str, sample_shape))}]",
            found=f"shape {list(arr.shape)}",
            fix="reshape the inputs, or pass the matching --input-shape",
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise SparsifyError(
            f"array {name!r} in {source} contains NaN or Inf",
            found=f"{int((~np.isfinite(arr)).sum())} non-finite values",
            fix="clean or drop those rows",
        )
    return arr


def _labels(arr: np.ndarray, name: str, rows: int, source: str) -> np.ndarray:
    if arr.ndim != 1 or len(arr) != rows or arr.dtype.kind not in "iu":
        raise SparsifyError(
            f"array {name!r} in {source} is not a label vector",
            expected=f"1-D integer class ids with {rows} rows",
            found=f"shape {list(arr.shape)}, dtype {arr.dtype}",
        )
    if arr.min() < 0:
        raise SparsifyError(f"array {name!r} in {source} has negative class ids")
    return arr.astype(np.int64)


def _named_input(arrays: dict[str, np.ndarray], key: str, spec: InputSpec, source: str):
    arr = arrays[key]
    fixed = [(axis, size) for axis, size in enumerate(spec.shape) if axis not in spec.dynamic]
    if arr.ndim != len(spec.shape) or any(arr.shape[a] != size for a, size in fixed):
        raise SparsifyError(
            f"array {key!r} in {source} does not fit the model's input {spec.name!r}",
            expected=f"{len(spec.shape)} axes, sizes {dict(fixed)} on the fixed axes",
            found=f"shape {list(arr.shape)}",
        )
    if spec.dtype in INTEGER_DTYPES and arr.dtype.kind not in "iub":
        raise SparsifyError(
            f"array {key!r} in {source} has dtype {arr.dtype}",
            expected=f"integers ({spec.dtype}) for input {spec.name!r}",
        )
    if spec.dtype not in INTEGER_DTYPES and spec.dtype != "bool":
        _inputs(arr, key, arr.shape[1:], source)  # numeric and finite
    return arr.astype(DTYPES[spec.dtype][1])


def load_input_data(spec: str, specs: Sequence[InputSpec]) -> Dataset:
    """Load an ``.npz`` for a model with several named inputs (one array per input, ``y``)."""
    arrays = _read_npz(spec)
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise SparsifyError(
            f"data file {spec} lacks arrays for the inputs {missing}",
            expected=f"arrays {[s.name for s in specs]} (+ y, optional <name>_test, y_test)",
            found=f"arrays {sorted(arrays)}",
        )
    x = {s.name: _named_input(arrays, s.name, s, spec) for s in specs}
    counts = {len(a) for a in x.values()}
    if len(counts) != 1 or 0 in counts:
        raise SparsifyError(
            f"the input arrays in {spec} have different (or zero) row counts", found=str(counts)
        )
    y = _labels(arrays["y"], "y", len(x[specs[0].name]), spec) if "y" in arrays else None
    if f"{specs[0].name}_test" not in arrays:
        return holdout_split(x, y)
    x_test = {s.name: _named_input(arrays, f"{s.name}_test", s, spec) for s in specs}
    rows = len(x_test[specs[0].name])
    y_test = None
    if y is not None:
        if "y_test" not in arrays:
            raise SparsifyError(f"data file {spec} has test inputs and 'y' but no 'y_test'")
        y_test = _labels(arrays["y_test"], "y_test", rows, spec)
    return Dataset(x, y, x_test, y_test)


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; ``what`` names it in errors (``data file x``).

    Each member's header is read first: a member that is not an ``.npy`` array, holds Python
    objects, or claims more bytes than the file stores (a header asking for a TiB) is refused
    before anything is allocated.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                _check_member(archive, info, what)
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise SparsifyError(
            f"cannot read {what}",
            expected="an .npz written by numpy.savez",
            found=f"{type(err).__name__}: {err}",
        ) from err


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> None:
    name = info.filename
    if not name.endswith(".npy"):
        raise SparsifyError(f"member {name!r} of {what} is not an array", expected=".npy members")
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(fh)
        header = fh.tell()
    if dtype.hasobject:
        raise SparsifyError(
            f"array {name[:-4]!r} in {what} holds Python objects",
            expected="numeric arrays (objects would need unpickling)",
        )
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size - header:
        raise SparsifyError(
            f"array {name[:-4]!r} in {what} is truncated or its header is corrupt",
            expected=f"{claimed:,} bytes of data for shape {list(shape)}",
            found=f"{info.file_size - header:,} bytes",
        )


def _read_npz(spec: str) -> dict[str, np.ndarray]:
    path = Path(spec)
    if not path.is_file():
        raise SparsifyError(
            f"data not found: {spec}",
            expected=f"a dataset name ({', '.join(DATASETS)}) or an .npz file",
        )
    return read_npz(path, f"data file {spec}")


def load_data(spec: str, sample_shape: Sequence[int]) -> Dataset:
    """Load ``spec`` for a model whose single input is ``[batch, *sample_shape]``."""
    if spec in DATASETS:
        data = DATASETS[spec]()
        if tuple(data.x_train.shape[1:]) != tuple(sample_shape):
            raise SparsifyError(
                f"dataset {spec!r} does not fit the model's input",
                expected=f"inputs [N, {', '.join(map(str, sample_shape))}]",
                found=f"[N, {', '.join(map(str, data.x_train.shape[1:]))}]",
            )
        return data
    arrays = _read_npz(spec)
    if "x" not in arrays:
        raise SparsifyError(
            f"data file {spec} has no array 'x'",
            expected="arrays x, y (optional x_test, y_test)",
            found=f"arrays {sorted(arrays)}",
        )
    x = _inputs(arrays["x"], "x", sample_shape, spec)
    y = _labels(arrays["y"], "y", len(x), spec) if "y" in arrays else None
    if "x_test" not in arrays:
        return holdout_split(x, y)
    x_test = _inputs(arrays["x_test"], "x_test", sample_shape, spec)
    y_test = None
    if y is not None:
        if "y_test" not in arrays:
            raise SparsifyError(f"data file {spec} has 'x_test' and 'y' but no 'y_test'")
        y_test = _labels(arrays["y_test"], "y_test", len(x_test), spec)
    return Dataset(x, y, x_test, y_test)
