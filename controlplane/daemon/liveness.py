"""Is the daemon alive, and is what it reported still true? For `controlplane status`.

At start the daemon writes `STATE/daemon.json`: its pid, when it started, the kernel's
start time of that pid and the boot it ran in (so a pid reused by another process is
not mistaken for it), its folders and its resync period; at a clean stop it adds
`stopped_at`. `inspect` reads that and the status file and gives one verdict:

    OK          alive, a pass within 2 x resync + slack, every site served as written
    SITES       alive and fresh, but some site is invalid or serving its last good version,
                or Envoy has not confirmed the last pass
    STALE       alive, but no pass for too long, or its /healthz (when it serves one)
                says the loop is wedged
    NOT_RUNNING the pid is gone, or another process has it
    NO_STATUS   nothing here: no daemon ever wrote into this state folder
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane import __version__
from controlplane.daemon import statusfile, statustable
from controlplane.daemon.statusfile import LAST_GOOD_DIR
from controlplane.envoy.verifying import SCRATCH_DIR
from controlplane.render.tls import SDS_FOLDER
from controlplane.settings import Settings
from controlplane.writing import (
    STATE_MODE,
    ensure_folder,
    remove_scratch,
    remove_stale_temps,
    write_atomic,
)

DAEMON_FILE = "daemon.json"
STALE_SLACK_S = 30.0
"""Besides two resync periods: how late a pass may be (a large first pass, a slow Envoy)."""
HEALTH_TIMEOUT_S = 2.0
OK, SITES, STALE, NOT_RUNNING, NO_STATUS = "ok", "sites", "stale", "not running", "no status"


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    verdict: str
    text: str
    document: dict[str, Any]


def record_start(settings: Settings) -> dict[str, Any]:
    """Write `daemon.json` for this process; returns what was written."""
    info = {"pid": os.getpid(), "started_at": statusfile.iso_time(time.time()),
            "process_start": _process_start(os.getpid()), "boot_id": _boot_id(),
            "version": __version__, "sites_dir": str(settings.sites_dir.absolute()),
            "out_dir": str(settings.out_dir.absolute()),
            "state_dir": str(settings.state.absolute()), "resync_s": settings.resync_s,
            "admin_socket": None if settings.admin_socket is None else str(settings.admin_socket),
            "metrics": None if settings.metrics is None else str(settings.metrics)}
    _write(settings.state, info)
    return info


def record_stop(settings: Settings, info: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        _write(settings.state, {**info, "stopped_at": statusfile.iso_time(time.time())})


def _write(state_dir: Path, info: dict[str, Any]) -> None:
    ensure_folder(state_dir, 0o700)
    write_atomic(state_dir / DAEMON_FILE, (json.dumps(info, sort_keys=True) + "\n").encode(),
                 STATE_MODE)


def alive(info: dict[str, Any]) -> bool:
    """The pid runs, and is the same process that wrote `info` (same start, same boot)."""
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0 or info.get("stopped_at"):
        return False
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)  # no /proc: the pid exists (it may have been reused)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    started = _process_start(pid)
    return started is not None and started == info.get("process_start") and (
        _boot_id() == info.get("boot_id"))


def _process_start(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if it is gone or
    a zombie (dead, not yet reaped by its parent)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def inspect(settings: Settings, now: float | None = None) -> Report:
    """The verdict on the daemon that writes into `settings.state`."""
    now = time.time() if now is None else now
    state = settings.state
    try:
        document = statusfile.read_status(state)
    except (OSError, ValueError) as exc:
        return _no_status(settings, exc)
    info = _read_info(state)
    verdict, summary = _verdict(document, info, now)
    daemon = {**info, "state": verdict if verdict in (NOT_RUNNING, STALE) else "running",
              "running": verdict not in (NOT_RUNNING,), "summary": summary}
    if "at" in document.get("last_pass", {}):
        at = statusfile.parse_time(document["last_pass"]["at"])
        daemon["last_pass_age_s"] = None if at is None else round(now - at, 3)
    document = {**document, "daemon": daemon, "verdict": verdict}
    return Report(verdict=verdict, text=summary + "\n\n" + statustable.table(document, now),
                  document=document)


def _read_info(state: Path) -> dict[str, Any]:
    try:
        loaded = json.loads((state / DAEMON_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _verdict(document: dict[str, Any], info: dict[str, Any], now: float) -> tuple[str, str]:
    pid = info.get("pid", "?")
    if not info:
        return NOT_RUNNING, (f"daemon: not running (no {DAEMON_FILE}: the status below"
                             " may be from a daemon that is gone)")
    if not alive(info):
        how = (f"stopped at {info['stopped_at']}" if info.get("stopped_at") else
               f"pid {pid} is gone; it did not stop cleanly")
        return NOT_RUNNING, f"daemon: not running ({how}); the status below is its last word"
    up = statusfile.parse_time(info.get("started_at")) or now
    alive_text = f"daemon: running, pid {pid}, up since {info.get('started_at')}"
    alive_text += f" ({statustable.ago(now - up).removesuffix(' ago')})"
    health = _health(info.get("metrics"))
    if health is not None:
        alive_text += f"; /healthz: {health}"
        if not health.startswith("200"):
            return STALE, f"{alive_text}; STALE: its loop is wedged"
    at = statusfile.parse_time(document.get("last_pass", {}).get("at"))
    limit = 2 * float(info.get("resync_s", 30.0)) + STALE_SLACK_S
    if at is None or now - at > limit:
        since = "no pass yet" if at is None else f"last pass {statustable.ago(now - at)}"
        return STALE, f"{alive_text}; STALE: {since}, a pass is due every" \
                      f" {info.get('resync_s')}s"
    unserved = sorted(n for n, s in document.get("sites", {}).items() if s["state"] != "serving")
    if unserved:
        return SITES, f"{alive_text}; not served as written: {', '.join(unserved)}"
    last = document.get("last_pass", {})
    if last.get("confirmed") is False or last.get("errors"):
        return SITES, f"{alive_text}; the last pass is not confirmed by Envoy (see its errors)"
    if last.get("confirmed") is None and info.get("admin_socket"):
        return SITES, (f"{alive_text}; waiting for Envoy to start (nothing LIVE on its admin"
                       f" socket {info['admin_socket']} yet)")
    return OK, alive_text


def _health(metrics: Any) -> str | None:
    """`/healthz` of the daemon's metrics endpoint, when it has one: "200 loop seen 1.0s
    ago", "503 ...", or why it did not answer."""
    if not isinstance(metrics, str):
        return None
    host, _, port = metrics.rpartition(":")
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    connection = http.client.HTTPConnection(host, int(port), timeout=HEALTH_TIMEOUT_S)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        return f"{response.status} {response.read().decode(errors='replace').strip()}"
    except (OSError, http.client.HTTPException) as exc:
        return f"no answer ({exc})"
    finally:
        connection.close()


def _no_status(settings: Settings, exc: Exception) -> Report:
    looked = settings.state / statusfile.STATUS_FILE
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    text = (f"daemon: not running here: no status at {looked} ({reason}). `status` reads"
            f" the state folder of the daemon started with the same --out (here"
            f" {settings.out_dir}) and --state; give it those of the running daemon.")
    document = {"verdict": NO_STATUS, "daemon": {"state": NO_STATUS, "running": False,
                                                 "summary": text},
                "looked_at": str(looked)}
    return Report(verdict=NO_STATUS, text=text, document=document)


def sweep(settings: Settings) -> None:
    """Remove what a killed daemon may have left: temp files of atomic writes in the
    output, SDS, state and last-good folders, and validate's scratch folders."""
    state = settings.state
    for folder in (settings.out_dir, settings.out_dir / SDS_FOLDER, state,
                   state / LAST_GOOD_DIR):
        remove_stale_temps(folder)
    remove_scratch(state / SCRATCH_DIR)
