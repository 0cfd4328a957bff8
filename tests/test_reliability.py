"""Nothing lost, nothing half-written: determinism and runs killed at any moment."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, run_cli


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.iterdir()
        if p.suffix in (".onnx", ".safetensors")
    }


def test_same_inputs_and_seed_give_byte_identical_artifacts(tmp_path):
    for name in ("a", "b"):
        proc = run_cli("convert", "digits_cnn", "--nm", "1:4", "--out", str(tmp_path / name), *FAST)
        assert proc.returncode == 0, proc.stderr
    first, second = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert set(first) >= {"model.onnx", "manifest.safetensors", "model_sparse.safetensors"}
    assert first == second


def _start(out: Path) -> subprocess.Popen:
    args = ["convert", "digits_transformer", "--out", str(out), "--bench-seconds", "3", "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-m", "sparsify_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out waiting for the run to reach the stage"
        time.sleep(0.005)


def _staging(tmp_path: Path) -> list[Path]:
    return list(tmp_path.glob(".out.partial-*"))


def test_sigkill_during_export_leaves_no_artifact_and_next_run_cleans_up(tmp_path):
    out = tmp_path / "out"
    proc = _start(out)
    # an export in flight writes a .tmp- file inside the staging folder
    _wait_for(lambda: any(s.glob(".tmp-model*") for s in _staging(tmp_path)), proc)
    proc.kill()
    proc.wait()
    assert not out.exists()
    left = _staging(tmp_path)
    assert left and not any(
        p.name in ("model.onnx", "report.json") for s in left for p in s.iterdir()
    )
    rerun = run_cli("convert", "digits_transformer", "--out", str(out), *FAST)
    assert rerun.returncode == 0, rerun.stderr
    assert not _staging(tmp_path)  # the killed run's staging folder was removed
    assert json.loads((out / "report.json").read_text())["artifacts"][0]["pattern_ok"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_sigint_and_sigterm_remove_the_staging_folder(tmp_path, sig, code):
    out = tmp_path / "out"
    proc = _start(out)
    _wait_for(lambda: any((s / "model.onnx").exists() for s in _staging(tmp_path)), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists() and not _staging(tmp_path)


def test_sigkill_during_finetuning_then_resume_equals_a_clean_run(tmp_path):
    args = ["convert", "digits_cnn", "--method", "asp", "--nm", "2:4", "--epochs", "3", *FAST]
    clean = run_cli(*args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsify_cli", *args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = tmp_path / ".out.work" / "asp.ckpt"
    _wait_for(checkpoint.exists, proc)  # the first epoch's checkpoint is on disk
    proc.kill()
    proc.wait()
    assert not out.exists()
    resumed = run_cli(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / ".out.work").exists()  # removed after success
    assert _digest(out) == _digest(tmp_path / "clean")
