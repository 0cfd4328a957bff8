"""The output folder of ``convert``: checked, locked, staged beside ``out``, published whole.

Nothing a user had is lost:

* ``--force`` replaces only what a previous run wrote: an ``--out`` that holds (or is) an input
  of the run, or the working folder, is refused before any work (:func:`check_out`);
* one run at a time per ``--out``: a lock file ``.<name>.lock`` beside it, held with ``flock``
  (released by the kernel if the process dies), refuses a second run (:class:`OutLock`);
* everything is written into ``.<name>.partial-<pid>-*`` and renamed into place at the end
  (:func:`publish`); a run killed between the two renames of a ``--force`` replacement leaves
  the old output in ``.<name>.old-*``, which the next run puts back (:func:`prepare_out`);
* ``--resume`` continues only a checkpoint written with the same settings: the work folder
  holds the run's fingerprint (:func:`prepare_workdir`).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sparsify_cli.passes.atomic import atomic_write_text, user_mode
from sparsify_cli.passes.errors import SparsifyError

log = logging.getLogger(__name__)

FINGERPRINT = "run.json"
"""The settings that wrote a work folder's checkpoints, compared on ``--resume``."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def arch_files(arch: str | None) -> list[Path]:
    """The file or package folder of ``--arch``'s top-level module, found without importing it."""
    if not arch or ":" not in arch or arch.startswith("timm:"):
        return []
    top = arch.partition(":")[0].split(".")[0]
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    finally:
        if added:
            sys.path.remove(cwd)
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return []
    origin = Path(spec.origin)
    return [origin.parent if origin.name == "__init__.py" else origin]


def run_inputs(
    source: str | None, data: str | None, arch: str | None, example_input: str | None
) -> list[Path]:
    """Every file or folder a ``convert`` run reads, plus the working folder itself."""
    paths = [Path(p) for p in (source, data, example_input) if p and Path(p).exists()]
    return [Path.cwd(), *paths, *arch_files(arch)]


def check_out(out: Path, force: bool, inputs: Iterable[Path]) -> None:
    """Refuse an ``--out`` that cannot be (re)written before any work is done.

    With ``--force`` an existing folder is replaced, so it must not hold an input of the run:
    the checkpoint, ``--data``, the ``--arch`` module, the working folder (``--out .``).
    """
    if out.is_symlink() and not out.exists():
        raise SparsifyError(
            f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist",
            fix="remove the link or choose another --out",
        )
    if not out.exists():
        return
    if not force:
        raise SparsifyError(
            f"output folder {out} already exists",
            fix="choose another --out, or pass --force to replace it",
        )
    if not out.is_dir():
        raise SparsifyError(f"--out {out} is a file, not a folder")
    real = out.resolve()
    cwd = Path.cwd()
    for item in inputs:
        path = item.resolve()
        # an --out inside an input folder (a model folder) would change that folder; inside the
        # working folder is where outputs normally go
        within = item != cwd and path.is_dir() and _inside(real, path)
        if _inside(path, real) or within:
            what = "the working folder" if item == cwd else f"the input {item}"
            raise SparsifyError(
                f"--out {out} --force would delete {what}",
                expected="an --out folder written by an earlier sparsify run, holding no input",
                fix="choose another --out (--force replaces the whole folder)",
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutLock:
    """``flock`` on ``.<name>.lock`` beside ``out``: one run per output folder at a time.

    The kernel drops the lock when its process dies, so a killed run never blocks the next;
    the file holds the owner's pid for the message.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.resolve().parent / f".{out.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> OutLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise SparsifyError(
                    f"another sparsify run (pid {owner}) is writing --out {self.out}",
                    fix="wait for it to finish, or choose another --out",
                ) from None
            try:  # the holder before us may have removed the file: lock the one on disk
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)  # closing drops the flock
        self.fd = None


def _recover(parent: Path, out: Path) -> None:
    """Clean up after killed runs (the caller holds the lock, so none of these is live).

    ``.partial-<pid>`` folders of dead processes are deleted; an ``.old-*`` folder is the output
    a killed ``--force`` run had moved aside: put back if ``out`` is missing, else deleted.
    """
    name = out.name
    for stale in parent.glob(f".{name}.partial-*"):
        pid = stale.name.split("partial-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    for old in parent.glob(f".{name}.old-*"):
        kept = old / name
        if kept.is_dir() and not out.exists() and not out.is_symlink():
            os.replace(kept, out)
            log.warning("restored %s, which an interrupted --force run had moved aside", out)
        shutil.rmtree(old, ignore_errors=True)


def prepare_out(out: Path, force: bool, inputs: Iterable[Path] = ()) -> tuple[Path, OutLock]:
    """Check and lock ``out``; return a fresh staging folder beside it and the held lock.

    The staging folder's name carries this process id, so a later run can tell a folder left by
    a killed run (removed) from one that another live run is filling (kept).
    """
    check_out(out, force, inputs)
    parent = out.resolve().parent
    lock = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        lock = OutLock(out).acquire()
        _recover(parent, out)
        check_out(out, force, inputs)  # a restored old output counts as existing
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=parent))
        os.chmod(staging, user_mode(directory=True))  # published as is: not mkdtemp's 0700
    except OSError as err:
        if lock is not None:
            lock.release()
        raise SparsifyError(
            f"cannot write the output folder {out}",
            found=f"{type(err).__name__}: {err.strerror or err}",
            fix="choose a writable --out",
        ) from err
    except SparsifyError:
        if lock is not None:
            lock.release()
        raise
    return staging, lock


def publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to ``out`` (replacing an old one only now)."""
    if out.exists():
        parent = out.resolve().parent
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=parent))
        os.replace(out, trash / out.name)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


def prepare_workdir(workdir: Path, fingerprint: Mapping[str, Any], resume: bool) -> None:
    """Create the fine-tuning work folder; on ``--resume`` its settings must equal this run's.

    A symlinked work folder is refused (deleting it would follow the link). Without
    ``--resume`` an old one is started over.
    """
    if workdir.is_symlink():
        raise SparsifyError(
            f"the work folder {workdir} is a symbolic link",
            fix=f"remove {workdir} (sparsify creates it itself)",
        )
    if workdir.exists() and not resume:
        shutil.rmtree(workdir)
    record = workdir / FINGERPRINT
    if resume and workdir.exists():
        try:
            old = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SparsifyError(
                f"cannot tell which settings wrote the checkpoints in {workdir}",
                found=f"{FINGERPRINT}: {type(err).__name__}",
                fix="run again without --resume to start over",
            ) from err
        new = json.loads(json.dumps(dict(fingerprint)))  # tuples as lists, like the file
        differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if differ:
            raise SparsifyError(
                "--resume would continue a checkpoint written with other settings",
                expected=", ".join(f"{k}={new.get(k)!r}" for k in differ)[:400],
                found=", ".join(f"{k}={old.get(k)!r}" for k in differ)[:400],
                fix="resume with the same inputs and options, or run without --resume",
            )
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(dict(fingerprint), indent=1, sort_keys=True))


def drop_idle_workdir(workdir: Path | None) -> None:
    """Remove a work folder that holds no checkpoint (a run that failed before its first)."""
    if workdir is None or workdir.is_symlink() or not workdir.is_dir():
        return
    if all(p.name == FINGERPRINT or p.name.startswith(".tmp-") for p in workdir.iterdir()):
        shutil.rmtree(workdir, ignore_errors=True)
