"""Bursts: 1,000 site files dropped into the watched folder at once (renamed in from a
folder beside it, as fast as a loop can), with Envoy and the daemon running.

Counted from the daemon's `pass` events: passes and file rewrites (its `written` lists);
timed: from the first rename until Envoy serves every one of them (the last-renamed site
is polled to its first 200, then every site is checked). Reference, same run: Envoy's
own time to take the same 1,000 sites as pre-rendered files (CDS confirmed, then RDS).
Each repeat uses new names (new content hashes, so nothing comes from a cache); between
repeats the sites are removed again and the daemon settles.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Daemon, ms

SIZE = 1000


def measure(repeats: int, size: int = SIZE) -> dict[str, Any]:
    with common.scratch("burst") as (folder, stack):
        sock = common.start_upstreams(folder, stack, "u")["u"]
        sites, stage = folder / "sites", folder / "stage"
        sites.mkdir()
        stage.mkdir()
        floor = common.start_side(folder, stack, "f", sites, [])
        empty = common.render_files(floor.settings, [])
        side = common.start_side(folder, stack, "d", sites, [])
        daemon = Daemon(folder, stack, side)
        _wait_ready(side)
        runs = []
        for r in range(repeats):
            texts = {f"b{r}-{i:04d}": common.site_text([common.host_of(f"b{r}-{i:04d}")], sock)
                     for i in range(size)}
            resources = [common.render_site(floor.settings, n, t) for n, t in texts.items()]
            applied = common.apply_files(floor, common.render_files(floor.settings, resources),
                                         serves=common.host_of(max(texts)), timeout=300)
            common.apply_files(floor, empty, removal=True, timeout=300)
            runs.append({**_burst(daemon, side, stage, texts),
                         "envoy_apply_ms": ms(applied.total_s)})
            _clear(daemon, sites, texts)
        return _summary(runs, size)


def _wait_ready(side: common.Side) -> None:
    status = side.settings.state / "status.json"
    deadline = time.monotonic() + 60
    while not (status.exists() and json.loads(status.read_text())["last_pass"].get(
            "confirmed")):
        if time.monotonic() > deadline:
            raise TimeoutError("the daemon did not confirm its first pass")
        time.sleep(0.02)


def _burst(daemon: Daemon, side: common.Side, stage: Path, texts: dict[str, str]) -> dict[
        str, Any]:
    for name, text in texts.items():
        (stage / f"{name}.yaml").write_text(text)
    since = len(daemon.poll())
    names = sorted(texts)
    started = time.monotonic()
    for name in names:
        os.replace(stage / f"{name}.yaml", side.settings.sites_dir / f"{name}.yaml")
    renamed = time.monotonic()
    done = side.probe.until(common.host_of(names[-1]), 200, timeout=300)
    late = [n for n in names if side.probe.status(common.host_of(n)) != 200]
    for name in late:
        done = max(done, side.probe.until(common.host_of(name), 200, timeout=300))
    daemon.wait_idle(since, quiet=1.5, timeout=300)
    passes = daemon.poll()[since:]
    writes = Counter(kind for event in passes for kind in event.get("written", []))
    return {"rename_loop_ms": ms(renamed - started), "all_served_ms": ms(done - started),
            "late_after_last": len(late), "passes": len(passes),
            "rewrites": sum(writes.values()), "rewrites_by_file": dict(sorted(writes.items())),
            "sites_per_pass": [common.count(e.get("added", [])) for e in passes],
            "pass_ms": [e["duration_ms"] for e in passes]}


def _clear(daemon: Daemon, sites: Path, texts: dict[str, str]) -> None:
    since = len(daemon.poll())
    for name in texts:
        os.unlink(sites / f"{name}.yaml")
    daemon.wait_idle(since, quiet=1.0, timeout=300)


def _summary(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    chosen = sorted(runs, key=lambda r: r["all_served_ms"])[len(runs) // 2]
    return {"sites": size, "repeats": len(runs), "runs": runs,
            "median": {**chosen, "ratio_to_envoy": common.ratio(chosen["all_served_ms"],
                                                                chosen["envoy_apply_ms"])}}


def run(full: bool, quick: bool) -> dict[str, Any]:
    data = measure(1 if quick else 3)
    common.save("burst", data, _markdown(data), _plot(data))
    return data


def _markdown(data: dict[str, Any]) -> str:
    rows = [[i + 1, r["passes"], r["rewrites"],
             ", ".join(f"{k} {v}" for k, v in r["rewrites_by_file"].items()),
             f"{r['rename_loop_ms']:.0f}", f"{r['all_served_ms']:.0f}",
             f"{r['envoy_apply_ms']:.0f}",
             f"{common.ratio(r['all_served_ms'], r['envoy_apply_ms']):.1f}x"]
            for i, r in enumerate(data["runs"])]
    return (f"### Burst: {data['sites']:,} site files dropped at once\n\n" +
            common.table(["repeat", "passes", "file rewrites", "by file",
                          "rename loop (ms)", "first rename to all served (ms)",
                          "Envoy alone, same files (ms)", "ratio"], rows) +
            f"\nMedian: {data['median']['passes']} pass(es), {data['median']['rewrites']}"
            f" rewrites, all served in {data['median']['all_served_ms']:.0f} ms"
            f" ({data['median']['ratio_to_envoy']:.1f}x Envoy's own apply).\n")


def _plot(data: dict[str, Any]) -> Any:
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    labels = [f"repeat {i + 1}" for i in range(len(data["runs"]))]
    served = [r["all_served_ms"] / 1000 for r in data["runs"]]
    envoy = [r["envoy_apply_ms"] / 1000 for r in data["runs"]]
    positions = range(len(labels))
    axis.bar([p - 0.2 for p in positions], served, 0.4, label="daemon: drop to all served")
    axis.bar([p + 0.2 for p in positions], envoy, 0.4, label="Envoy alone, same files")
    for p, r in zip(positions, data["runs"], strict=True):
        axis.annotate(f"{r['passes']} pass(es)\n{r['rewrites']} rewrites",
                      (p - 0.2, r["all_served_ms"] / 1000), ha="center", va="bottom",
                      fontsize=7)
    axis.set_xticks(list(positions), labels)
    axis.set_ylabel("seconds")
    axis.set_title(f"{data['sites']:,} site files dropped at once")
    axis.legend(fontsize=8)
    return figure


def summary(data: dict[str, Any]) -> list[list[str]]:
    m = data["median"]
    return [["Burst: files dropped at once", f"{data['sites']:,} files",
             f"{m['passes']} pass(es), {m['rewrites']} file rewrites,"
             f" all served in {m['all_served_ms']:,.0f} ms",
             f"Envoy alone {m['envoy_apply_ms']:,.0f} ms", f"{m['ratio_to_envoy']:.1f}x", "—"]]
