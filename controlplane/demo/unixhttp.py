"""A small real HTTP/1.1 server on a Unix socket, for when nginx is not installed.

Used by `make demo` and by the end-to-end tests as the stand-in upstream: it answers
every `GET` with the body `NAME PATH` and an `X-Upstream: NAME` header, and echoes the
`X-Forwarded-For` and `X-Real-IP` it got as `X-Seen-*` headers, so a test can see which
site, which path and which client address reached it. The socket is made 0666 and
removed on SIGTERM. Run as `python -m controlplane.demo.unixhttp SOCKET NAME`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socketserver
import sys
from http.server import BaseHTTPRequestHandler
from typing import Any


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = f"{name} {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Upstream", name)
            for seen in ("X-Forwarded-For", "X-Real-IP"):
                value = self.headers.get(seen)
                # A folded request header keeps its CR LF here: echoed, it would be a
                # line of the response of the client's making. Such a value is not echoed.
                if value and "\r" not in value and "\n" not in value:
                    self.send_header(f"X-Seen-{seen.removeprefix('X-')}", value)
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "unix"

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(path: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = _Server(path, _handler(name))
    os.chmod(path, 0o666)
    signal.signal(signal.SIGTERM, _exit)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
