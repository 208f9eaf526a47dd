"""A misbehaving admin socket: real servers on real Unix sockets that drip their answer
a byte at a time, answer garbage, send a huge body, or refuse connections. Every request
is bounded in time and bytes, each failure has its own kind, and the real daemon keeps
running and stops on SIGTERM within 2 s."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.envoy.admin import AdminClient
from controlplane.errors import EnvoyBadAnswer, EnvoyRefused, EnvoyTimeout, EnvoyUnavailable
from controlplane.settings import Settings
from tests.parts import DaemonProcess, free_port, wait_for

pytestmark = pytest.mark.e2e
HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


def _drip(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(HEADERS + b"Content-Length: 100000\r\n\r\n")
    while not stop.wait(0.05):
        conn.sendall(b" ")


def _garbage(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"\x00\xffSSH-2.0-not-http\r\n\r\n" + bytes(range(256)))


def _huge(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(HEADERS + b"Content-Length: 1073741824\r\n\r\n")
    chunk = b"0" * 65536
    while not stop.is_set():
        conn.sendall(chunk)


BEHAVIOURS: dict[str, Callable[[socket.socket, threading.Event], None]] = {
    "drip": _drip, "garbage": _garbage, "huge": _huge}


@contextlib.contextmanager
def _server(path: Path, behaviour: str) -> Iterator[Path]:
    """A real Unix socket server with one misbehaviour ("refused": a stale socket file
    that nothing listens on), serving each connection in its own thread."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    if behaviour == "refused":
        listener.close()
        yield path
        return
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(5)
            BEHAVIOURS[behaviour](conn, stop)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=serve, args=(conn,))
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    try:
        yield path
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()
        for thread in threads:
            thread.join(timeout=5)


EXPECTED = {"drip": (EnvoyTimeout, "envoy_timeout"), "garbage": (EnvoyBadAnswer,
            "envoy_bad_answer"), "huge": (EnvoyBadAnswer, "envoy_bad_answer"),
            "refused": (EnvoyRefused, "envoy_refused")}


@pytest.mark.parametrize("behaviour", sorted(EXPECTED))
def test_each_request_is_bounded_and_names_its_failure(short_tmp: Path, behaviour: str) -> None:
    """Drip, garbage, huge body or refusal: the request raises its own class within
    about a second (the total bound), never hangs, never reads past the byte cap."""
    with _server(short_tmp / "admin.sock", behaviour) as path:
        client = AdminClient(path, Settings(admin_max_bytes=1 << 20))
        started = time.monotonic()
        with pytest.raises(EnvoyUnavailable) as raised:
            client.versions()
        assert time.monotonic() - started < 1.5
        assert type(raised.value) is EXPECTED[behaviour][0]
        assert raised.value.kind == EXPECTED[behaviour][1]
        assert str(path) in str(raised.value)


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())
    except urllib.error.URLError:
        return ""


@pytest.mark.parametrize("behaviour", sorted(EXPECTED))
def test_daemon_survives_a_misbehaving_admin_socket(short_tmp: Path, behaviour: str) -> None:
    """The real daemon pointed at a misbehaving admin socket keeps running, counts the
    failure under its own kind, calls no site serving, and stops on SIGTERM within 2 s
    even while a request is under way."""
    sites, out, port = short_tmp / "sites", short_tmp / "out", free_port()
    sites.mkdir()
    (sites / "a.yaml").write_text("domains: [a.example.com]\nupstream: {socket: /tmp/a.sock}\n")
    config = short_tmp / "settings.yaml"
    config.write_text("confirm_timeout_s: 1.5\nretry_s: 0.2\nretry_max_s: 0.5\n")
    kind = EXPECTED[behaviour][1]
    with _server(short_tmp / "admin.sock", behaviour) as path:
        daemon = DaemonProcess(short_tmp, [
            str(sites), "--out", str(out), "--no-envoy", "--admin-socket", str(path),
            "--metrics", f"127.0.0.1:{port}"], config=config)
        try:
            wait_for(lambda: f'controlplane_errors_total{{kind="{kind}"}}' in _metrics(port),
                     15, f"the {kind} count")
            assert daemon.process.poll() is None
            others = {"envoy_timeout", "envoy_refused", "envoy_bad_answer"} - {kind}
            text = _metrics(port)
            assert not [o for o in others if f'kind="{o}"' in text], text
            assert 'controlplane_sites{state="serving"} 0.0' in text
            assert 'controlplane_sites{state="pending"} 1.0' in text
            assert not daemon.events("pass.crashed")
            wait_for(lambda: daemon.events("pass"), 10, "a pass logged")
            started = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            daemon.process.wait(timeout=10)
            assert time.monotonic() - started < 2.0
            assert daemon.process.returncode == 0
        finally:
            daemon.stop()
