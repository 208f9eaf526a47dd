"""Edge I/O: judge each path a site makes Envoy use by what it resolves to, as Envoy's
`connect()`, `open()` and `read()` will, never by how the site file spells it.

Resolved: symlinks of the file and of every folder on the way, aliases such as
`/var/run` -> `/run`, hard links (by device and inode), and `/proc` magic links (the
path's identity must be the resolved path's). A `Fence` remembers what it resolved and
judged. The daemon builds a new one for every full pass (an event outside the sites
folder or one it cannot place, a reload, the resync), then `seal`s it for the passes
started by site files' own events: what the full pass judged is kept, a path first
named since is resolved afresh (see "Security model" in the README).

- `socket` (an upstream Envoy connects to): under `socket_dirs`, not Envoy's admin socket
  nor a known control socket (container runtimes, the kubelet, systemd, D-Bus), by path
  and by identity.
- `write` (an access log Envoy appends to): a regular file, or a new one in an existing
  folder, under `log_dirs`, outside the sites, out and state folders; never a symlink, a
  FIFO, a device or a file with other hard links. `/dev/stdout` and `/dev/stderr` are
  taken as written: Envoy writes those to its own standard streams without opening them.
- `read` (a certificate or key Envoy reads): a regular file, not a kernel file.
- `address` (a TCP upstream): not link-local (cloud metadata), not a well-known port of
  the node's control plane (the kubelet, etcd, the API server, Docker's API), nor Envoy's
  own listener or the daemon's metrics port on loopback.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.intake.lookups import (
    control_socket,
    file_identity,
    link_through,
    open_folder,
    real,
    shown_as,
)
from controlplane.site.places import (
    CONTROL_SOCKET_PATHS,
    KERNEL_FOLDERS,
    PROCESS_LINKS,
    STANDARD_STREAMS,
    Use,
    Verdict,
    address_verdict,
    kind_of_mode,
    listen_verdict,
    under,
)


@dataclass(slots=True, kw_only=True)
class Fence:
    """The rules of one pass, with the folders and forbidden identities resolved now."""

    socket_dirs: tuple[str, ...]
    log_dirs: tuple[str, ...]
    private: tuple[tuple[str, str], ...] = ()
    """(resolved folder, what it is): the daemon's own folders, never written by Envoy."""
    forbidden: dict[tuple[int, int], str] = field(default_factory=dict)
    """Identity (device, inode) -> what it is: the admin socket and control sockets."""
    forbidden_paths: dict[str, str] = field(default_factory=dict)
    exclusive_upstreams: bool = False
    """Each upstream belongs to one site (setting `exclusive_upstreams`)."""
    page_dirs: tuple[str, ...] = ()
    """Resolved folders error pages must lie under (the sites folder and `page_dirs`)."""
    min_listen_port: int = 1024
    """A TCP site may listen on this port or above (setting `tcp_min_port`)."""
    own_ports: dict[int, str] = field(default_factory=dict)
    """Loopback ports of Envoy's own listeners and the daemon's metrics: a TCP upstream
    there would loop requests back or publish the daemon's endpoints."""
    _folders: dict[str, str] = field(default_factory=dict)
    """Resolved folders and (`_resolved`) paths: sites share folders."""
    _socket_prefixes: tuple[str, ...] = ()
    _resolved: dict[str, tuple[str, os.stat_result | None]] = field(default_factory=dict)
    _open: dict[str, str | None] = field(default_factory=dict)
    """The world-writable warning of each resolved socket folder."""
    _verdicts: dict[tuple[str, str], Verdict] = field(default_factory=dict)
    _sealed: bool = False

    @classmethod
    def now(cls, *, socket_dirs: Iterable[Path | str], log_dirs: Iterable[Path | str],
            admin_socket: Path | None, private: Iterable[tuple[Path, str]],
            own_ports: dict[int, str] | None = None,
            exclusive_upstreams: bool = False, page_dirs: Iterable[Path | str] = (),
            min_listen_port: int = 1024) -> Fence:
        fence = cls(exclusive_upstreams=exclusive_upstreams, min_listen_port=min_listen_port,
                    page_dirs=tuple(dict.fromkeys(real(d) for d in page_dirs)),
                    socket_dirs=tuple(dict.fromkeys(real(d) for d in socket_dirs)),
                    log_dirs=tuple(dict.fromkeys(real(d) for d in log_dirs)),
                    private=tuple((real(p), what) for p, what in private),
                    own_ports=dict(own_ports or {}))
        fence._socket_prefixes = tuple(d.rstrip("/") + "/" for d in fence.socket_dirs)
        known = [(p, "a control socket") for p in CONTROL_SOCKET_PATHS]
        if admin_socket is not None:
            known.insert(0, (str(admin_socket.absolute()), "Envoy's admin socket"))
        for path, what in known:
            fence.forbidden_paths.setdefault(real(path), what)
            identity = file_identity(path)
            if identity is not None:
                fence.forbidden.setdefault(identity, f"{what} {path}")
        return fence

    def seal(self) -> None:
        """From now on keep only what was judged so far: a path first seen later is
        resolved afresh each time (its folder may lead elsewhere by now)."""
        self._sealed = True

    def judge(self, use: Use) -> Verdict:
        found = self._verdicts.get(key := (use.kind, use.path))
        if found is None:
            found = self._judge_links(use)
            if not self._sealed:
                self._verdicts[key] = found
        return found

    def _judge_links(self, use: Use) -> Verdict:
        verdict = self._judge(use)
        if verdict.problem is None and use.kind in ("socket", "write") and (
                use.path not in STANDARD_STREAMS) and under(posixpath.normpath(use.path),
                                                             PROCESS_LINKS):
            return Verdict(problem=f"{use.path!r} goes through {link_through(use.path)}, which"
                           " leads elsewhere for Envoy than for this check; name the file"
                           " itself")
        return verdict

    def _judge(self, use: Use) -> Verdict:
        if use.kind == "socket":
            return self._socket(use.path)
        if use.kind == "address":
            return address_verdict(use.path, self.own_ports)
        if use.kind == "write":
            return self._write(use.path)
        if use.kind == "page":
            return self._page(use.path)
        if use.kind == "listen":
            return listen_verdict(use.path, self.own_ports, self.min_listen_port)
        return self._read(use.path)

    def resolve(self, path: str) -> tuple[str, os.stat_result | None]:
        """The resolved path, and the lstat of what the path names (None: missing)."""
        found = self._resolved.get(path)
        if found is None:
            found = self._resolve(path)
            if not self._sealed:
                self._resolved[path] = found
        return found

    def _resolve(self, path: str) -> tuple[str, os.stat_result | None]:
        folder, _, name = posixpath.normpath(path).rpartition("/")
        if not name:
            return real(path), None
        base = None if self._sealed else self._folders.get(folder)
        if base is None:
            base = real(folder or "/")
            if not self._sealed:
                self._folders[folder] = base
        full = posixpath.join(base, name)
        try:
            found = os.lstat(full)
        except OSError:
            return full, None
        return (real(full), found) if stat.S_ISLNK(found.st_mode) else (full, found)

    def _socket(self, path: str) -> Verdict:
        if not path.startswith("/"):
            return Verdict(problem=f"{path!r} is not an absolute path (an abstract socket"
                           " reaches any process of the network namespace); a site may"
                           " not use it")
        resolved, found = self.resolve(path)
        shown = shown_as(path, resolved)
        what = self.forbidden_paths.get(resolved) or control_socket(resolved)
        if what is not None:
            return Verdict(problem=f"{shown} is {what}; a site may not expose it")
        if self.socket_dirs and not (resolved in self.socket_dirs or resolved.startswith(
                self._socket_prefixes)):
            return Verdict(problem=f"{shown} is outside the allowed socket folders"
                           f" ({', '.join(self.socket_dirs)}); put the socket in one, or"
                           " widen them with the socket_dirs setting")
        identity, problem = self._identity_of(path, resolved, found)
        if problem is not None:
            return Verdict(problem=f"{shown} {problem}")
        if identity is not None and identity in self.forbidden:
            return Verdict(problem=f"{shown} is the same file as {self.forbidden[identity]};"
                           " a site may not expose it")
        folder = posixpath.dirname(resolved)
        if folder not in self._open:
            self._open[folder] = open_folder(folder)
        return Verdict(warning=self._open[folder])

    def _identity_of(self, path: str, resolved: str, found: os.stat_result | None) -> tuple[
            tuple[int, int] | None, str | None]:
        """(device, inode) of what `path` reaches, checked against the resolved path's."""
        if resolved == posixpath.normpath(path):  # no link on the way: lstat is stat
            if found is None:
                return None, None
            if not stat.S_ISLNK(found.st_mode):
                return (found.st_dev, found.st_ino), None
        try:
            target = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None, None  # not there yet: Envoy answers 503 until it is
        except OSError as exc:
            return None, f"cannot be checked: {exc.strerror}"
        try:
            seen = os.stat(resolved)
        except OSError:
            seen = None
        if seen is None or (seen.st_dev, seen.st_ino) != (target.st_dev, target.st_ino):
            return None, ("reaches another file than its resolved path (through a /proc"
                          " link or a race); name the socket itself")
        return (target.st_dev, target.st_ino), None

    def _write(self, path: str) -> Verdict:
        if path in STANDARD_STREAMS:
            return Verdict()
        resolved, found = self.resolve(path)
        shown = shown_as(path, resolved)
        if found is not None and stat.S_ISLNK(found.st_mode):
            return Verdict(problem=f"{path!r} is a symlink to {resolved!r}; Envoy would write"
                           " there: name a regular file")
        if self.log_dirs and not under(resolved, self.log_dirs):
            return Verdict(problem=f"{shown} is outside the allowed log folders"
                           f" ({', '.join(self.log_dirs)}); /dev/stdout and /dev/stderr"
                           " also work")
        for folder, what in self.private:
            if under(resolved, (folder,)):
                return Verdict(problem=f"{shown} is inside the {what} ({folder}); Envoy"
                               " must never write there")
        if found is None:
            parent = posixpath.dirname(resolved)
            if not os.path.isdir(parent):
                return Verdict(problem=f"{shown}: the folder {parent!r} does not exist")
            return Verdict()
        if not stat.S_ISREG(found.st_mode):
            return Verdict(problem=f"{shown} exists and is not a regular file (a"
                           f" {kind_of_mode(found.st_mode)}); Envoy would block or write into it")
        if found.st_nlink > 1:
            return Verdict(problem=f"{shown} has {found.st_nlink} hard links; Envoy would"
                           " write into every one of them")
        return Verdict()

    def _read(self, path: str) -> Verdict:
        resolved, _ = self.resolve(path)
        shown = shown_as(path, resolved)
        if under(resolved, KERNEL_FOLDERS):
            return Verdict(problem=f"{shown} is a kernel file, not a certificate file")
        if any(what == "state folder" and under(resolved, (f,)) for f, what in self.private):
            return Verdict(problem=f"{shown} is in the state folder (the daemon's own keys)")
        try:
            found = os.stat(path)
        except OSError as exc:
            return Verdict(problem=f"{shown}: cannot read: {exc.strerror}")
        if not stat.S_ISREG(found.st_mode):
            return Verdict(problem=f"{shown} is a {kind_of_mode(found.st_mode)}, not a regular"
                           " file; Envoy would block or fail reading it")
        return Verdict()


    def _page(self, path: str) -> Verdict:
        """An error page: served to anyone, so only from the sites folder or page_dirs."""
        resolved, _ = self.resolve(path)
        if not under(resolved, self.page_dirs):
            return Verdict(problem=f"{shown_as(path, resolved)} is outside the sites folder and"
                           f" the page folders ({', '.join(self.page_dirs)}); Envoy would"
                           " serve it to anyone: put the page beside the site file, or"
                           " under a folder of the setting `page_dirs`")
        return self._read(path)
