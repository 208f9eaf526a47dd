"""Data path: requests per second and p99 through Envoy to nginx over a Unix socket, the
same over TCP loopback, side by side, and nginx alone (wrk straight at its TCP port) as
the ceiling; and the project's rendered config against a minimal hand-written one (one
listener, one route, one STATIC `pipe` cluster, the router alone: the seed blog's).

The comparison with the minimal config runs on one Envoy (the reference Envoy, on a
static bootstrap) holding three listeners to the same socket: the minimal one; ours, the
listener and routes the daemon renders for the site, byte for byte but for the address
and the routes given inline instead of by RDS; and ours without the constant filter chain
(custom response, RBAC, rate limit, CORS, header mutation, ext_authz, basic auth,
compressor, all installed disabled so that the listener never changes). Same process,
same workers, so ours/minimal prices our whole listener (filter chain and edge settings)
and ours/ours-without prices the filter chain alone. The daemon's own Envoy (its
bootstrap, its files) is measured as well, against the minimal listener of the other
process.

One nginx (one worker) listens on both `unix:SOCK` and `127.0.0.1:PORT` with the same
answer; two sites point at it, one with `upstream: {socket: ...}` and one with
`upstream: {address: 127.0.0.1:PORT}`, rendered by the daemon's own code and given to
Envoy as files. The variants alternate, repeated, and each round's runs are adjacent in
time: the target's figures are the medians of each round's paired ratios. wrk, the Envoys
and nginx share the machine's 2 cores, as they would on a small node. Without nginx the
stand-in serves the Unix socket only, and the TCP rows are left out (the results say so).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import common
from controlplane.demo import servers
from controlplane.envoy.verifying import envoy_binary
from controlplane.settings import Settings
from tests.parts import free_port

CONNECTIONS = 8
VARIANTS = ("envoy_unix", "envoy_minimal", "ours_same_envoy", "ours_without_filters",
            "envoy_tcp", "nginx_alone_tcp")
SAME_ENVOY = ("envoy_minimal", "ours_same_envoy", "ours_without_filters")
"""The variants served by the reference Envoy, one listener each."""
TARGET = 0.97
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
       ".HttpConnectionManager")


def minimal_bootstrap(sock: Path, port: int) -> dict[str, Any]:
    """The hand-written reference: what one would write for one blog on a socket."""
    return {"static_resources": {
        "listeners": [{"name": "minimal", "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {"@type": HCM, "stat_prefix": "minimal",
                                 "route_config": {"virtual_hosts": [{
                                     "name": "blog", "domains": ["*"], "routes": [{
                                         "match": {"prefix": "/"},
                                         "route": {"cluster": "blog"}}]}]},
                                 "http_filters": [{"name": "envoy.filters.http.router",
                                                   "typed_config": {"@type": ROUTER}}]}}]}]}],
        "clusters": [{"name": "blog", "type": "STATIC", "connect_timeout": "1s",
                      "load_assignment": {"cluster_name": "blog", "endpoints": [{
                          "lb_endpoints": [{"endpoint": {"address": {"pipe": {
                              "path": str(sock)}}}}]}]}}]}}


def inline_listener(files: dict[str, bytes]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The daemon's rendered listener, its routes given inline instead of by RDS, and its
    clusters: static resources, byte for byte as rendered but for that."""
    listener, = json.loads(files["lds"])["resources"]
    routes, = json.loads(files["rds"])["resources"]
    clusters = json.loads(files["cds"])["resources"]
    for resource in (listener, routes, *clusters):
        del resource["@type"]
    del routes["name"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del manager["rds"]
    manager["route_config"] = routes
    return listener, clusters


def ours_static(files: dict[str, bytes], ports: dict[str, int]) -> dict[str, Any]:
    """Our listener (`inline_listener`) on `ports["ours_same_envoy"]`, and the same
    without the disabled filters on `ports["ours_without_filters"]` (the router alone)."""
    listeners: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    for variant in ("ours_same_envoy", "ours_without_filters"):
        listener, clusters = inline_listener(files)
        listener["name"] = variant
        listener["address"] = {"socket_address": {"address": "127.0.0.1",
                                                  "port_value": ports[variant]}}
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        if variant == "ours_without_filters":
            manager["http_filters"] = [f for f in manager["http_filters"]
                                       if not f.get("disabled")]
            if [f["name"] for f in manager["http_filters"]] != ["envoy.filters.http.router"]:
                raise AssertionError(f"a filter left enabled: {manager['http_filters']}")
        listeners.append(listener)
    return {"listeners": listeners, "clusters": clusters}


def _reference_envoy(folder: Path, stack: ExitStack, sock: Path,
                     ours: dict[str, bytes]) -> dict[str, int]:
    """The reference Envoy: the minimal bootstrap, with our listener twice beside it
    (`ours_static`); the port of each variant once every one answers."""
    ports = {name: free_port() for name in SAME_ENVOY}
    config = minimal_bootstrap(sock, ports["envoy_minimal"])
    extra = ours_static(ours, ports)
    for kind in ("listeners", "clusters"):
        config["static_resources"][kind] += extra[kind]
    bootstrap = folder / "minimal.json"
    bootstrap.write_text(json.dumps(config))
    log = open(folder / "minimal-envoy.log", "ab")  # noqa: SIM115 (closed by the stack)
    stack.callback(log.close)
    process = subprocess.Popen([str(envoy_binary(Settings())), "-c", str(bootstrap),
                                "--disable-hot-restart", "--base-id", "7",
                                "--log-level", "warning"], stdout=log, stderr=log,
                               stdin=subprocess.DEVNULL)
    stack.callback(lambda: (process.terminate(), process.wait(timeout=10)))
    deadline = time.monotonic() + 20
    while not all(answers(port) for port in ports.values()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the reference Envoy did not start: see {log.name}")
        time.sleep(0.05)
    return ports


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _nginx(folder: Path, stack: ExitStack, sock: Path, port: int) -> None:
    """nginx on the socket and on 127.0.0.1:PORT, answering like the demo's servers."""
    started = servers.start("dp", sock, servers.NGINX, folder / "nginx", tcp_port=port)
    stack.callback(started.stop)


def measure(seconds: float, repeats: int) -> dict[str, Any]:
    with common.scratch("dp") as (folder, stack):
        sock, port = folder / "dp.sock", free_port()
        kind = servers.available_kind()
        if kind == servers.NGINX:
            _nginx(folder, stack, sock, port)
            variants = VARIANTS
        else:
            sock = common.start_upstreams(folder, stack, "dp")["dp"]
            variants = ("envoy_unix", *SAME_ENVOY)
        settings = common.Settings(sites_dir=folder / "sites", out_dir=folder / "d-out")
        sites = [common.render_site(settings, "unix", common.site_text(["unix.example.com"],
                                                                        sock))]
        if "envoy_tcp" in variants:
            sites.append(common.render_site(settings, "tcp", common.site_text(
                ["tcp.example.com"], address=f"127.0.0.1:{port}")))
        side = common.start_side(folder, stack, "d", folder / "sites", sites)
        envoy_url = f"http://127.0.0.1:{side.settings.listen.port}/"
        ports = _reference_envoy(folder, stack, sock, common.render_files(settings, sites[:1]))
        targets = {"envoy_unix": (envoy_url, "unix.example.com"),
                   **{name: (f"http://127.0.0.1:{ports[name]}/", "unix.example.com")
                      for name in SAME_ENVOY},
                   "envoy_tcp": (envoy_url, "tcp.example.com"),
                   "nginx_alone_tcp": (f"http://127.0.0.1:{port}/", None)}
        for name in variants:
            url, host = targets[name]
            common.wrk(url, host, 1, CONNECTIONS)  # warm up connections and caches
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for r in range(repeats):
            order = variants if r % 2 == 0 else tuple(reversed(variants))
            for name in order:
                url, host = targets[name]
                runs[name].append(common.wrk(url, host, seconds, CONNECTIONS))
        return _summary(runs, kind, seconds)


def _summary(runs: dict[str, list[dict[str, Any]]], kind: str, seconds: float) -> dict[str, Any]:
    medians = {name: {k: round(common.median([r[k] for r in found]), 3)
                      for k in ("rps", "p50_ms", "p99_ms")} for name, found in runs.items()}
    ceiling = medians.get("nginx_alone_tcp", {}).get("rps", 0.0)
    for values in medians.values():
        values["rps_vs_nginx_alone"] = common.ratio(values["rps"], ceiling)
    data: dict[str, Any] = {"upstream": kind, "connections": CONNECTIONS,
                            "seconds_per_run": seconds, "medians": medians, "runs": runs,
                            "errors": sum(r["status_4xx_5xx"] + r["connect_errors"]
                                          + r["read_errors"] + r["timeouts"]
                                          for found in runs.values() for r in found)}
    # The target's figures pair the runs of each round (adjacent in time, so under the
    # same load): run-to-run noise on 2 shared cores is +-15%, more than the 3%.
    for key, (name, reference) in PAIRS.items():
        data[key] = _paired(runs, name, reference)
        data[f"{key}_p99"] = common.ratio(medians[name]["p99_ms"], medians[reference]["p99_ms"])
    if "envoy_tcp" in medians:
        data["unix_vs_tcp_rps"] = common.ratio(medians["envoy_unix"]["rps"],
                                               medians["envoy_tcp"]["rps"])
        data["unix_vs_tcp_p99"] = common.ratio(medians["envoy_unix"]["p99_ms"],
                                               medians["envoy_tcp"]["p99_ms"])
    else:
        data["note"] = "nginx is not installed: the stand-in serves the Unix socket only"
    return data


PAIRS = {"ours_vs_minimal": ("ours_same_envoy", "envoy_minimal"),
         "filter_chain": ("ours_same_envoy", "ours_without_filters"),
         "daemon_envoy_vs_minimal": ("envoy_unix", "envoy_minimal")}
"""Each figure's (variant, reference): ours against the minimal listener in one Envoy
(the target's), ours against itself without the disabled filters (the filter chain's
price), and the daemon's own Envoy against the minimal listener of the other process."""


def _paired(runs: dict[str, list[dict[str, Any]]], name: str, reference: str) -> float:
    """The median of each round's req/s ratio."""
    return round(common.median([common.ratio(one["rps"], other["rps"]) for one, other
                                in zip(runs[name], runs[reference], strict=True)]), 3)


def run(full: bool, quick: bool) -> dict[str, Any]:
    if not common.have_wrk():
        return common.skipped("datapath", "Data path", "wrk is not installed (apt-get install wrk)")
    data = measure(1 if quick else 2, 2 if quick else 12)
    common.save("datapath", data, _markdown(data), _plot(data))
    return data


LABELS = {"envoy_unix": "Envoy → nginx, Unix socket", "envoy_tcp": "Envoy → nginx, TCP loopback",
          "envoy_minimal": "reference Envoy, minimal hand-written listener → Unix socket",
          "ours_same_envoy": "reference Envoy, our rendered listener → Unix socket",
          "ours_without_filters": "reference Envoy, ours without the disabled filters",
          "nginx_alone_tcp": "nginx alone, TCP (ceiling)"}


def _markdown(data: dict[str, Any]) -> str:
    rows = [[LABELS[name], f"{m['rps']:,.0f}", f"{m['rps_vs_nginx_alone']:.2f}",
             f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}"]
            for name, m in data["medians"].items()]
    tail = (f"\nUnix socket vs TCP through Envoy: {data['unix_vs_tcp_rps']:.2f}x the req/s,"
            f" {data['unix_vs_tcp_p99']:.2f}x the p99." if "unix_vs_tcp_rps" in data
            else f"\n{data['note']}.")
    tail += (f"\nIn one Envoy, our rendered listener vs the minimal hand-written one:"
             f" {data['ours_vs_minimal']:.2f}x the req/s (median of the rounds' paired"
             f" ratios; target ≥ {TARGET}), {data['ours_vs_minimal_p99']:.2f}x the p99."
             f" Ours vs ours without the disabled filters (the filter chain's price):"
             f" {data['filter_chain']:.2f}x the req/s, {data['filter_chain_p99']:.2f}x the"
             f" p99. The daemon's Envoy vs the minimal listener of the reference Envoy:"
             f" {data['daemon_envoy_vs_minimal']:.2f}x the req/s.")
    return (f"### Data path: wrk, 1 thread, {data['connections']} connections,"
            f" {data['seconds_per_run']:g} s per run, {len(data['runs']['envoy_unix'])}"
            f" rounds, upstream {data['upstream']} (medians of the rounds)\n\n" +
            common.table(["path", "req/s", "vs nginx alone", "p50 ms", "p99 ms"], rows) +
            tail + f" Errors and non-2xx in all runs: {data['errors']}.\n")


def _plot(data: dict[str, Any]) -> Any:
    plt = common.pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(data["medians"])
    labels = [LABELS[n].replace(", ", "\n") for n in names]
    left.bar(labels, [data["medians"][n]["rps"] for n in names], color="tab:blue")
    left.set_ylabel("req/s (median)")
    left.set_title("Throughput")
    right.bar(labels, [data["medians"][n]["p99_ms"] for n in names], color="tab:orange")
    right.set_ylabel("p99 latency (ms, median)")
    right.set_title("Tail latency")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=7)
    return figure


def nginx_available() -> bool:
    return shutil.which("nginx") is not None


def summary(data: dict[str, Any]) -> list[list[str]]:
    if "skipped" in data:
        return [["Data path", "—", data["skipped"], "—", "—", "—"]]
    m = data["medians"]
    rows = []
    for name in ("envoy_unix", "envoy_tcp"):
        if name in m:
            rows.append([f"Data path: {LABELS[name]}", f"upstream {data['upstream']}",
                         f"{m[name]['rps']:,.0f} req/s, p99 {m[name]['p99_ms']:.2f} ms",
                         f"nginx alone {m['nginx_alone_tcp']['rps']:,.0f} req/s,"
                         f" p99 {m['nginx_alone_tcp']['p99_ms']:.2f} ms"
                         if "nginx_alone_tcp" in m else "—",
                         f"{m[name]['rps_vs_nginx_alone']:.2f}x (req/s)", "—"])
    verdict = (f"≥ {TARGET}x: met" if data["ours_vs_minimal"] >= TARGET else
               f"≥ {TARGET}x: **missed** by {TARGET - data['ours_vs_minimal']:.2f}")
    rows.append(["Data path: our listener vs a minimal hand-written one, in one Envoy",
                 "Unix socket", f"{m['ours_same_envoy']['rps']:,.0f} req/s,"
                 f" p99 {m['ours_same_envoy']['p99_ms']:.2f} ms",
                 f"minimal {m['envoy_minimal']['rps']:,.0f} req/s,"
                 f" p99 {m['envoy_minimal']['p99_ms']:.2f} ms",
                 f"{data['ours_vs_minimal']:.2f}x req/s (paired by round)", verdict])
    rows.append(["Data path: the constant filter chain (all disabled), in one Envoy",
                 "Unix socket", f"{m['ours_same_envoy']['rps']:,.0f} req/s",
                 f"without it {m['ours_without_filters']['rps']:,.0f} req/s",
                 f"{data['filter_chain']:.2f}x req/s (paired by round)", "—"])
    rows.append(["Data path: the daemon's Envoy vs the minimal listener", "Unix socket",
                 f"{m['envoy_unix']['rps']:,.0f} req/s", f"minimal (other Envoy)"
                 f" {m['envoy_minimal']['rps']:,.0f} req/s",
                 f"{data['daemon_envoy_vs_minimal']:.2f}x req/s (paired by round)", "—"])
    if "unix_vs_tcp_rps" in data:
        rows.append(["Data path: Unix socket vs TCP through Envoy", "—",
                     f"{m['envoy_unix']['rps']:,.0f} vs {m['envoy_tcp']['rps']:,.0f} req/s",
                     "TCP loopback", f"{data['unix_vs_tcp_rps']:.2f}x req/s,"
                     f" {data['unix_vs_tcp_p99']:.2f}x p99", "—"])
    return rows
