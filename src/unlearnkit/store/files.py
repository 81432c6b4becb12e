"""File primitives of the store: full writes, atomic replaces that respect the umask, fsync, faults.

Every write the store makes goes through here, so that a short write is never taken for a
complete one and an ``OSError`` (disk full, permission denied) becomes one clear line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import uuid
from pathlib import Path

import numpy as np

from ..errors import UnlearnkitError

KILL_ENV = "UNLEARNKIT_STORE_KILL_AT"  # testing hook: SIGKILL this process at the named step
TMP_SUFFIX = ".tmp"  # every temporary file the store writes in its root is named ".NAME.<hex>.tmp"
os_write = os.write  # every byte the store writes goes through this (tests inject short writes and ENOSPC)


def crash_point(step: str) -> None:
    """Named points of a request (tests monkeypatch this, or set $UNLEARNKIT_STORE_KILL_AT to kill there)."""
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


class ShortWriteError(OSError):
    """``os.write`` kept writing nothing: the data did not reach the file."""


def describe(e: OSError) -> str:
    """'No space left on device (errno 28)' for an OSError, without Python's repr noise."""
    reason = e.strerror or type(e).__name__
    return f"{reason} (errno {e.errno})" if e.errno else reason


def write_fully(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``: ``os.write`` may write fewer bytes than asked."""
    view = memoryview(data)
    while view:
        n = os_write(fd, view)
        if n <= 0:
            raise ShortWriteError(errno.EIO, f"write wrote {n} of {len(view)} remaining bytes")
        view = view[n:]


def write_file(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0666 minus the umask) holding exactly ``data``, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        write_fully(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if path.stat().st_size != len(data):
        raise ShortWriteError(errno.EIO, f"{path} holds {path.stat().st_size} of {len(data)} bytes")


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` (temp file + fsync + rename): readers see the old file or the new one."""
    tmp = temp_name(path)
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def make_dir(path: Path) -> None:
    """``mkdir`` with mode 0777 minus the umask (not ``mkdtemp``'s 0700)."""
    os.mkdir(path, 0o777)


def remove(path: Path) -> None:
    """Remove a file or directory tree; a failure is ignored (callers report the error that matters)."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ids_text(ids) -> str:
    return "".join(f"{int(i)}\n" for i in np.unique(np.asarray(ids, dtype=np.int64)))


def ids_sha256(ids) -> str:
    """sha256 of the sorted unique ids, one decimal per line (= ``sort -nu ids.txt | sha256sum``)."""
    return hashlib.sha256(ids_text(ids).encode()).hexdigest()


def read_ids_text(path: Path) -> np.ndarray:
    return np.array([int(t) for t in path.read_text().split()], dtype=np.int64)


def not_applied(what: str, e: OSError) -> UnlearnkitError:
    """The one-line error of a write that failed before the model was swapped."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return UnlearnkitError(f"{what} failed: {describe(e)}{where}; the store is unchanged (same model, same ledger).")
