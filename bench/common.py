"""What every benchmark shares: temp folders, site files, Envoy fed with pre-rendered files
(the reference), the daemon and its pass events, an HTTP probe, wrk, and the results files.

The real parts come from `tests.parts` (Envoy from the wheel, upstreams on Unix sockets,
the daemon as a process); this module adds only what timing needs. Everything started is
stopped by its own PID from an ExitStack, and temp folders are removed, also on failure.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.demo import servers
from controlplane.envoy.admin import AdminClient, stat_prefixes
from controlplane.errors import EnvoyUnavailable
from controlplane.intake.checking import check_content
from controlplane.render import rendering, snapshot
from controlplane.render.rendering import SiteResources
from controlplane.settings import CDS_FILE, LDS_FILE, RDS_FILE, Settings
from controlplane.values import Listen
from tests.parts import DaemonProcess, Envoy, Upstreams, free_port

RESULTS = Path(__file__).resolve().parent / "results"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk.lua"
FILES = {"cds": CDS_FILE, "rds": RDS_FILE, "lds": LDS_FILE}
POLL_S = 0.001


# ---- folders and processes -------------------------------------------------------------

@contextlib.contextmanager
def scratch(tag: str) -> Iterator[tuple[Path, ExitStack]]:
    """A short temp folder under /tmp (socket paths stay far below 108 bytes) and an
    ExitStack for the processes started in it; both cleaned up on any exit."""
    folder = Path(tempfile.mkdtemp(prefix=f"cpb-{tag}-", dir="/tmp"))
    try:
        with ExitStack() as stack:
            yield folder, stack
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_upstreams(folder: Path, stack: ExitStack, *names: str) -> dict[str, Path]:
    """nginx (or the stand-in where nginx is missing) per name; their socket paths."""
    started = Upstreams(folder / "s", servers.available_kind())
    stack.callback(started.close)
    return {name: started.start(name) for name in names}


def site_text(domains: Sequence[str], socket: Path | None = None,
              address: str | None = None) -> str:
    endpoint = f"socket: {socket}" if socket is not None else f"address: {address}"
    return f"domains: {json.dumps(list(domains))}\nupstream:\n  {endpoint}\n"


def count(names: Sequence[str]) -> int:
    """How many sites a pass event's list names: the log keeps the first ones and ends
    with `and N more`."""
    if names and names[-1].startswith("and ") and names[-1].endswith(" more"):
        return len(names) - 1 + int(names[-1].split()[1])
    return len(names)


def host_of(name: str) -> str:
    return f"{name}.example.com"


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a live process, from /proc/PID/status (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def twin_pid(out_dir: Path) -> int | None:
    """The daemon's validation twin on `out_dir` (its bootstrap in the state folder)."""
    bootstrap = str(out_dir / ".controlplane" / "twin" / "bootstrap.json").encode()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if bootstrap in cmdline.read().split(b"\0"):
                    return int(entry)
        except (OSError, ValueError):
            continue
    return None


# ---- Envoy fed by the benchmark, or by the daemon --------------------------------------

@dataclass
class Side:
    """One Envoy with its own out folder, listener port and admin socket."""

    settings: Settings
    envoy: Envoy
    admin: AdminClient
    probe: Probe

    @property
    def out(self) -> Path:
        return self.settings.out_dir


def start_side(folder: Path, stack: ExitStack, tag: str, sites_dir: Path,
               initial: Sequence[SiteResources]) -> Side:
    """An Envoy started on the files that `initial` renders to (the same bytes the daemon
    writes for these sites, so a daemon started on this folder has nothing to rewrite)."""
    out = folder / f"{tag}-out"
    out.mkdir(parents=True)
    admin_socket = folder / tag / "admin.sock"
    settings = Settings(sites_dir=sites_dir, out_dir=out, admin_socket=admin_socket,
                        listen=Listen(host="127.0.0.1", port=free_port()))
    for kind, data in render_files(settings, initial).items():
        (out / FILES[kind]).write_bytes(data)
    envoy = Envoy(folder / tag, out)
    stack.callback(envoy.stop)
    _launch(envoy)
    probe = Probe(settings.listen.port)
    stack.callback(probe.close)
    return Side(settings=settings, envoy=envoy, admin=AdminClient(admin_socket, settings),
                probe=probe)


def _launch(envoy: Envoy, tries: int = 4) -> None:
    """Start Envoy; when it aborts for want of inotify instances (128 per user, shared
    with whatever else runs on the machine, such as a test suite), wait and retry."""
    for attempt in range(tries):
        try:
            envoy.launch()
            return
        except AssertionError as exc:
            if "inotify" not in str(exc) or attempt == tries - 1:
                raise
            print("bench: Envoy is out of inotify instances; retrying in 15 s",
                  file=sys.stderr, flush=True)
            time.sleep(15)


def render_site(settings: Settings, name: str, text: str) -> SiteResources:
    """A site rendered by the daemon's own code (parse, validate, render, type checks)."""
    checked = check_content(name, str(settings.sites_dir / f"{name}.yaml"), text.encode(),
                            settings)
    if checked.resources is None:
        raise ValueError(f"{name}: {[str(p) for p in checked.problems]}")
    return checked.resources


def render_files(settings: Settings, sites: Sequence[SiteResources]) -> dict[str, bytes]:
    """The bytes of cds.json, rds.json and lds.json for these sites."""
    files = snapshot.snapshot(settings, sites).files()
    return {kind: rendering.discovery_response(list(files[kind]))[1] for kind in FILES}


def version_of(data: bytes) -> str:
    return str(json.loads(data)["version_info"])


@dataclass
class Applied:
    """Envoy's own time to take pre-rendered files: renamed into place, CDS confirmed
    first, then RDS, as the daemon orders them."""

    cds_s: float
    rds_s: float
    total_s: float


def apply_files(side: Side, files: dict[str, bytes], serves: str | None = None,
                removal: bool = False, timeout: float = 60.0) -> Applied:
    """Rename CDS into place, wait for Envoy's confirmation, then RDS (with `removal`,
    RDS first, then CDS). The end is the second file confirmed, or with `serves` the first
    200 for that host (the moment a client sees the change). The files are written and
    synced before the clock starts: only Envoy is timed."""
    first, second = ("rds", "cds") if removal else ("cds", "rds")
    temps = {}
    for kind in (first, second):
        temps[kind] = side.out / f".bench-{kind}"
        with open(temps[kind], "wb") as handle:
            handle.write(files[kind])
            handle.flush()
            os.fsync(handle.fileno())
    started = time.monotonic()
    os.replace(temps[first], side.out / FILES[first])
    wait_version(side, first, version_of(files[first]), timeout)
    middle = time.monotonic()
    os.replace(temps[second], side.out / FILES[second])
    if serves is not None:
        side.probe.until(serves, 200, timeout)
    else:
        wait_version(side, second, version_of(files[second]), timeout)
    done = time.monotonic()
    cds_s, rds_s = (done - middle, middle - started) if removal else (
        middle - started, done - middle)
    return Applied(cds_s=cds_s, rds_s=rds_s, total_s=done - started)


def wait_version(side: Side, kind: str, version: str, timeout: float = 60.0) -> None:
    """Until Envoy serves `version` of one file. Polls only the text readout
    `version_text` (which moves only on a successful apply): about 1 ms of Envoy's main
    thread at 1,000 clusters, where a `/stats` query for counters scans every cluster's
    stats (about 60 ms) and would slow the very apply it waits for."""
    name = f"{stat_prefixes(side.settings)[kind]}.version_text"
    query = urllib.parse.urlencode({"format": "json", "type": "TextReadouts",
                                    "filter": f"^{re.escape(name)}$"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stats = json.loads(side.admin.get(f"/stats?{query}"))["stats"]
        except EnvoyUnavailable:  # its main thread is busy applying (1 s per request)
            continue
        if any(s.get("name") == name and s.get("value") == version for s in stats):
            return
        time.sleep(POLL_S)
    raise TimeoutError(f"Envoy did not take {kind} {version} within {timeout}s:"
                       f" {side.envoy.log_text()}")


# ---- the daemon --------------------------------------------------------------------------

class Daemon:
    """`controlplane run` on a sites folder, feeding `side`'s Envoy, as a child process;
    its `pass` events read incrementally from its JSON log."""

    def __init__(self, folder: Path, stack: ExitStack, side: Side,
                 extra: Sequence[str] = (), tag: str = "") -> None:
        """`tag`: a second daemon on the same side (a restart) logs apart."""
        settings = side.settings
        self.started = time.monotonic()
        logs = folder / f"daemon-{settings.out_dir.name}{tag}"  # one log per daemon
        logs.mkdir(exist_ok=True)
        self.process = DaemonProcess(logs, [
            str(settings.sites_dir), "--out", str(settings.out_dir),
            "--listen", str(settings.listen), "--admin-socket", str(settings.admin_socket),
            "--no-exclusive-upstreams",  # the benchmarks' sites share one upstream
            *extra])
        stack.callback(self.process.stop)
        self.passes: list[dict[str, Any]] = []
        self._offset = 0

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def poll(self) -> list[dict[str, Any]]:
        """Read the pass events logged since the last call; all passes so far."""
        if self.process.process.poll() is not None:
            raise RuntimeError(f"the daemon exited {self.process.process.returncode}:"
                               f" {self.process.log.read_text()[-2000:]}")
        with open(self.process.log, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "pass":
                    self.passes.append(event)
        return self.passes

    def wait_pass(self, since: int, predicate: Callable[[dict[str, Any]], bool],
                  timeout: float = 60.0) -> dict[str, Any]:
        """The first pass after index `since` that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.poll()[since:]:
                if predicate(event):
                    return event
            time.sleep(0.005)
        raise TimeoutError(f"no matching pass within {timeout}s: {self.passes[since:][-3:]}")

    def wait_idle(self, since: int, quiet: float = 1.0, timeout: float = 120.0) -> None:
        """Until the last pass since `since` was confirmed and `quiet` s passed without one."""
        deadline = time.monotonic() + timeout
        count, changed_at = -1, time.monotonic()
        while time.monotonic() < deadline:
            passes = self.poll()
            if len(passes) != count:
                count, changed_at = len(passes), time.monotonic()
            settled = count > since and passes[-1].get("confirmed") is True
            if settled and time.monotonic() - changed_at >= quiet:
                return
            time.sleep(0.02)
        raise TimeoutError(f"the daemon did not settle within {timeout}s")


def stage_rename(stage: Path, sites: Path, name: str, text: str) -> float:
    """Write a site file beside the folder, then rename it in (one IN_MOVED_TO event);
    the time of the rename."""
    temp = stage / f"{name}.yaml"
    temp.write_text(text)
    moment = time.monotonic()
    os.replace(temp, sites / f"{name}.yaml")
    return moment


# ---- HTTP -----------------------------------------------------------------------------------

class Probe:
    """GETs through Envoy on one kept-alive connection, to time the first 200."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._connection: http.client.HTTPConnection | None = None

    def status(self, host: str, path: str = "/") -> int:
        for _ in range(2):
            connection = self._connection or http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=5)
            try:
                connection.request("GET", path, headers={"Host": host})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self._connection = None
                continue
            self._connection = connection
            return response.status
        return 0

    def until(self, host: str, status: int = 200, timeout: float = 60.0) -> float:
        """Poll until `host` answers `status`; the moment it did."""
        deadline = time.monotonic() + timeout
        while True:
            if self.status(host) == status:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host} did not answer {status} within {timeout}s")
            time.sleep(POLL_S)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def wrk(url: str, host: str | None, seconds: float, connections: int,
        count_statuses: bool = False) -> dict[str, Any]:
    """One wrk run (1 thread); its numbers as a dict (latencies in ms). With
    `count_statuses` the Lua script counts every non-2xx response itself."""
    command = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--latency",
               "-s", str(WRK_SCRIPT)]
    if host is not None:
        command += ["-H", f"Host: {host}"]
    env = {"PATH": os.environ.get("PATH", ""), "BENCH_COUNT": "1" if count_statuses else ""}
    done = subprocess.run([*command, url], capture_output=True, text=True, env=env,
                          timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            found: dict[str, Any] = json.loads(line.removeprefix("BENCH-JSON "))
            for key in ("p50", "p90", "p99", "mean", "max"):
                found[f"{key}_ms"] = found.pop(f"{key}_us") / 1000
            found["rps"] = found["requests"] / (found["duration_us"] / 1e6)
            return found
    raise RuntimeError(f"wrk printed no result (exit {done.returncode}): {done.stderr[-500:]}")


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


# ---- numbers ---------------------------------------------------------------------------

def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return quantile(values, 0.5)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def ratio(value: float, reference: float) -> float:
    return round(value / reference, 2) if reference > 0 else float("nan")


# ---- results ---------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save(name: str, data: dict[str, Any], markdown: str, figure: Any) -> None:
    """bench/results/NAME.json, NAME.md and NAME.png, each written by rename."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    _replace(RESULTS / f"{name}.json", (json.dumps(data, indent=2, sort_keys=True) + "\n"))
    _replace(RESULTS / f"{name}.md", markdown)
    temp = RESULTS / f"{name}.png.tmp"
    figure.savefig(temp, format="png", dpi=110, bbox_inches="tight")
    os.replace(temp, RESULTS / f"{name}.png")


def skipped(name: str, title: str, reason: str) -> dict[str, Any]:
    """The results of a benchmark that could not run here (a tool missing), saved so
    that the summary says so."""
    data: dict[str, Any] = {"skipped": reason}
    save(name, data, f"### {title}\n\nSkipped: {reason}.\n", pyplot().figure())
    return data


def _replace(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
