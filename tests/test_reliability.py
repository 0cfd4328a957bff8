"""Nothing lost, nothing half-written: determinism and runs killed at any moment."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from report_outputs import invoke

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
    args = ["convert", "digits_cnn", "--method", "asp", "--nm", "2:4", "--epochs", "2", *FAST]
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
    other = run_cli(*args, "--out", str(out), "--resume", "--seed", "1", "--batch-size", "32")
    assert other.returncode == 1 and "written with other settings" in other.stderr, other.stderr
    assert "batch_size=32, seed=1" in other.stderr  # names every setting that differs
    resumed = run_cli(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / ".out.work").exists()  # removed after success
    assert _digest(out) == _digest(tmp_path / "clean")


# --- Nothing lost (issue 15): --force never deletes an input, one run per --out at a time, a
# kill between the two renames of publishing loses nothing, --resume only with equal settings,
# file-system failures are one line ---


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(result, *words):
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "error:" in result.output
    for word in words:
        assert word in result.output, (word, result.output)


FORCE_CASES = ("--out .", "--out $PWD", "checkpoint in out", "data in out", "arch module in out")


@pytest.mark.parametrize("case", FORCE_CASES)
def test_force_never_deletes_an_input(case, unseen_model, tmp_path, monkeypatch):
    """Each input is copied into a folder that --out --force then names: refused before any
    work, every file still there with the same sha256."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("mymodels.py", "net.pt", "data.npz"):
        (work / name).write_bytes((unseen_model / name).read_bytes())
    monkeypatch.chdir(work)
    args = ["convert", "net.pt", "--arch", "mymodels:Net", "--input-shape", "1,1,8,8", *FAST]
    held = {
        "--out .": (".", []),
        "--out $PWD": (str(work), []),
        "checkpoint in out": ("ckpt", ["net.pt"]),
        "data in out": ("d", ["data.npz"]),
        "arch module in out": ("pkg", ["mymodels.py"]),
    }
    out, moved = held[case]
    if moved:
        (work / out).mkdir()
        for name in moved:
            (work / name).rename(work / out / name)
    source = f"{out}/net.pt" if case == "checkpoint in out" else "net.pt"
    data = f"{out}/data.npz" if case == "data in out" else "data.npz"
    if case == "arch module in out":
        monkeypatch.syspath_prepend(str(work / out))
        sys.modules.pop("mymodels", None)
    before = {p: _sha(p) for p in work.rglob("*") if p.is_file()}
    args[1] = source
    result = invoke(*args, "--data", data, "--out", out, "--force")
    _refused(result, "--force would delete")
    assert {p: _sha(p) for p in work.rglob("*") if p.is_file()} == before


def test_force_replaces_an_earlier_run_inside_the_working_folder(tmp_path, monkeypatch):
    """The usual case: ``--out out --force`` in the folder the user works in replaces the
    previous run's output (a working folder holds the output; it is not inside it)."""
    monkeypatch.chdir(tmp_path)
    assert invoke("convert", "digits_cnn", "--out", "out", *FAST).exit_code == 0
    again = invoke("convert", "digits_cnn", "--nm", "1:4", "--out", "out", "--force", *FAST)
    assert again.exit_code == 0, again.output
    assert "1:4" in (tmp_path / "out" / "recipe.yaml").read_text()


def test_second_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "out"
    first = _start(out)
    _wait_for(lambda: bool(_staging(tmp_path)), first)  # the first run holds the lock
    try:
        second = run_cli("convert", "digits_cnn", "--out", str(out), *FAST)
        assert second.returncode == 1, second.stderr
        assert f"another sparsify run (pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    assert not out.exists()
    third = run_cli("convert", "digits_cnn", "--out", str(out), *FAST)  # the kernel freed it
    assert third.returncode == 0, third.stderr


KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
real = os.replace
def replace(src, dst, *args, **kwargs):
    real(src, dst, *args, **kwargs)
    if Path(dst).parent.name.startswith(".out.old-"):  # the old output has just moved aside
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from sparsify_cli.app import main
sys.argv = ["sparsify", *sys.argv[1:]]
main()
"""


def test_kill_between_the_renames_of_publishing_loses_nothing(tmp_path):
    out = tmp_path / "out"
    assert invoke("convert", "digits_cnn", "--out", str(out), *FAST).exit_code == 0
    before = {p.name: _sha(p) for p in out.iterdir()}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_BETWEEN_RENAMES, "convert", "digits_cnn", "--nm", "1:4"]
        + ["--out", str(out), "--force", *FAST],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists() and list(tmp_path.glob(".out.old-*"))  # the state a kill leaves
    again = invoke("convert", "digits_cnn", "--out", str(out), *FAST)
    _refused(again, "already exists")  # the next run put the old output back first
    assert {p.name: _sha(p) for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".out.old-*")) and not _staging(tmp_path)


def test_dangling_symlink_out_and_symlinked_work_folder(tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    _refused(invoke("convert", "digits_cnn", "--out", str(link), *FAST), "symbolic link")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    (tmp_path / ".o.work").symlink_to(target)
    result = invoke(
        "convert", "digits_cnn", "--method", "asp", "--epochs", "1", "--out", str(tmp_path / "o")
    )
    _refused(result, "work folder", "symbolic link")
    assert (target / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists() and not _staging(tmp_path)


def _no_space_left():
    """An output folder on a disk that takes no more than 40 kB per file (a real EFBIG)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))


def test_full_disk_is_one_line_and_leaves_no_staging(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "sparsify_cli", "convert", "digits_cnn", "--out", str(out), *FAST],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_no_space_left,
    )
    assert proc.returncode == 1, proc.stderr
    assert "error: a file grew larger than allowed" in proc.stderr
    assert "opset" not in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not _staging(tmp_path)


def test_enospc_names_the_disk_not_the_model():
    from sparsify_cli.passes.errors import os_error

    with pytest.raises(OSError) as caught, open("/dev/full", "wb") as fh:
        fh.write(b"x" * 10)
        fh.flush()
    message = str(os_error(caught.value))
    assert message.startswith("the disk is full") and "free disk space" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_folder(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = invoke("convert", "digits_cnn", "--out", str(parent / "out"), *FAST)
        _refused(result, "cannot write the output folder")
    finally:
        parent.chmod(0o755)
