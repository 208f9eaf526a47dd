"""Reading the files a site names besides its own (certificates, keys, htpasswd files):
bounded in size, and fingerprinted, so a changed file is told from an unchanged one
without reading it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from controlplane.site.places import kind_of_mode


def read_bounded(path: str, limit: int,
                 judge: Callable[[os.stat_result], str | None] | None = None) -> bytes:
    """A regular file's bytes, at most `limit`: never blocks on a FIFO, a device or a
    socket (opened non-blocking, judged by fstat before any read). OSError otherwise;
    a file over the limit is EFBIG. `judge` may refuse the opened file by its fstat (a
    reason: OSError with it), so what is judged is what is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        found = os.fstat(fd)
        refused = judge(found) if judge is not None else None
        if refused is not None:
            raise OSError(0, refused)
        if not stat.S_ISREG(found.st_mode):
            raise OSError(0, f"not a regular file (a {kind_of_mode(found.st_mode)})")
        if found.st_size > limit:
            raise OSError(0, f"the file is {found.st_size} bytes; the limit is {limit}")
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, min(65536, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(0, f"the file grew over the limit of {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def fingerprint(path: str) -> tuple[int, ...]:
    """What tells a changed file from an unchanged one without reading it."""
    try:
        found = os.stat(path)
    except OSError:
        return (-1,)
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)
