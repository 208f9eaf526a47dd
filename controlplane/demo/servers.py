"""Start an HTTP upstream on a Unix socket: nginx when installed, else the stand-in.

For the demo and the end-to-end tests, which need the real thing a user runs (nginx
listening on `unix:/dev/shm/NAME.sock`) and a fallback where nginx is missing. Each
upstream answers every GET with `NAME PATH`, and sets `X-Upstream: NAME`; it echoes the
`X-Forwarded-For` and `X-Real-IP` it received as `X-Seen-Forwarded-For` and
`X-Seen-Real-IP` (when present), so a test can see what Envoy sent upstream.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NGINX = "nginx"
STANDIN = "python"


def available_kind() -> str:
    return NGINX if shutil.which("nginx") else STANDIN


@dataclass(slots=True)
class Server:
    name: str
    socket: Path
    kind: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop by our own PID: nginx quits gracefully on SIGQUIT, the stand-in on SIGTERM."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT if self.kind == NGINX else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)


def start(name: str, sock: Path, kind: str, home: Path, timeout: float = 10.0,
          tcp_port: int | None = None, down_file: Path | None = None) -> Server:
    """Start one upstream on `sock`; `home` holds nginx's config, pid and logs. nginx
    also listens on 127.0.0.1:`tcp_port` when given (to compare the two paths), and
    with `down_file` answers `/health` 503 while that file exists, else 200."""
    sock.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)  # a stale socket from a killed run
    if kind == NGINX:
        command = _nginx_command(name, sock, home, tcp_port, down_file)
    else:
        command = [sys.executable, "-m", "controlplane.demo.unixhttp", str(sock), name]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    upstream = Server(name=name, socket=sock, kind=kind, process=process)
    deadline = time.monotonic() + timeout
    while not connects(sock):
        if process.poll() is not None or time.monotonic() > deadline:
            upstream.stop()
            raise RuntimeError(f"{kind} for {name} did not listen on {sock}")
        time.sleep(0.01)
    return upstream


def _nginx_command(name: str, sock: Path, home: Path, tcp_port: int | None,
                   down_file: Path | None = None) -> list[str]:
    home.mkdir(parents=True, exist_ok=True)
    temps = "\n".join(f"    {t}_temp_path {home}/{t};"
                      for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    config = home / "nginx.conf"
    config.write_text(f"""daemon off;
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
{temps}
    server {{
        listen unix:{sock};
        {f"listen 127.0.0.1:{tcp_port};" if tcp_port else ""}
        {_health_location(down_file)}
        location / {{
            default_type text/plain;
            add_header X-Upstream {name} always;
            add_header X-Seen-Forwarded-For $http_x_forwarded_for always;
            add_header X-Seen-Real-IP $http_x_real_ip always;
            return 200 "{name} $request_uri\\n";
        }}
    }}
}}
""")
    return [NGINX, "-p", str(home), "-c", str(config)]


def _health_location(down_file: Path | None) -> str:
    if down_file is None:
        return ""
    return (f'location = /health {{ default_type text/plain; if (-f {down_file}) {{'
            ' return 503 "down\\n"; } return 200 "ok\\n"; }')


def connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
