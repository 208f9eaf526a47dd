"""The validation twin's process: a second Envoy that the daemon keeps running.

The twin runs on file-based xDS of its own (`STATE/twin/`: a bootstrap, `cds.json`,
`lds.json`, `rds.json`) with its admin interface on a Unix socket of its own; what it
is fed, and how its verdict is read, is `twinning`. This module only starts it, watches
it, reads its log and stops it:

- it dies with the daemon, even when the daemon is killed with SIGKILL: the child asks
  the kernel for SIGKILL when the thread that started it ends (`PR_SET_PDEATHSIG`), so no
  orphan keeps the three inotify instances it holds; it runs in a session of its own, so
  a Ctrl-C to the daemon's terminal reaches the daemon, which stops it in order;
- `--disable-hot-restart` and a `--base-id` of its own, so it shares nothing with the
  live Envoy; `--reject-unknown-dynamic-fields`, as the live Envoy runs; one worker;
- its log (stderr) is read by a thread into a bounded ring: rejection reasons are in the
  log only (envoyproxy/envoy: file subscriptions have no `error_state`);
- `rss_bytes` is what the daemon reads to restart it after a big batch.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

import structlog

from controlplane.settings import CDS_FILE, LDS_FILE, RDS_FILE
from controlplane.writing import ensure_private_folder, write_atomic

log = structlog.get_logger("controlplane")
TWIN_DIR = "twin"
"""The twin's files go in `STATE/twin/` (mode 0700)."""
BASE_ID = 7311
"""Its own `--base-id` (the live Envoy's is 0)."""
LOG_LINES = 400
MAX_SOCKET_PATH = 107
PR_SET_PDEATHSIG = 1
_EMPTY = b'{"resources":[],"version_info":"start"}\n'
_LIBC = ctypes.CDLL(None, use_errno=True)


class TwinProcess:
    """One run of the twin Envoy at a time: `start`, `alive`, `log_since`, `stop`."""

    def __init__(self, binary: Path, folder: Path) -> None:
        self.folder = folder
        self._binary = binary
        self._child: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=LOG_LINES)
        self._count = 0
        self._lock = threading.Lock()
        self._socket_dir: str | None = None
        self.admin_socket = folder / "admin.sock"
        self.starts = 0
        """How many times it was started (tests and benchmarks read it)."""

    def paths(self) -> dict[str, Path]:
        return {"cds": self.folder / CDS_FILE, "lds": self.folder / LDS_FILE,
                "rds": self.folder / RDS_FILE}

    def start(self) -> None:
        """Start it on empty files; returns at once (it answers /ready soon after)."""
        ensure_private_folder(self.folder.parent)
        ensure_private_folder(self.folder)
        self.admin_socket = self._socket_path()
        for path in self.paths().values():
            write_atomic(path, _EMPTY, 0o600, force=True, durable=False)
        bootstrap = self.folder / "bootstrap.json"
        write_atomic(bootstrap, json.dumps(self._bootstrap()).encode(), 0o600, force=True,
                     durable=False)
        args = [str(self._binary), "-c", str(bootstrap), "--disable-hot-restart",
                "--base-id", str(BASE_ID), "--reject-unknown-dynamic-fields",
                "--concurrency", "1", "--drain-time-s", "0", "--log-level", "warning",
                "--log-format", "%l|%v"]
        self._child = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env={"PATH": os.environ.get("PATH", "")},
            start_new_session=True, preexec_fn=_die_with(os.getpid()))
        self.starts += 1
        assert self._child.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self._child.stderr,),
                                        name="twin-log", daemon=True)
        self._reader.start()
        log.debug("twin.started", pid=self._child.pid, folder=str(self.folder))

    def _socket_path(self) -> Path:
        """`STATE/twin/admin.sock` when the path fits a Unix socket (107 bytes), else a
        private folder of its own under the system's temp folder."""
        wanted = self.folder / "admin.sock"
        if len(os.fsencode(wanted)) <= MAX_SOCKET_PATH:
            return wanted
        self._socket_dir = tempfile.mkdtemp(prefix="controlplane-twin-")
        return Path(self._socket_dir) / "admin.sock"

    def _bootstrap(self) -> dict[str, Any]:
        paths = self.paths()
        return {
            "node": {"id": "controlplane-twin", "cluster": "controlplane-twin"},
            "dynamic_resources": {
                "cds_config": {"path_config_source": {"path": str(paths["cds"])},
                               "resource_api_version": "V3"},
                "lds_config": {"path_config_source": {"path": str(paths["lds"])},
                               "resource_api_version": "V3"},
            },
            "admin": {"address": {"pipe": {"path": str(self.admin_socket), "mode": 0o600}}},
        }

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self._lock:
                self._count += 1
                self._lines.append((self._count, raw.decode(errors="replace").rstrip("\n")))
        stream.close()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def alive(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def exit_code(self) -> int | None:
        return self._child.returncode if self._child is not None else None

    def mark(self) -> int:
        """A point in the log: `log_since(mark)` gives what came after it."""
        with self._lock:
            return self._count

    def log_since(self, mark: int) -> list[str]:
        with self._lock:
            return [line for number, line in self._lines if number > mark]

    def rss_bytes(self) -> int:
        """Its resident memory now (0 when it is not running)."""
        if not self.alive():
            return 0
        try:
            with open(f"/proc/{self.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return 0
        return 0

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop it (SIGTERM, then SIGKILL after `grace_s`), reap it, join the log reader."""
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        self.admin_socket.unlink(missing_ok=True)
        if self._socket_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._socket_dir)
            self._socket_dir = None


def _die_with(parent: int) -> Any:
    """The child's first step: SIGKILL when the thread that started it ends, and exit at
    once if the daemon is already gone (it died between fork and here)."""
    prctl = _LIBC.prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec
