"""The data path's price list: Envoy's instructions per request, counted by valgrind's
callgrind, for the minimal hand-written listener, our rendered listener, and ours without
each of its edge settings in turn, all served by one Envoy.

req/s on 2 cores shared by wrk, Envoy and nginx drifts by +-15% from run to run, which
hides settings that cost a few percent each (`datapath` measures req/s, paired by
round). An instruction count does not drift with the machine's load: two runs of the
same listener agree within 0.2%, so the count prices each setting on its own. What a
setting costs is `ours - ours without it`, as a share of the minimal listener's count.

Envoy runs under callgrind with one worker. Each variant is measured as: counters
zeroed, an idle window (Envoy's own timers, stats flushes) counted per second, counters
zeroed, a wrk run, counters dumped; its figure is (the count - the idle rate x the
run's length) / the requests served. Envoy's stats flush timer (every 5 s, at 10x the
idle rate) is off (`stats_flush_on_admin`), so that no flush blurs a window. Needs
valgrind (`apt-get install valgrind`) and wrk; otherwise the results say it was skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import common, datapath
from controlplane.envoy.verifying import envoy_binary
from controlplane.settings import Settings
from tests.parts import free_port

CONNECTIONS = 8
STARTUP_S = 240.0
"""Envoy under callgrind starts in about a minute here; more on a loaded machine."""
Strip = Callable[[dict[str, Any], list[dict[str, Any]]], None]


def _manager(listener: dict[str, Any]) -> dict[str, Any]:
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def _without(*keys: str) -> Strip:
    def strip(listener: dict[str, Any], clusters: list[dict[str, Any]]) -> None:
        for key in keys:
            _manager(listener).pop(key)
    return strip


def _no_real_ip(listener: dict[str, Any], clusters: list[dict[str, Any]]) -> None:
    _manager(listener)["route_config"].pop("request_headers_to_add")


def _no_disabled_filters(listener: dict[str, Any], clusters: list[dict[str, Any]]) -> None:
    manager = _manager(listener)
    manager["http_filters"] = [f for f in manager["http_filters"] if not f.get("disabled")]


def _no_buffer_limits(listener: dict[str, Any], clusters: list[dict[str, Any]]) -> None:
    for resource in (listener, *clusters):
        resource.pop("per_connection_buffer_limit_bytes")


def _any_domain(listener: dict[str, Any], clusters: list[dict[str, Any]]) -> None:
    routes = _manager(listener)["route_config"]
    routes.pop("ignore_port_in_host_matching")
    for vhost in routes["virtual_hosts"]:
        vhost["domains"] = ["*"]


SETTINGS: dict[str, Strip] = {
    "x-real-ip header": _no_real_ip,
    "use_remote_address": _without("use_remote_address"),
    "request timeouts": _without("request_headers_timeout", "request_timeout",
                                 "stream_idle_timeout"),
    "path normalization": _without("normalize_path", "merge_slashes",
                                   "path_with_escaped_slashes_action"),
    "disabled filter chain": _no_disabled_filters,
    "HTTP protocol options": _without("common_http_protocol_options",
                                      "http2_protocol_options"),
    "exact domain match": _any_domain,
    "32 KiB buffer limits": _no_buffer_limits,
}
"""Each edge setting of our listener that the minimal one lacks, and how to take it out.
Without all of them, ours is the minimal listener but for names (the results show it)."""


def variants() -> dict[str, list[Strip]]:
    """Our listener's variants: as rendered, without each setting, without all."""
    found: dict[str, list[Strip]] = {"ours": []}
    found.update({f"ours without {name}": [strip] for name, strip in SETTINGS.items()})
    found["ours without all of them"] = list(SETTINGS.values())
    return found


def reference_config(sock: Path, files: dict[str, bytes],
                     ports: dict[str, int]) -> dict[str, Any]:
    """The minimal bootstrap on `ports["minimal"]`, and one listener (with a cluster of
    its own) per variant of ours on the variant's port."""
    config = datapath.minimal_bootstrap(sock, ports["minimal"])
    config["stats_flush_on_admin"] = True  # no flush timer: a flush would blur a count
    resources = config["static_resources"]
    for index, (name, strips) in enumerate(variants().items()):
        listener, clusters = datapath.inline_listener(files)
        for strip in strips:
            strip(listener, clusters)
        cluster = f"variant{index}"
        for resource in clusters:
            resource["name"] = resource["load_assignment"]["cluster_name"] = cluster
        for vhost in _manager(listener)["route_config"]["virtual_hosts"]:
            for route in vhost["routes"]:
                route["route"]["cluster"] = cluster
        listener["name"] = cluster
        listener["address"] = {"socket_address": {"address": "127.0.0.1",
                                                  "port_value": ports[name]}}
        resources["listeners"].append(listener)
        resources["clusters"] += clusters
    return config


class Counted:
    """Envoy under callgrind: its instruction count, zeroed and dumped on demand."""

    def __init__(self, folder: Path, stack: ExitStack, config: dict[str, Any],
                 ports: list[int]) -> None:
        self.folder = folder / "callgrind"
        self.folder.mkdir()
        bootstrap = folder / "price.json"
        bootstrap.write_text(json.dumps(config))
        log = open(folder / "price-envoy.log", "ab")  # noqa: SIM115 (closed by the stack)
        stack.callback(log.close)
        self.process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.folder}/out.%p",
             str(envoy_binary(Settings())), "-c", str(bootstrap), "--concurrency", "1",
             "--disable-hot-restart", "--base-id", "8", "--log-level", "warning"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        stack.callback(self._stop)
        deadline = time.monotonic() + STARTUP_S
        while not all(datapath.answers(port) for port in ports):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Envoy under callgrind did not start: see {log.name}")
            time.sleep(1)

    def _stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _control(self, verb: str) -> None:
        subprocess.run(["callgrind_control", verb, str(self.process.pid)], check=True,
                       capture_output=True, timeout=60)

    def zero(self) -> None:
        self._control("--zero")

    def dump(self) -> int:
        """The instructions counted since the last zero, over every thread."""
        for old in self.folder.iterdir():
            old.unlink()
        self._control("--dump")
        total = 0
        for part in self.folder.iterdir():
            found = re.search(r"^summary: (\d+)", part.read_text(errors="replace"), re.M)
            if found is None:
                raise RuntimeError(f"no summary line in {part}")
            total += int(found.group(1))
        return total


