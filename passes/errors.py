"""The one error type users see.

Every user-facing failure (bad ``--nm``, unreadable checkpoint, shape mismatch, missing data)
is raised as :class:`SparsifyError` naming the thing, what was expected, what was found and the
fix. The CLI prints it as one message and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno


class SparsifyError(Exception):
    """A problem with the user's input or environment, explained in one message."""

    def __init__(
        self,
        what: str,
        *,
        expected: str | None = None,
        found: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.expected = expected
        self.found = found
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [self.what]
        detail = []
        if self.expected is not None:
            detail.append(f"expected {self.expected}")
        if self.found is not None:
            detail.append(f"found {self.found}")
        if detail:
            parts[0] += f" ({'; '.join(detail)})"
        if self.fix is not None:
            parts.append(f"Fix: {self.fix}")
        return ". ".join(parts)


_OS_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free disk space, or choose an --out on another disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space, or choose an --out elsewhere"),
    errno.EFBIG: ("a file grew larger than allowed", "raise the file size limit (ulimit -f)"),
    errno.EROFS: ("the file system is read-only", "choose a writable --out"),
    errno.EACCES: ("permission denied", "choose a folder you can write, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write"),
}


def os_error(err: OSError) -> SparsifyError:
    """One line for a failed file operation: what, where, the system's reason and the fix.

    A full disk is named as such, never blamed on the model (export failures otherwise suggest
    checking the model's ops).
    """
    what, fix = _OS_ERRORS.get(err.errno or -1, ("a file operation failed", "check the path"))
    where = f" at {err.filename}" if err.filename else ""
    return SparsifyError(f"{what}{where}", found=err.strerror or type(err).__name__, fix=fix)


class PeerFailed(Exception):
    """Another torchrun rank failed and printed why; this rank exits with status 1 and says
    nothing (raised by :mod:`sparsify_cli.passes.distributed`, caught by the CLI)."""
