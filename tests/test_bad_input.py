"""Bad input through the real CLI: one clear message, non-zero exit, no traceback."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tests.conftest import FAST, run_cli


def _expect_error(proc, *words, code=1):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "error:" in proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


@pytest.mark.parametrize(
    "nm, words",
    [
        ("4:2", ["1 <= N < M"]),
        ("0:4", ["1 <= N < M"]),
        ("4:4", ["1 <= N < M"]),
        ("5:4", ["1 <= N < M"]),
        ("-1:4", ["1 <= N < M"]),
        ("a:b", ["cannot read --nm"]),
        ("2:4:1", ["cannot read --nm"]),
        ("", ["cannot read --nm"]),
    ],
)
def test_invalid_nm(nm, words, tmp_path):
    _expect_error(
        run_cli("convert", "digits_cnn", "--nm", nm, "--out", str(tmp_path / "o")), *words
    )


def test_bad_checkpoints(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04not a real checkpoint" * 10)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    cases = [
        (["missing.pt", "--arch", "x:y"], ["checkpoint not found: missing.pt"]),
        ([str(empty), "--arch", "x:y"], ["is empty"]),
        ([str(corrupt), "--arch", "x:y"], ["corrupt or not a checkpoint"]),
        ([str(text), "--arch", "x:y"], ["corrupt or not a checkpoint"]),
        ([str(tmp_path), "--arch", "x:y"], ["is a folder"]),
    ]
    for args, words in cases:
        _expect_error(run_cli("convert", *args, "--out", str(tmp_path / "o")), *words)


def test_bad_arch_and_shapes(unseen_model, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3, 3)}, other)
    base = ["--input-shape", "1,1,8,8", "--out", str(tmp_path / "o")]
    cases = [
        (["net.pt", "--arch", "nosuchmodule:Net", *base], ["cannot import module 'nosuchmodule'"]),
        (["net.pt", "--arch", "mymodels:Nope", *base], ["has no attribute 'Nope'"]),
        (["net.pt", "--arch", "mymodels", *base], ["cannot read --arch"]),
        (["net.pt", *base], ["no architecture was given"]),
        ([str(other), "--arch", "mymodels:Net", *base], ["does not match the model", "missing"]),
        (
            [
                "net.pt",
                "--arch",
                "mymodels:Net",
                "--input-shape",
                "1,3,32,32",
                "--out",
                str(tmp_path / "o"),
            ],
            ["--input-shape 1,3,32,32 does not fit the model"],
        ),
        (
            [
                "net.pt",
                "--arch",
                "mymodels:Net",
                "--input-shape",
                "1,a",
                "--out",
                str(tmp_path / "o"),
            ],
            ["cannot read --input-shape"],
        ),
        (["net.pt", "--arch", "mymodels:Net", "--out", str(tmp_path / "o")], ["no --input-shape"]),
    ]
    for args, words in cases:
        _expect_error(run_cli("convert", *args, cwd=unseen_model), *words)


def test_bad_data(unseen_model, tmp_path):
    rng = np.random.default_rng(0)
    files = {
        "shape.npz": dict(x=rng.random((10, 3, 8, 8)), y=np.zeros(10, int)),
        "nan.npz": dict(x=np.full((10, 1, 8, 8), np.nan), y=np.zeros(10, int)),
        "empty.npz": dict(x=np.zeros((0, 1, 8, 8)), y=np.zeros(0, int)),
        "dtype.npz": dict(x=np.array([["a"] * 64] * 2).reshape(2, 1, 8, 8), y=np.zeros(2, int)),
        "labels.npz": dict(x=rng.random((10, 1, 8, 8)), y=rng.random(10)),
        "nox.npz": dict(inputs=rng.random((10, 1, 8, 8))),
    }
    words = {
        "shape.npz": "does not fit the model's input",
        "nan.npz": "NaN or Inf",
        "empty.npz": "has no rows",
        "dtype.npz": "dtype",
        "labels.npz": "not a label vector",
        "nox.npz": "has no array 'x'",
    }
    for name, arrays in files.items():
        np.savez(tmp_path / name, **arrays)
        proc = run_cli(
            "convert",
            "net.pt",
            "--arch",
            "mymodels:Net",
            "--input-shape",
            "1,1,8,8",
            "--data",
            str(tmp_path / name),
            "--out",
            str(tmp_path / "o"),
            *FAST,
            cwd=unseen_model,
        )
        _expect_error(proc, words[name])
    assert not (tmp_path / "o").exists()


def test_existing_output_folder_is_refused_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _expect_error(
        run_cli("convert", "digits_cnn", "--out", str(out), *FAST), "already exists", "--force"
    )
    assert (out / "keep.txt").read_text() == "mine"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _expect_error(
        run_cli("convert", "digits_cnn", "--out", str(blocker / "sub"), *FAST),
        "cannot write the output folder",
    )


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": _Exploit(marker)}, fh, protocol=2)
    torch.save({"model": _Exploit(marker)}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):
        proc = run_cli("convert", str(path), "--arch", "x:y", "--out", str(tmp_path / "o"))
        _expect_error(proc, "pickled Python objects", "--trust-checkpoint")
    with open(tmp_path / "evil4.pt", "wb") as fh:  # protocol 4: refused as not a checkpoint
        pickle.dump({"state_dict": _Exploit(marker)}, fh, protocol=4)
    proc = run_cli("convert", str(tmp_path / "evil4.pt"), "--arch", "x:y", "--out", "o")
    _expect_error(proc, "corrupt or not a checkpoint")
    assert not marker.exists()


def test_trusted_whole_module_loads_with_a_warning(unseen_model, tmp_path):
    import sys

    sys.path.insert(0, str(unseen_model))
    try:
        import mymodels

        model = mymodels.Net()
        model.load_state_dict(torch.load(unseen_model / "net.pt", weights_only=True))
        torch.save(model, unseen_model / "whole.pt")
    finally:
        sys.path.remove(str(unseen_model))
    args = ["convert", "whole.pt", "--input-shape", "1,1,8,8", *FAST]
    _expect_error(
        run_cli(*args, "--out", str(tmp_path / "a"), cwd=unseen_model), "--trust-checkpoint"
    )
    proc = run_cli(*args, "--out", str(tmp_path / "b"), "--trust-checkpoint", cwd=unseen_model)
    assert proc.returncode == 0, proc.stderr
    assert "runs code from the file" in proc.stderr
