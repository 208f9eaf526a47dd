"""The upstream socket probe on real sockets and files in a temp folder: each state, a
path the fence refuses never connected to, a probe that sends nothing, and the tracker
connecting only to new files or when a recheck is due."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.daemon import tracking
from controlplane.envoy.health import host_health
from controlplane.intake import probing
from controlplane.intake.paths import Fence
from controlplane.site.places import Use


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    allowed = tmp_path / "sockets"
    allowed.mkdir()
    return allowed


def _fence(folder: Path, admin: Path | None = None) -> Fence:
    return Fence.now(socket_dirs=[folder], log_dirs=[], admin_socket=admin, private=[])


@pytest.fixture
def listener(folder: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "up.sock"))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def _pending(listener: socket.socket) -> int:
    """How many connections wait in the listener's queue (taken and closed)."""
    count = 0
    while True:
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            return count
        count += 1


def test_each_state_from_real_files(folder: Path, listener: socket.socket) -> None:
    """up, missing (also a missing folder), not-a-socket (file, folder), refused (bound
    without listening, and a datagram socket)."""
    fence = _fence(folder)
    (folder / "file.sock").write_text("x")
    (folder / "dir.sock").mkdir()
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(str(folder / "bound.sock"))
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    datagram.bind(str(folder / "dgram.sock"))
    try:
        states = {name: getattr(probing.look(str(folder / name), fence), "state", None)
                  for name in ("up.sock", "gone.sock", "no/such.sock", "file.sock", "dir.sock",
                               "bound.sock", "dgram.sock")}
    finally:
        bound.close()
        datagram.close()
    assert states == {"up.sock": "up", "gone.sock": "missing", "no/such.sock": "missing",
                      "file.sock": "not-a-socket", "dir.sock": "not-a-socket",
                      "bound.sock": "refused", "dgram.sock": "refused"}


def test_the_probe_sends_nothing(folder: Path, listener: socket.socket) -> None:
    """The upstream sees an accept and at once the end of the stream, no byte."""
    probe = probing.look(str(folder / "up.sock"), _fence(folder))
    assert probe is not None and probe.state == "up"
    listener.setblocking(True)
    accepted, _ = listener.accept()
    with accepted:
        accepted.settimeout(5)
        assert accepted.recv(100) == b""


def test_a_path_the_fence_refuses_is_never_connected_to(tmp_path: Path, folder: Path) -> None:
    """A symlink in an allowed folder to a socket outside it, and one to Envoy's admin
    socket: no state, and no connection reaches either listener."""
    outside, admin = tmp_path / "outside.sock", tmp_path / "admin.sock"
    listeners = []
    for path in (outside, admin):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.listen(8)
        sock.setblocking(False)
        listeners.append(sock)
    os.symlink(outside, folder / "out.sock")
    os.symlink(admin, folder / "admin.sock")
    fence = Fence.now(socket_dirs=[folder, tmp_path], log_dirs=[], admin_socket=admin,
                      private=[])
    try:
        assert probing.look(str(folder / "admin.sock"), fence) is None
        assert probing.look(str(folder / "out.sock"), _fence(folder)) is None
        assert [_pending(s) for s in listeners] == [0, 0]
    finally:
        for sock in listeners:
            sock.close()


def test_the_tracker_connects_to_new_files_and_when_due(folder: Path,
                                                        listener: socket.socket) -> None:
    """The first look connects; a pass that finds the same file does not; a recheck that
    is due does; a new socket at the path (new identity) is connected to at once."""
    fence, path = _fence(folder), str(folder / "up.sock")
    tracker = tracking.Tracker()
    tracker.follow({"a": probing.followed((Use(field="upstream.socket", kind="socket",
                                                path=path),), None)})
    assert tracker.refresh(fence, everything=True) == {"a"}
    assert _pending(listener) == 1
    assert tracker.report("a") == {"state": "up", "endpoints": {path: {
        "state": "up", "since": tracker.report("a")["endpoints"][path]["since"]}}}
    assert tracker.refresh(fence, everything=True) == set()
    assert _pending(listener) == 0
    due = tracker.due_in()
    assert due is not None and tracking.UP_RECHECK_S - 1 < due <= tracking.UP_RECHECK_S
    assert tracker.rows() == [("a", path, True)]
    listener.close()
    os.unlink(path)
    assert tracker.refresh(fence, everything=True) == {"a"}  # its folder changed
    assert tracker.report("a")["state"] == "missing"
    assert tracker.rows() == [("a", path, False)]


def test_check_warnings_name_the_field_line_and_hint(folder: Path) -> None:
    """`check`'s warning for a missing socket: the field and line it was written at, the
    state and the nginx line to fix it."""
    path = str(folder / "blog.sock")
    found = probing.warnings("sites/blog.yaml", (
        Use(field="upstream.socket", kind="socket", path=path, line=3),
        Use(field="upstreams.api.address", kind="address", path="127.0.0.1:9", line=5)),
        _fence(folder))
    assert [str(w) for w in found] == [
        f"sites/blog.yaml:3: upstream.socket: missing: no socket at {path} yet: is nginx"
        f" running? `listen unix:{path};` makes it; the site serves as soon as it listens"]


def test_envoys_host_flags_become_health_verdicts() -> None:
    """Envoy's `/clusters?format=json` host entries (as Envoy 1.40 writes them): failed
    active checks are unhealthy, not yet checked is pending, the rest healthy."""
    hosts = [
        {"address": {"pipe": {"path": "/s/a.sock"}},
         "health_status": {"failed_active_health_check": True, "eds_health_status": "HEALTHY"}},
        {"address": {"pipe": {"path": "/s/b.sock"}},
         "health_status": {"failed_active_health_check": True, "pending_active_hc": True}},
        {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
         "health_status": {"eds_health_status": "HEALTHY"}},
        {"address": {"socket_address": {"address": "::1", "port_value": 8001}},
         "health_status": {}},
    ]
    assert host_health(hosts) == {"/s/a.sock": "unhealthy", "/s/b.sock": "pending",
                                   "127.0.0.1:8000": "healthy", "[::1]:8001": "healthy"}


def test_a_path_refused_later_is_not_looked_at_every_round(tmp_path: Path, folder: Path,
                                                           listener: socket.socket) -> None:
    """A symlink planted between passes (to a socket outside the allowed folders): the
    tracker does not probe it, and it is not due again at once (no busy loop)."""
    path = folder / "planted.sock"
    outside = tmp_path / "elsewhere.sock"
    target = socket.socket(socket.AF_UNIX)
    target.bind(str(outside))
    target.listen(8)
    target.setblocking(False)
    os.symlink(outside, path)
    tracker = tracking.Tracker()
    tracker.follow({"a": probing.followed((Use(field="upstream.socket", kind="socket",
                                                path=str(path)),), None)})
    try:
        assert tracker.refresh(_fence(folder), everything=True) == {"a"}
        assert tracker.report("a") is None and _pending(target) == 0
        due = tracker.due_in()
        assert due is not None and due > tracking.DOWN_RECHECK_S / 2
    finally:
        target.close()