def per_request(envoy: Counted, url: str, seconds: float) -> dict[str, float]:
    """One variant's instructions per request, the idle rate taken out."""
    envoy.zero()
    began = time.monotonic()
    time.sleep(seconds / 2)
    idle_rate = envoy.dump() / (time.monotonic() - began)
    envoy.zero()
    began = time.monotonic()
    run = common.wrk(url, "unix.example.com", seconds, CONNECTIONS)
    counted = envoy.dump()
    served = run["requests"]
    if served == 0 or run["status_4xx_5xx"] or run["connect_errors"] or run["read_errors"]:
        raise RuntimeError(f"{url}: wrk saw errors or no requests: {run}")
    net = counted - idle_rate * (time.monotonic() - began)
    return {"instructions": round(net / served), "requests": served,
            "idle_per_s": round(idle_rate)}


def measure(seconds: float, rounds: int) -> dict[str, Any]:
    with common.scratch("price") as (folder, stack):
        sock = common.start_upstreams(folder, stack, "dp")["dp"]
        settings = Settings(sites_dir=folder / "sites", out_dir=folder / "p-out")
        site = common.render_site(settings, "unix",
                                  common.site_text(["unix.example.com"], sock))
        files = common.render_files(settings, [site])
        names = ["minimal", *variants()]
        ports = {name: free_port() for name in names}
        envoy = Counted(folder, stack, reference_config(sock, files, ports),
                        list(ports.values()))
        for name in names:  # connections and caches warm
            common.wrk(f"http://127.0.0.1:{ports[name]}/", "unix.example.com", 1, CONNECTIONS)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                runs[name].append(per_request(envoy, f"http://127.0.0.1:{ports[name]}/",
                                              seconds))
        return summarize(runs, seconds)


def summarize(runs: dict[str, list[dict[str, float]]], seconds: float) -> dict[str, Any]:
    counts = {name: common.median([r["instructions"] for r in found])
              for name, found in runs.items()}
    minimal = counts["minimal"]
    prices = {name: round((counts["ours"] - counts[f"ours without {name}"]) / minimal, 4)
              for name in SETTINGS}
    return {"seconds_per_run": seconds, "rounds": len(runs["minimal"]),
            "connections": CONNECTIONS, "runs": runs,
            "instructions_per_request": counts,
            "vs_minimal": {name: round(count / minimal, 4) for name, count in counts.items()},
            "price_vs_minimal": prices}


def run(full: bool, quick: bool) -> dict[str, Any]:
    missing = [tool for tool in ("valgrind", "callgrind_control", "wrk")
               if shutil.which(tool) is None]
    if missing:
        return common.skipped("price", "Data path price list", f"{', '.join(missing)} not"
                              " installed (apt-get install valgrind wrk)")
    data = measure(3 if quick else 6, 1 if quick else 2)
    common.save("price", data, _markdown(data), _plot(data))
    return data


def _markdown(data: dict[str, Any]) -> str:
    counts, ratios = data["instructions_per_request"], data["vs_minimal"]
    rows = [[name, f"{count:,.0f}", f"{ratios[name]:.3f}",
             f"{data['price_vs_minimal'][name.removeprefix('ours without ')]:+.1%}"
             if name.removeprefix("ours without ") in SETTINGS else "—"]
            for name, count in counts.items()]
    return (f"### Data path price list: Envoy's instructions per request (callgrind, one"
            f" worker, wrk {data['connections']} connections, {data['seconds_per_run']:g} s"
            f" per run, median of {data['rounds']} rounds)\n\n"
            + common.table(["listener", "instructions per request", "vs minimal",
                            "the setting's price (share of minimal)"], rows)
            + f"\nOur listener costs {ratios['ours']:.3f}x the minimal one's instructions;"
            f" without all the settings above, {ratios['ours without all of them']:.3f}x.\n")


def _plot(data: dict[str, Any]) -> Any:
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(8, 4))
    names = list(data["price_vs_minimal"])
    axis.barh(names, [100 * data["price_vs_minimal"][n] for n in names], color="tab:blue")
    axis.axvline(100 * (1 - datapath.TARGET), color="tab:red", linestyle="--",
                 label=f"the whole budget ({1 - datapath.TARGET:.0%})")
    axis.set_xlabel("instructions per request, % of the minimal listener's")
    axis.set_title("What each edge setting of our listener costs Envoy")
    axis.invert_yaxis()
    axis.legend()
    return figure


def summary(data: dict[str, Any]) -> list[list[str]]:
    if "skipped" in data:
        return [["Data path price list", "—", data["skipped"], "—", "—", "—"]]
    counts, ratios = data["instructions_per_request"], data["vs_minimal"]
    dearest = sorted(data["price_vs_minimal"].items(), key=lambda item: -item[1])[:3]
    return [["Data path: Envoy's instructions per request (callgrind), our listener",
             "one Envoy, one worker", f"{counts['ours']:,.0f}",
             f"minimal {counts['minimal']:,.0f}", f"{ratios['ours']:.3f}x; dearest: "
             + ", ".join(f"{name} {price:+.1%}" for name, price in dearest), "—"]]
