"""Edge I/O: is an upstream socket there, and does something accept connections on it?

One socket endpoint is in one of five states (spelled so; scripts rely on them):

    up             a stream socket that accepted a connection (or whose queue is full)
    missing        nothing at the path (or a folder on the way is missing)
    not-a-socket   something else is there (a regular file, a folder, a FIFO)
    refused        a socket nobody accepts on: its server died and left the file
    no-permission  this process may not connect (connecting needs write permission on
                   the socket and search permission on every folder on the way)

A probe never disturbs the upstream and never hangs: the path is judged by the pass's
`paths.Fence` first (a path it refuses is not probed at all), the socket file itself is
opened with `O_PATH | O_NOFOLLOW` and its kernel path compared with the resolved path
the fence approved (a symlink or folder swapped in after the judgment is caught), and
the connection goes to that very inode through `/proc/self/fd/N`. The connect is
non-blocking (a Unix socket answers at once: accepted, queued or refused) and the
connection is closed without a byte sent, so even a socket the probe should not have
reached would only see an accept and a close.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass

from controlplane.errors import Problem
from controlplane.intake.paths import Fence
from controlplane.render.rendering import SiteResources
from controlplane.site.places import Use

UP, MISSING, NOT_A_SOCKET, REFUSED, NO_PERMISSION = (
    "up", "missing", "not-a-socket", "refused", "no-permission")
STATES = (UP, MISSING, NOT_A_SOCKET, REFUSED, NO_PERMISSION)
WORST_FIRST = (MISSING, NO_PERMISSION, NOT_A_SOCKET, REFUSED, UP)
"""The order in which a site's overall state is taken from its endpoints' states."""
_BY_PROC = os.path.isdir("/proc/self/fd")


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """What one look at one socket path found."""

    state: str
    detail: str = ""
    """The system's word for it (`Connection refused`, `a regular file`)."""
    identity: tuple[int, int, int] | None = None
    """(device, inode, change time) of what is there: a new socket is a new identity."""


def look(path: str, fence: Fence, connect: bool = True,
         last: Probe | None = None) -> Probe | None:
    """The state of the socket at `path`, or None when the fence refuses the path now
    (the pass reports that as a problem; nothing is opened). Without `connect`, when
    `last` saw the same file (same identity), only the file is looked at and `last`'s
    state kept: a connect is what an upstream notices, so it is made when asked or
    when the file is new."""
    if fence.judge(Use(field="", kind="socket", path=path)).problem is not None:
        return None
    resolved, _ = fence.resolve(path)
    try:
        fd = os.open(resolved, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return _open_failed(exc)
    try:
        return _look_at(fd, resolved, fence, connect, last)
    finally:
        os.close(fd)


def _look_at(fd: int, resolved: str, fence: Fence, connect: bool,
             last: Probe | None) -> Probe | None:
    found = os.fstat(fd)
    if _BY_PROC and os.readlink(f"/proc/self/fd/{fd}") != resolved:
        return None  # swapped between the judgment and the open: judged at the next pass
    if (found.st_dev, found.st_ino) in fence.forbidden:
        return None
    identity = (found.st_dev, found.st_ino, found.st_ctime_ns)
    if not stat.S_ISSOCK(found.st_mode):
        return Probe(state=NOT_A_SOCKET, detail=f"a {_kind(found.st_mode)}", identity=identity)
    if last is not None and last.identity == identity and not connect:
        return last
    state, detail = _connect(f"/proc/self/fd/{fd}" if _BY_PROC else resolved)
    return Probe(state=state, detail=detail, identity=identity)


def _connect(target: str) -> tuple[str, str]:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                          | socket.SOCK_CLOEXEC)
    with contextlib.closing(probe):
        code = probe.connect_ex(target)
    if code in (0, errno.EINPROGRESS, errno.EAGAIN):  # accepted, or its queue is full
        return UP, ""
    reason = "" if code == errno.ECONNREFUSED else os.strerror(code)
    if code in (errno.EACCES, errno.EPERM):
        return NO_PERMISSION, reason
    if code in (errno.ENOENT, errno.ENOTDIR):
        return MISSING, ""
    if code == errno.EPROTOTYPE:
        return REFUSED, "a datagram socket: it takes no stream connections"
    return REFUSED, reason


def _open_failed(exc: OSError) -> Probe | None:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return Probe(state=MISSING)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Probe(state=NO_PERMISSION, detail=f"a folder on the way: {exc.strerror}")
    return None  # ELOOP: a symlink appeared where the fence saw none; the pass judges it


@dataclass(frozen=True, slots=True, kw_only=True)
class Followed:
    """One serving site's upstream endpoints, as its file names them."""

    sockets: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    checked_clusters: tuple[str, ...] = ()
    """Its clusters with health checks (Envoy's verdict is read for their endpoints)."""


def followed(uses: tuple[Use, ...], resources: SiteResources | None) -> Followed:
    """The endpoints of one serving version: its socket and address uses (every one the
    fence judged this pass) and its clusters with health checks."""
    clusters = () if resources is None else tuple(
        name for name, cluster in resources.clusters if cluster.get("health_checks"))
    return Followed(sockets=tuple(dict.fromkeys(u.path for u in uses if u.kind == "socket")),
                    addresses=tuple(dict.fromkeys(u.path for u in uses if u.kind == "address")),
                    checked_clusters=clusters)


def hint(state: str, path: str, detail: str = "") -> str:
    """What to do about an endpoint in `state`, in one line."""
    listen = f"`listen unix:{path};`"
    why = f" ({detail})" if detail else ""
    return {
        MISSING: f"no socket at {path} yet: is nginx running? {listen} makes it; the site"
                 " serves as soon as it listens",
        NOT_A_SOCKET: f"{path} is not a socket{why}: remove it and start the upstream with"
                      f" {listen}",
        REFUSED: f"{path} is a socket, but nothing accepts on it{why}: its server stopped"
                 f" without removing it; is nginx running? {listen}",
        NO_PERMISSION: f"{path} cannot be connected to{why}: Envoy's user needs write"
                       " permission on the socket and search permission on its folders",
    }.get(state, "")


def warnings(source: str, uses: tuple[Use, ...], fence: Fence) -> list[Problem]:
    """For `check`: one warning per socket endpoint that is not up, with its hint. A
    warning, not an error: the site is configured, and serves once the upstream listens."""
    found = []
    for use in uses:
        probe = look(use.path, fence) if use.kind == "socket" else None
        if probe is not None and probe.state != UP:
            found.append(Problem(source, use.field, f"{probe.state}: "
                                 f"{hint(probe.state, use.path, probe.detail)}", use.line))
    return found


def worst(states: list[str]) -> str | None:
    """The one state that speaks for several endpoints: the worst of them."""
    return min(states, key=WORST_FIRST.index) if states else None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"
