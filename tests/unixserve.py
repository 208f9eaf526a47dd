"""A real HTTP/1.1 server on a Unix socket in a thread of the test, answering with a
function of the request: an upstream that fails on purpose, or an auth service. Stopped
and its socket removed on exit."""

from __future__ import annotations

import contextlib
import os
import socketserver
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

Answer = tuple[int, dict[str, str], bytes]
"""(status, headers, body)."""
Seen = list[tuple[str, dict[str, str]]]
"""(path, headers) of each request served, in order."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _handler(answer: Callable[[str, dict[str, str]], Answer],
             seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            seen.append((self.path, headers))
            status, extra, body = answer(self.path, headers)
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            # One request a connection: no handler thread outlives its test waiting for
            # the next request of Envoy's pooled connection.
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_HEAD = _any

        def address_string(self) -> str:
            return "unix"

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextlib.contextmanager
def serving(path: Path, answer: Callable[[str, dict[str, str]], Answer]) -> Iterator[Seen]:
    """Serve `answer` on the socket `path` until the block ends; yields what it saw."""
    seen: Seen = []
    with handling(path, _handler(answer, seen)):
        yield seen


@contextlib.contextmanager
def handling(path: Path, handle: type[socketserver.BaseRequestHandler]) -> Iterator[None]:
    """Serve connections on the socket `path` with `handle` until the block ends."""
    server = _Server(str(path), handle)
    os.chmod(path, 0o666)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
