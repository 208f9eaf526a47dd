"""What watching upstream sockets costs, and how soon a change shows: the numbers behind
the rechecks in controlplane/daemon/tracking.py.

Run: `.venv/bin/python -m bench.upstream_probe`. Two parts:

1. The tracker alone, on real sockets in a temp folder (half listening, a quarter bound
   with no listener, a quarter missing): the time of the look at every path at the end
   of a pass (`refresh(everything=True)`, connecting only to new files) and of a round
   that connects to every socket (all due), for 100, 1,000 and 4,000 endpoints.
2. The daemon (a real `controlplane run`, no Envoy): from a socket's `listen()` (or its
   removal) until the status file says `up` (or `missing`), 20 times each, after one
   warm-up (a socket made before the first pass ends, when its folder is not watched
   yet, is seen by the 1 s recheck instead).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from controlplane.daemon import tracking
from controlplane.intake import probing
from controlplane.intake.paths import Fence
from controlplane.site.places import Use


def tracker_costs(count: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="cp-bench-up-", dir="/tmp"))
    held: list[socket.socket] = []
    try:
        paths = []
        for i in range(count):
            path = folder / f"s{i}.sock"
            paths.append(str(path))
            if i % 4 in (0, 1, 2):
                sock = socket.socket(socket.AF_UNIX)
                sock.bind(str(path))
                if i % 4 in (0, 1):
                    sock.listen(64)
                held.append(sock)
        fence = Fence.now(socket_dirs=["/tmp"], log_dirs=[], admin_socket=None, private=[])
        tracker = tracking.Tracker()
        tracker.follow({f"site{i}": probing.followed(
            (Use(field="upstream.socket", kind="socket", path=p),), None)
            for i, p in enumerate(paths)})
        started = time.perf_counter()
        tracker.refresh(fence, everything=True)  # first look: connects to every socket
        first = time.perf_counter() - started
        for sock in held:  # drain the accept queues, as a server would
            sock.setblocking(False)
            while True:
                try:
                    sock.accept()[0].close()
                except OSError:
                    break
        started = time.perf_counter()
        tracker.refresh(fence, everything=True)  # a later pass: nothing new
        again = time.perf_counter() - started
        (folder / "new.sock").touch()  # the folder changed: every path is looked at
        started = time.perf_counter()
        tracker.refresh(fence, everything=True)
        moved = time.perf_counter() - started
        return {"endpoints": count, "first_look_ms": round(first * 1000, 2),
                "pass_end_unchanged_ms": round(again * 1000, 2),
                "pass_end_folder_changed_ms": round(moved * 1000, 2)}
    finally:
        for sock in held:
            sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _status_state(state: Path, site: str) -> str | None:
    try:
        document = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return None
    upstream = (document.get("sites", {}).get(site) or {}).get("upstream") or {}
    return upstream.get("state")


def _wait(state: Path, site: str, wanted: str, deadline_s: float = 10.0) -> float:
    started = time.monotonic()
    while _status_state(state, site) != wanted:
        if time.monotonic() - started > deadline_s:
            raise RuntimeError(f"{site} never became {wanted}")
        time.sleep(0.002)
    return time.monotonic() - started


def daemon_latency(repeats: int = 20) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="cp-bench-up-", dir="/tmp"))
    sites, out, socks = folder / "sites", folder / "out", folder / "sockets"
    for made in (sites, socks):
        made.mkdir()
    sock_path = socks / "b.sock"
    (sites / "b.yaml").write_text(f"domains: [b.example]\nupstream: {{socket: {sock_path}}}\n")
    daemon = subprocess.Popen([sys.executable, "-m", "controlplane", "run", str(sites),
                               "--out", str(out), "--no-envoy", "--log-level", "error"],
                              stdin=subprocess.DEVNULL)
    ups, downs = [], []
    try:
        _wait(out / ".controlplane", "b", "missing", 30)
        for repeat in range(repeats + 1):
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(str(sock_path))
            listener.listen(16)
            up = _wait(out / ".controlplane", "b", "up")
            listener.close()
            os.unlink(sock_path)
            down = _wait(out / ".controlplane", "b", "missing")
            if repeat:  # the first may come before the folder is watched (1 s recheck)
                ups.append(up)
                downs.append(down)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
    return {"repeats": repeats,
            "appear_median_ms": round(statistics.median(ups) * 1000, 1),
            "appear_max_ms": round(max(ups) * 1000, 1),
            "disappear_median_ms": round(statistics.median(downs) * 1000, 1),
            "disappear_max_ms": round(max(downs) * 1000, 1)}


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    for count in (100, 1000, 4000):
        print(json.dumps(tracker_costs(count)))
    print(json.dumps(daemon_latency()))


if __name__ == "__main__":
    main()
