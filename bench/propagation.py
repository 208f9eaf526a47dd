"""Propagation: from the rename of a new site file into the folder to the first 200
through Envoy, with 10, 100 and 1,000 sites present; 3 rounds over the sizes of 40
changes each, pooled (120 samples per size).

Reference, in the same run and interleaved change by change: Envoy's own floor, a second
Envoy given the same change as pre-rendered files renamed into place (CDS, confirmed,
then RDS), timed to the first 200 the same way. Each change is a new site (a new cluster
and a new virtual host, a new content hash, so `envoy --mode validate` runs for it, as it
would for a real new site); it is removed again, untimed, so the size stays put.
Target: daemon p50 at most floor p50 + 100 ms at 100 sites.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Daemon, ms

SIZES = (10, 100, 1000)
TARGET_SIZE = 100
TARGET_OVER_FLOOR_MS = 100.0
ROUNDS, CHANGES = 3, 40


Samples = tuple[list[float], list[float], list[dict[str, float]]]


def measure(size: int, changes: int) -> Samples:
    """`changes` new sites, one at a time: (floor ms, daemon ms, daemon pass stages)."""
    with common.scratch("prop") as (folder, stack):
        sock = common.start_upstreams(folder, stack, "u")["u"]
        sites, stage = folder / "sites", folder / "stage"
        sites.mkdir()
        stage.mkdir()
        texts = {f"s{i:05d}": common.site_text([common.host_of(f"s{i:05d}")], sock)
                 for i in range(size)}
        for name, text in texts.items():
            (sites / f"{name}.yaml").write_text(text)
        floor_side, floor_sites = _side(folder, stack, "f", sites, texts)
        daemon_side, _ = _side(folder, stack, "d", sites, texts)
        daemon = Daemon(folder, stack, daemon_side)
        daemon.wait_pass(0, lambda e: e.get("confirmed") is True, 120)
        floor_ms: list[float] = []
        daemon_ms: list[float] = []
        stages: list[dict[str, float]] = []
        for k in range(changes):
            name = f"p{k:03d}"
            text = common.site_text([common.host_of(name)], sock)
            for which in ("floor", "daemon") if k % 2 == 0 else ("daemon", "floor"):
                if which == "floor":
                    floor_ms.append(_floor_change(floor_side, floor_sites, name, text))
                else:
                    daemon_ms.append(_daemon_change(daemon, daemon_side, stage, name, text,
                                                    stages))
        return floor_ms, daemon_ms, stages


def _side(folder: Path, stack: ExitStack, tag: str, sites: Path,
          texts: dict[str, str]) -> tuple[common.Side, list[common.SiteResources]]:
    settings = common.Settings(sites_dir=sites, out_dir=folder / f"{tag}-out")
    initial = [common.render_site(settings, n, t) for n, t in texts.items()]
    return common.start_side(folder, stack, tag, sites, initial), initial


def _floor_change(side: common.Side, base: list[common.SiteResources], name: str,
                  text: str) -> float:
    """Envoy alone: the files with the new site renamed in; then back to the base."""
    new = common.render_site(side.settings, name, text)
    applied = common.apply_files(side, common.render_files(side.settings, [*base, new]),
                                 serves=common.host_of(name))
    common.apply_files(side, common.render_files(side.settings, base), removal=True)
    return ms(applied.total_s)


def _daemon_change(daemon: Daemon, side: common.Side, stage: Path, name: str, text: str,
                   stages: list[dict[str, float]]) -> float:
    """The daemon: rename the site file in, time the first 200; then remove it and wait
    until the daemon has confirmed the removal."""
    since = len(daemon.poll())
    renamed = common.stage_rename(stage, side.settings.sites_dir, name, text)
    served = side.probe.until(common.host_of(name), 200)
    event = daemon.wait_pass(since, lambda e: name in e.get("added", []))
    stages.append({**event["stages_ms"], "duration_ms": event["duration_ms"]})
    if event.get("confirmed") is not True:
        daemon.wait_pass(since, lambda e: e.get("confirmed") is True)
    since = len(daemon.poll())
    os.unlink(side.settings.sites_dir / f"{name}.yaml")
    daemon.wait_pass(since, lambda e: name in e.get("removed", []) and e.get("confirmed"))
    return ms(served - renamed)


def _summary(size: int, floor_ms: list[float], daemon_ms: list[float],
             stages: list[dict[str, float]]) -> dict[str, Any]:
    keys = sorted({k for s in stages for k in s})
    return {
        "sites": size,
        "changes": len(daemon_ms),
        "daemon_ms": {"p50": common.quantile(daemon_ms, 0.5),
                      "p99": common.quantile(daemon_ms, 0.99), "samples": daemon_ms},
        "floor_ms": {"p50": common.quantile(floor_ms, 0.5),
                     "p99": common.quantile(floor_ms, 0.99), "samples": floor_ms},
        "ratio_p50": common.ratio(common.quantile(daemon_ms, 0.5),
                                  common.quantile(floor_ms, 0.5)),
        "ratio_p99": common.ratio(common.quantile(daemon_ms, 0.99),
                                  common.quantile(floor_ms, 0.99)),
        "over_floor_p50_ms": round(common.quantile(daemon_ms, 0.5)
                                   - common.quantile(floor_ms, 0.5), 1),
        "daemon_stages_p50_ms": {k: common.median([s.get(k, 0.0) for s in stages])
                                 for k in keys},
    }


def run(full: bool, quick: bool) -> dict[str, Any]:
    """Rounds over all sizes (so a burst of load from elsewhere on the machine does not
    land on one size only); the samples of the rounds are pooled per size."""
    rounds, changes = (1, 8) if quick else (ROUNDS, CHANGES)
    pooled: dict[int, Samples] = {size: ([], [], []) for size in SIZES}
    round_p50: dict[int, list[float]] = {size: [] for size in SIZES}
    for _ in range(rounds):
        for size in SIZES:
            floor_ms, daemon_ms, stages = measure(size, changes)
            pooled[size][0].extend(floor_ms)
            pooled[size][1].extend(daemon_ms)
            pooled[size][2].extend(stages)
            round_p50[size].append(round(common.median(daemon_ms)
                                         - common.median(floor_ms), 1))
    sizes = {size: {**_summary(size, *pooled[size]), "rounds": rounds,
                    "over_floor_p50_ms_per_round": round_p50[size]} for size in SIZES}
    target = sizes[TARGET_SIZE]
    met = target["over_floor_p50_ms"] <= TARGET_OVER_FLOOR_MS
    data = {"sizes": list(sizes.values()), "target": {
        "rule": f"p50 <= floor p50 + {TARGET_OVER_FLOOR_MS:g} ms at {TARGET_SIZE} sites",
        "over_floor_p50_ms": target["over_floor_p50_ms"], "met": met}}
    common.save("propagation", data, _markdown(data), _plot(data))
    return data


def _markdown(data: dict[str, Any]) -> str:
    rows = []
    for r in data["sizes"]:
        stages = r["daemon_stages_p50_ms"]
        rows.append([f"{r['sites']:,}", r["changes"],
                     f"{r['daemon_ms']['p50']:.0f} / {r['daemon_ms']['p99']:.0f}",
                     f"{r['floor_ms']['p50']:.0f} / {r['floor_ms']['p99']:.0f}",
                     f"{r['ratio_p50']:.1f}x / {r['ratio_p99']:.1f}x",
                     f"+{r['over_floor_p50_ms']:.0f} (rounds: "
                     + ", ".join(f"+{v:.0f}" for v in r["over_floor_p50_ms_per_round"]) + ")",
                     " / ".join(f"{stages.get(k, 0):.0f}" for k in (
                         "load_validate_render", "verify", "write_confirm"))])
    target = data["target"]
    verdict = "met" if target["met"] else (
        f"missed by {target['over_floor_p50_ms'] - TARGET_OVER_FLOOR_MS:.1f} ms")
    return ("### Propagation: rename of a new site file to its first 200 (ms;"
            f" {data['sizes'][0]['rounds']} rounds pooled)\n\n" +
            common.table(["sites", "changes", "daemon p50 / p99", "Envoy floor p50 / p99",
                          "ratio p50 / p99", "p50 over floor",
                          "daemon stages p50: load+validate+render / verify / write+confirm"],
                         rows) +
            f"\nTarget ({target['rule']}): {verdict}.\n")


def _plot(data: dict[str, Any]) -> Any:
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    labels, boxes = [], []
    for r in data["sizes"]:
        labels += [f"{r['sites']:,}\nfloor", f"{r['sites']:,}\ndaemon"]
        boxes += [r["floor_ms"]["samples"], r["daemon_ms"]["samples"]]
    axis.boxplot(boxes, whis=(1, 99), showfliers=True)
    axis.set_xticks(range(1, len(labels) + 1), labels)
    axis.set_ylabel("rename to first 200 (ms)")
    axis.set_title("Propagation of a new site: daemon vs Envoy's own floor")
    axis.grid(axis="y", alpha=0.3)
    return figure


def summary(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in data["sizes"]:
        target = "—"
        if r["sites"] == TARGET_SIZE:
            over = r["over_floor_p50_ms"]
            target = (f"p50 ≤ floor + {TARGET_OVER_FLOOR_MS:g} ms: "
                      + (f"met (+{over:.0f} ms)" if over <= TARGET_OVER_FLOOR_MS else
                         f"**missed** by {over - TARGET_OVER_FLOOR_MS:.1f} ms (+{over:.1f} ms)"))
        rows.append(["Propagation: rename to first 200, p50 / p99", f"{r['sites']:,} sites",
                     f"{r['daemon_ms']['p50']:.0f} / {r['daemon_ms']['p99']:.0f} ms",
                     f"Envoy floor {r['floor_ms']['p50']:.0f} / {r['floor_ms']['p99']:.0f} ms",
                     f"{r['ratio_p50']:.1f}x / {r['ratio_p99']:.1f}x", target])
    return rows
