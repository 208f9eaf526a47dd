"""Data path: requests per second and p99 through Envoy to nginx over a Unix socket, the
same over TCP loopback, side by side, and nginx alone (wrk straight at its TCP port) as
the ceiling; and the project's rendered config against a minimal hand-written one (one
static listener, one route, one STATIC `pipe` cluster, the router alone: the seed blog's)
on the same Envoy binary to the same socket, which prices the constant filter chain
(RBAC, rate limit, CORS, basic auth, compressor, all disabled per route) and the edge
settings.

One nginx (one worker) listens on both `unix:SOCK` and `127.0.0.1:PORT` with the same
answer; two sites point at it, one with `upstream: {socket: ...}` and one with
`upstream: {address: 127.0.0.1:PORT}`, rendered by the daemon's own code and given to
Envoy as files. The three variants alternate, repeated; medians are kept. wrk, Envoy and
nginx share the machine's 2 cores, as they would on a small node. Without nginx the
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
VARIANTS = ("envoy_unix", "envoy_minimal", "envoy_tcp", "nginx_alone_tcp")
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


def _minimal_envoy(folder: Path, stack: ExitStack, sock: Path) -> int:
    """A second Envoy, on the minimal bootstrap; its port once it answers."""
    port = free_port()
    bootstrap = folder / "minimal.json"
    bootstrap.write_text(json.dumps(minimal_bootstrap(sock, port)))
    log = open(folder / "minimal-envoy.log", "ab")  # noqa: SIM115 (closed by the stack)
    stack.callback(log.close)
    process = subprocess.Popen([str(envoy_binary(Settings())), "-c", str(bootstrap),
                                "--disable-hot-restart", "--base-id", "7",
                                "--log-level", "warning"], stdout=log, stderr=log,
                               stdin=subprocess.DEVNULL)
    stack.callback(lambda: (process.terminate(), process.wait(timeout=10)))
    deadline = time.monotonic() + 20
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the minimal Envoy did not start: see {log.name}")
        time.sleep(0.05)
    return port


def _answers(port: int) -> bool:
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
            variants = ("envoy_unix", "envoy_minimal")
        settings = common.Settings(sites_dir=folder / "sites", out_dir=folder / "d-out")
        sites = [common.render_site(settings, "unix", common.site_text(["unix.example.com"],
                                                                        sock))]
        if "envoy_tcp" in variants:
            sites.append(common.render_site(settings, "tcp", common.site_text(
                ["tcp.example.com"], address=f"127.0.0.1:{port}")))
        side = common.start_side(folder, stack, "d", folder / "sites", sites)
        envoy_url = f"http://127.0.0.1:{side.settings.listen.port}/"
        minimal_port = _minimal_envoy(folder, stack, sock)
        targets = {"envoy_unix": (envoy_url, "unix.example.com"),
                   "envoy_minimal": (f"http://127.0.0.1:{minimal_port}/", "unix.example.com"),
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
    # The target's figure pairs the two runs of each round (adjacent in time, so under
    # the same load): run-to-run noise on 2 shared cores is +-15%, more than the 3%.
    data["ours_vs_minimal_rps"] = round(common.median([
        common.ratio(ours["rps"], minimal["rps"])
        for ours, minimal in zip(runs["envoy_unix"], runs["envoy_minimal"], strict=True)]), 3)
    data["ours_vs_minimal_rps_of_medians"] = common.ratio(medians["envoy_unix"]["rps"],
                                                          medians["envoy_minimal"]["rps"])
    data["ours_vs_minimal_p99"] = common.ratio(medians["envoy_unix"]["p99_ms"],
                                               medians["envoy_minimal"]["p99_ms"])
    if "envoy_tcp" in medians:
        data["unix_vs_tcp_rps"] = common.ratio(medians["envoy_unix"]["rps"],
                                               medians["envoy_tcp"]["rps"])
        data["unix_vs_tcp_p99"] = common.ratio(medians["envoy_unix"]["p99_ms"],
                                               medians["envoy_tcp"]["p99_ms"])
    else:
        data["note"] = "nginx is not installed: the stand-in serves the Unix socket only"
    return data


def run(full: bool, quick: bool) -> dict[str, Any]:
    if not common.have_wrk():
        data = {"skipped": "wrk is not installed (apt-get install wrk)"}
        common.save("datapath", data, f"### Data path\n\nSkipped: {data['skipped']}.\n",
                    common.pyplot().figure())
        return data
    data = measure(2 if quick else 5, 1 if quick else 5)
    common.save("datapath", data, _markdown(data), _plot(data))
    return data


LABELS = {"envoy_unix": "Envoy → nginx, Unix socket", "envoy_tcp": "Envoy → nginx, TCP loopback",
          "envoy_minimal": "Envoy (minimal hand-written config) → nginx, Unix socket",
          "nginx_alone_tcp": "nginx alone, TCP (ceiling)"}


def _markdown(data: dict[str, Any]) -> str:
    rows = [[LABELS[name], f"{m['rps']:,.0f}", f"{m['rps_vs_nginx_alone']:.2f}",
             f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}"]
            for name, m in data["medians"].items()]
    tail = (f"\nUnix socket vs TCP through Envoy: {data['unix_vs_tcp_rps']:.2f}x the req/s,"
            f" {data['unix_vs_tcp_p99']:.2f}x the p99." if "unix_vs_tcp_rps" in data
            else f"\n{data['note']}.")
    tail += (f"\nOur rendered config vs the minimal hand-written one, same socket:"
             f" {data['ours_vs_minimal_rps']:.2f}x the req/s (median of the rounds' paired"
             f" ratios; target ≥ 0.97; ratio of the medians"
             f" {data['ours_vs_minimal_rps_of_medians']:.2f}x),"
             f" {data['ours_vs_minimal_p99']:.2f}x the p99.")
    return (f"### Data path: wrk, 1 thread, {data['connections']} connections,"
            f" {data['seconds_per_run']:g} s per run, upstream {data['upstream']}"
            " (medians of the repeats)\n\n" +
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
    rows.append(["Data path: our config vs a minimal hand-written one", "Unix socket",
                 f"{m['envoy_unix']['rps']:,.0f} req/s, p99 {m['envoy_unix']['p99_ms']:.2f} ms",
                 f"minimal {m['envoy_minimal']['rps']:,.0f} req/s,"
                 f" p99 {m['envoy_minimal']['p99_ms']:.2f} ms",
                 f"{data['ours_vs_minimal_rps']:.2f}x req/s (paired by round)", "≥ 0.97x: " + (
                     "met" if data["ours_vs_minimal_rps"] >= 0.97 else "**missed**")])
    if "unix_vs_tcp_rps" in data:
        rows.append(["Data path: Unix socket vs TCP through Envoy", "—",
                     f"{m['envoy_unix']['rps']:,.0f} vs {m['envoy_tcp']['rps']:,.0f} req/s",
                     "TCP loopback", f"{data['unix_vs_tcp_rps']:.2f}x req/s,"
                     f" {data['unix_vs_tcp_p99']:.2f}x p99", "—"])
    return rows
