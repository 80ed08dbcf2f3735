"""Advisory locks on a file beside what they guard: one process at a time, released by the kernel
when the process ends, however it ends."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


def hold(path: Path | str, *, follow: bool = True) -> int | None:
    """Take the exclusive lock on ``path`` (made, mode 0600, if missing) and return its descriptor,
    to keep open as long as the lock is held; None if another process holds it. OSError if the
    file cannot be opened, or the lock cannot be taken for another reason (NFS, FUSE)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd
