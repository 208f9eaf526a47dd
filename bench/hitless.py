"""Hitless reloads: load through Envoy to one nginx site while 100 other sites are added,
changed and removed (one file operation every 30 ms, so the daemon applies and Envoy
reloads CDS and RDS many times), against the same load with no changes, and against the
same operations given to a second Envoy alone: files the benchmark rendered beforehand,
renamed into its folder in the daemon's order (what the churn costs Envoy itself, the
floor under the daemon's figure).

Counted: non-2xx responses (wrk's Lua script looks at every status; Envoy's own
`http.ingress_http.downstream_rq_Nxx` counters are read as a cross-check) and socket
errors; target 0. Compared: p99 latency with churn against the run without (same run,
alternating, median of the repeats). Where wrk is missing, a Python load generator stands
in and the results say so.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Daemon
from controlplane.render.rendering import SiteResources

CHURN_SITES = 100
CHURN_GAP_S = 0.03
CONNECTIONS = 4
STATS = r"http\.ingress_http\.downstream_rq_[1-5]xx$"


class Churn:
    """A thread that adds, changes and removes sites c000..c099 until stopped."""

    def __init__(self, sites: Path, stage: Path, socks: dict[str, Path]) -> None:
        self.sites, self.stage, self.socks = sites, stage, socks
        self.ops = {"add": 0, "change": 0, "remove": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cycle = 0

    def __enter__(self) -> Churn:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for phase in ("add", "change", "remove"):
                for i in range(CHURN_SITES):
                    if self._stop.is_set():
                        return
                    self._do(phase, f"c{i:03d}")
                    self.ops[phase] += 1
                    self._stop.wait(CHURN_GAP_S)
            self.cycle += 1

    def _do(self, phase: str, name: str) -> None:
        host = common.host_of(name)
        if phase == "remove":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sites / f"{name}.yaml")
        elif phase == "add":
            common.stage_rename(self.stage, self.sites, name,
                                common.site_text([host], self.socks["c1"]))
        else:  # a new domain (new content each cycle) and the other upstream
            common.stage_rename(self.stage, self.sites, name, common.site_text(
                [host, f"r{self.cycle}.{host}"], self.socks["c2"]))

    def clear(self) -> None:
        for i in range(CHURN_SITES):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sites / f"c{i:03d}.yaml")


class EnvoyChurn(Churn):
    """The same operations, as files renamed straight into a second Envoy: CDS confirmed
    before RDS (RDS first for a removal), as the daemon orders them. The files of each
    step are rendered before the runs, so the benchmark costs the cores nothing."""

    def __init__(self, side: common.Side, socks: dict[str, Path], stable: str) -> None:
        super().__init__(side.settings.sites_dir, side.settings.sites_dir, socks)
        self.side, self._stable = side, stable
        self._sites: dict[str, str] = {}
        self._renders: dict[tuple[str, str], SiteResources] = {}
        self._files: dict[tuple[str, str, int], dict[str, bytes]] = {}

    def prepare(self, cycles: int) -> None:
        """Render the files of the first `cycles` cycles of operations (cached)."""
        for cycle in range(cycles):
            self.cycle = cycle
            for phase in ("add", "change", "remove"):
                for i in range(CHURN_SITES):
                    self._step_files(phase, f"c{i:03d}")
        self.cycle, self._sites = 0, {}

    def _do(self, phase: str, name: str) -> None:
        common.apply_files(self.side, self._step_files(phase, name), removal=phase == "remove")

    def _step_files(self, phase: str, name: str) -> dict[str, bytes]:
        host = common.host_of(name)
        if phase == "remove":
            self._sites.pop(name, None)
        elif phase == "add":
            self._sites[name] = common.site_text([host], self.socks["c1"])
        else:
            self._sites[name] = common.site_text([host, f"r{self.cycle}.{host}"],
                                                 self.socks["c2"])
        key = (phase, name, self.cycle)
        if key not in self._files:
            self._files[key] = common.render_files(self.side.settings, [
                self._render(n, t) for n, t in {"stable": self._stable, **self._sites}.items()])
        return self._files[key]

    def _render(self, name: str, text: str) -> SiteResources:
        if (name, text) not in self._renders:
            self._renders[(name, text)] = common.render_site(self.side.settings, name, text)
        return self._renders[(name, text)]

    def clear(self) -> None:
        self._sites = {}
        common.apply_files(self.side, common.render_files(
            self.side.settings, [self._render("stable", self._stable)]), removal=True)


def measure(seconds: float, repeats: int) -> dict[str, Any]:
    with common.scratch("hitless") as (folder, stack):
        socks = common.start_upstreams(folder, stack, "stable", "c1", "c2")
        sites, stage = folder / "sites", folder / "stage"
        sites.mkdir()
        stage.mkdir()
        text = common.site_text(["stable.example.com"], socks["stable"])
        (sites / "stable.yaml").write_text(text)
        settings = common.Settings(sites_dir=sites, out_dir=folder / "d-out")
        side = common.start_side(folder, stack, "d", sites,
                                 [common.render_site(settings, "stable", text)])
        daemon = Daemon(folder, stack, side)
        daemon.wait_pass(0, lambda e: e.get("confirmed") is True, 60)
        floor = common.start_side(folder, stack, "f", sites, [])
        alone = EnvoyChurn(floor, socks, text)
        alone.prepare(cycles=2)
        alone.clear()
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for r in range(repeats):
            for mode in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
                if mode == "envoy-churn":
                    runs[mode].append(_alone(alone, seconds))
                else:
                    runs[mode].append(_one(daemon, side, stage, socks, seconds,
                                           mode == "churn"))
        return _summary(runs, seconds)


MODES = ("baseline", "churn", "envoy-churn")


def _alone(churner: EnvoyChurn, seconds: float) -> dict[str, Any]:
    """The load on the second Envoy while it takes the same operations as files."""
    side = churner.side
    before = side.envoy.stats(STATS)
    with churner:
        load = _load(f"http://127.0.0.1:{side.settings.listen.port}/", "stable.example.com",
                     seconds)
    after = side.envoy.stats(STATS)
    ops = dict(churner.ops)
    churner.ops = dict.fromkeys(ops, 0)
    churner.cycle = 0
    churner.clear()
    envoy = {k.rsplit("_", 1)[-1]: after.get(k, 0) - before.get(k, 0) for k in after}
    return {**load, "envoy_rq": envoy,
            "envoy_non2xx": sum(v for k, v in envoy.items() if k != "2xx"),
            "passes": 0, "rewrites": 2 * sum(ops.values()), "rejected": 0, "churn_ops": ops}


def _one(daemon: Daemon, side: common.Side, stage: Path, socks: dict[str, Path],
         seconds: float, churn: bool) -> dict[str, Any]:
    url = f"http://127.0.0.1:{side.settings.listen.port}/"
    before = side.envoy.stats(STATS)
    since = len(daemon.poll())
    churner = Churn(side.settings.sites_dir, stage, socks)
    with churner if churn else contextlib.nullcontext():
        load = _load(url, "stable.example.com", seconds)
    after = side.envoy.stats(STATS)
    passes = daemon.poll()[since:]
    if churn:
        churner.clear()
        daemon.wait_idle(since, quiet=1.0, timeout=120)
    envoy = {k.rsplit("_", 1)[-1]: after.get(k, 0) - before.get(k, 0) for k in after}
    return {**load, "envoy_rq": envoy,
            "envoy_non2xx": sum(v for k, v in envoy.items() if k != "2xx"),
            "passes": len(passes),
            "rewrites": sum(len(e.get("written", [])) for e in passes),
            "rejected": sum(len(e.get("rejected", [])) for e in passes),
            "churn_ops": dict(churner.ops) if churn else {}}


def _load(url: str, host: str, seconds: float) -> dict[str, Any]:
    if common.have_wrk():
        return {**common.wrk(url, host, seconds, CONNECTIONS, count_statuses=True),
                "generator": "wrk"}
    return {**python_load(url, host, seconds, CONNECTIONS), "generator": "python"}


def python_load(url: str, host: str, seconds: float, connections: int) -> dict[str, Any]:
    """The fallback when wrk is missing: threads on kept-alive connections."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    latencies: list[float] = []
    statuses: list[int] = []
    deadline = time.monotonic() + seconds

    def worker() -> None:
        probe = common.Probe(port)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            statuses.append(probe.status(host))
            latencies.append(time.perf_counter() - started)
        probe.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"requests": len(statuses), "rps": len(statuses) / seconds,
            "non2xx": sum(1 for s in statuses if not 200 <= s < 300),
            "connect_errors": statuses.count(0), "read_errors": 0, "write_errors": 0,
            "timeouts": 0, "p50_ms": common.quantile(latencies, 0.5) * 1000,
            "p99_ms": common.quantile(latencies, 0.99) * 1000}


def _summary(runs: dict[str, list[dict[str, Any]]], seconds: float) -> dict[str, Any]:
    def med(mode: str, key: str) -> float:
        return round(common.median([r[key] for r in runs[mode]]), 3)

    churn = runs["churn"]
    failures = sum(r["non2xx"] + r["connect_errors"] + r["read_errors"] + r["write_errors"]
                   + r["timeouts"] for r in churn)
    alone = runs["envoy-churn"]
    return {
        "envoy_churn": {k: med("envoy-churn", k) for k in ("rps", "p50_ms", "p99_ms",
                                                          "rewrites")},
        "envoy_p99_ratio": common.ratio(med("envoy-churn", "p99_ms"),
                                        med("baseline", "p99_ms")),
        "envoy_churn_failures": sum(
            r["non2xx"] + r["connect_errors"] + r["read_errors"] + r["write_errors"]
            + r["timeouts"] for r in alone),
        "seconds_per_run": seconds, "connections": CONNECTIONS, "churn_sites": CHURN_SITES,
        "generator": churn[0]["generator"], "runs": runs,
        "baseline": {k: med("baseline", k) for k in ("rps", "p50_ms", "p99_ms")},
        "churn": {k: med("churn", k) for k in ("rps", "p50_ms", "p99_ms", "passes",
                                               "rewrites")},
        "p99_ratio": common.ratio(med("churn", "p99_ms"), med("baseline", "p99_ms")),
        "rps_ratio": common.ratio(med("churn", "rps"), med("baseline", "rps")),
        "churn_requests": sum(r["requests"] for r in churn),
        "churn_failures": failures,
        "churn_envoy_non2xx": sum(r["envoy_non2xx"] for r in churn),
        "target": {"rule": "0 non-2xx responses and 0 socket errors during churn",
                   "met": failures == 0 and sum(r["envoy_non2xx"] for r in churn) == 0},
    }


def run(full: bool, quick: bool) -> dict[str, Any]:
    data = measure(4 if quick else 10, 1 if quick else 5)
    common.save("hitless", data, _markdown(data), _plot(data))
    return data


def _markdown(data: dict[str, Any]) -> str:
    rows = []
    for mode in MODES:
        for i, r in enumerate(data["runs"][mode]):
            ops = r["churn_ops"]
            rows.append([mode, i + 1, r["requests"], f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}",
                         f"{r['p99_ms']:.2f}", r["non2xx"], r["envoy_non2xx"],
                         r["connect_errors"] + r["read_errors"] + r["write_errors"]
                         + r["timeouts"], r["passes"], r["rewrites"],
                         " / ".join(str(ops.get(k, 0)) for k in ("add", "change", "remove"))])
    verdict = "met" if data["target"]["met"] else "MISSED"
    return (f"### Hitless reloads: {data['generator']}, {data['connections']} connections,"
            f" {data['seconds_per_run']:g} s per run, to one nginx site while"
            f" {data['churn_sites']} others churn\n\n" +
            common.table(["run", "#", "requests", "req/s", "p50 ms", "p99 ms", "non-2xx",
                          "non-2xx (Envoy stats)", "socket errors", "daemon passes",
                          "file rewrites", "sites added / changed / removed"], rows) +
            f"\nWith churn: {data['churn_failures']} failures in {data['churn_requests']:,}"
            f" requests; target ({data['target']['rule']}): {verdict}. p99 with churn is"
            f" {data['p99_ratio']:.2f}x the p99 without (medians:"
            f" {data['churn']['p99_ms']:.2f} vs {data['baseline']['p99_ms']:.2f} ms); req/s"
            f" {data['rps_ratio']:.2f}x. Envoy alone, given the same operations as files"
            f" (`envoy-churn`): p99 {data['envoy_churn']['p99_ms']:.2f} ms, "
            f"{data['envoy_p99_ratio']:.2f}x the p99 without churn;"
            f" {data['envoy_churn_failures']} failures.\n")


def _plot(data: dict[str, Any]) -> Any:
    plt = common.pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    for axis, key, label in ((left, "p99_ms", "p99 latency (ms)"), (right, "rps", "req/s")):
        for offset, mode in zip((-0.27, 0, 0.27), MODES, strict=True):
            values = [r[key] for r in data["runs"][mode]]
            axis.bar([i + offset for i in range(len(values))], values, 0.27, label=mode)
        axis.set_xlabel("repeat")
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
    left.set_title(f"non-2xx with churn: {data['churn_failures']}")
    right.set_title("throughput through Envoy")
    return figure


def summary(data: dict[str, Any]) -> list[list[str]]:
    verdict = "0 non-2xx: met" if data["target"]["met"] else (
        f"0 non-2xx: **missed** ({data['churn_failures']} failures,"
        f" {data['churn_envoy_non2xx']} non-2xx in Envoy's stats)")
    return [["Hitless reloads: non-2xx during churn; p99", f"{data['churn_sites']} sites churning",
             f"{data['churn_failures']} of {data['churn_requests']:,};"
             f" p99 {data['churn']['p99_ms']:.2f} ms",
             f"no churn: p99 {data['baseline']['p99_ms']:.2f} ms; Envoy alone under the"
             f" same churn: p99 {data['envoy_churn']['p99_ms']:.2f} ms"
             f" ({data['envoy_p99_ratio']:.2f}x)",
             f"{data['p99_ratio']:.2f}x (p99)", verdict]]
