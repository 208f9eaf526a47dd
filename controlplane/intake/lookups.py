"""One look at what a path is, for `paths`' judge: the path resolved, its identity, a
control socket by name or folder, a world-writable socket folder, and how a path is
shown in a message."""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from controlplane.site.places import (
    CONTROL_SOCKET_FOLDERS,
    CONTROL_SOCKET_NAMES,
    PROCESS_LINKS,
    under,
)


def link_through(path: str) -> str:
    return next(f for f in PROCESS_LINKS if under(posixpath.normpath(path), (f,)))


def real(path: Path | str) -> str:
    return os.path.realpath(os.path.abspath(path))


def file_identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino



CONTROL_PREFIXES = tuple(f + "/" for f in CONTROL_SOCKET_FOLDERS)


def control_socket(resolved: str) -> str | None:
    if resolved.rsplit("/", 1)[-1] in CONTROL_SOCKET_NAMES:
        return "a control socket (a container runtime's, the kubelet's or D-Bus')"
    if resolved.startswith(CONTROL_PREFIXES):  # one call: 10,000 sockets a pass
        folder = next(f for f in CONTROL_SOCKET_FOLDERS if resolved.startswith(f + "/"))
        return f"in {folder}, which holds control sockets"
    return None


def shown_as(path: str, resolved: str) -> str:
    return repr(path) if resolved == path else f"{path!r} (resolves to {resolved!r})"


def open_folder(folder: str) -> str | None:
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return None
    if mode & stat.S_IWOTH:
        return (f"the socket folder {folder} is writable by every user on the host: anyone"
                " there can put a socket or a symlink at this path; use a folder that only"
                " the upstream's user can write")
    return None
