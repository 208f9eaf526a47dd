"""The stand-in upstream used when nginx is not installed (`controlplane.demo.unixhttp`),
run for real on a Unix socket: it tells what client address reached it under the
header names nginx's does, and never echoes a line break of the client's."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parts import wait_for


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "app.sock"
    process = subprocess.Popen([sys.executable, "-m", "controlplane.demo.unixhttp",
                                str(path), "app"])
    try:
        wait_for(path.exists, 10, "the stand-in's socket")
        yield path
    finally:
        process.terminate()
        process.wait(timeout=10)


def _head(path: Path, headers: bytes) -> list[bytes]:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(str(path))
        client.sendall(b"GET / HTTP/1.1\r\nHost: app\r\n" + headers +
                       b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer.partition(b"\r\n\r\n")[0].split(b"\r\n")


def test_the_client_address_is_told_as_nginx_tells_it(upstream: Path) -> None:
    head = _head(upstream, b"X-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 203.0.113.7\r\n")
    assert b"X-Seen-Forwarded-For: 203.0.113.7" in head
    assert b"X-Seen-Real-IP: 203.0.113.7" in head


def test_a_folded_header_is_not_echoed_into_the_response(upstream: Path) -> None:
    head = _head(upstream, b"X-Real-IP: 203.0.113.7\r\n Set-Cookie: planted=1\r\n"
                           b"X-Forwarded-For: 203.0.113.8\r\n")
    assert not any(line.startswith((b" ", b"\t")) for line in head)
    assert not any(b"planted" in line for line in head)
    assert b"X-Seen-Forwarded-For: 203.0.113.8" in head  # the plain one still is
