"""The validators side by side: Envoy's verdict on a group of new sites from the warm
twin (`validator: twin`) and from one `envoy --mode validate` process, at group sizes
from 1 to 1,000 sites, interleaved; and the twin's resident memory after each size.

This is what `twinning.MAX_TWIN_GROUP` rests on: above it a group goes to a process.
Each group is new sites (new names, so Envoy builds every cluster again), on a twin that
holds the previous group, as it does in the daemon.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bench import common
from controlplane.envoy import twinning
from controlplane.envoy.twinning import Twin
from controlplane.envoy.verifying import Verifier
from controlplane.render.rendering import SiteResources
from controlplane.settings import Settings

GROUPS = (1, 10, 30, 64, 100, 300, 1000)
REPEATS = 7


def _group(settings: Settings, tag: str, size: int) -> list[SiteResources]:
    return [common.render_site(settings, f"{tag}{i:04d}",
                               common.site_text([common.host_of(f"{tag}{i:04d}")],
                                                Path(f"/tmp/{tag}{i:04d}.sock")))
            for i in range(size)]


def _timed(check: Any, group: list[SiteResources]) -> float:
    started = time.perf_counter()
    reason = check(group)
    if reason is not None:
        raise RuntimeError(f"Envoy refused a plain group: {reason}")
    return common.ms(time.perf_counter() - started)


def measure(repeats: int) -> list[dict[str, Any]]:
    rows = []
    with common.scratch("twin") as (folder, stack):
        settings = Settings(out_dir=folder / "out", socket_dirs=())
        twin = Twin(settings, threading.Event())
        stack.callback(twin.stop)
        if not twin.wait_ready(settings, 30):
            raise RuntimeError("the twin did not start")
        process = Verifier(settings)
        for size in GROUPS:
            twin_ms, process_ms = [], []
            for k in range(repeats):
                group = _group(settings, f"g{size}r{k}x", size)
                twin_ms.append(_timed(lambda g: twin.check(settings, g), group))
                process_ms.append(_timed(process._run, group))
            rows.append({"sites": size, "twin_ms": common.median(twin_ms),
                         "process_ms": common.median(process_ms),
                         "twin_rss_mib": round(twin.process.rss_bytes() / 2**20),
                         "twin_restarts": twin.process.starts - 1})
    return rows


def run(full: bool, quick: bool) -> dict[str, Any]:
    rows = measure(2 if quick else REPEATS)
    data = {"groups": rows, "max_twin_group": twinning.MAX_TWIN_GROUP,
            "max_twin_rss_mib": twinning.MAX_TWIN_RSS // 2**20}
    common.save("twin", data, _markdown(data), _plot(data))
    return data


def _markdown(data: dict[str, Any]) -> str:
    rows = [[f"{r['sites']:,}", f"{r['twin_ms']:.1f}", f"{r['process_ms']:.1f}",
             f"{common.ratio(r['twin_ms'], r['process_ms']):.2f}x", r["twin_rss_mib"],
             r["twin_restarts"]] for r in data["groups"]]
    return ("### Envoy's verdict on a group of new sites, p50 (ms)\n\n"
            + common.table(["sites in the group", "twin", "envoy --mode validate",
                            "twin / process", "twin RSS after (MiB)", "twin restarts so far"],
                           rows)
            + f"\nGroups above {data['max_twin_group']} sites go to `--mode validate`; a twin"
            f" above {data['max_twin_rss_mib']} MiB after a check is restarted.\n")


def _plot(data: dict[str, Any]) -> Any:
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    sizes = [r["sites"] for r in data["groups"]]
    axis.plot(sizes, [r["twin_ms"] for r in data["groups"]], marker="o", label="twin")
    axis.plot(sizes, [r["process_ms"] for r in data["groups"]], marker="o",
              label="envoy --mode validate")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("sites in the group")
    axis.set_ylabel("verdict (ms, p50)")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


def summary(data: dict[str, Any]) -> list[list[str]]:
    return [["Envoy's verdict on new sites, p50", f"{r['sites']:,} in the group",
             f"twin {r['twin_ms']:.1f} ms (RSS {r['twin_rss_mib']} MiB)",
             f"envoy --mode validate {r['process_ms']:.1f} ms",
             f"{common.ratio(r['twin_ms'], r['process_ms']):.2f}x", "—"]
            for r in data["groups"] if r["sites"] in (1, 100, 1000)]
