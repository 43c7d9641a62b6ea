"""Atomic file writes: readers see the old file or the new one, never a torn one.

Every file pytest-circuits writes for the user (JSON results, baselines) or shares between
xdist workers (the analysis cache) goes through here.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; the user's files get the mode open() would give them
        # (0666 less the umask), or keep the mode of the file being replaced
        os.chmod(tmp, _mode_of(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sys.platform != "win32":  # make the rename itself durable
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _mode_of(path: Path) -> int:
    """The permission bits ``path`` should have: its current ones, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    with _UMASK_LOCK:  # reading the umask means setting it: keep other threads out meanwhile
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask
