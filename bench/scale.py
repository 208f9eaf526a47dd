"""Scale: cold start with 100 and 1,000 sites (10,000 with --full), one site changed on a
node of that size, and the daemon's peak memory.

Cold start: Envoy runs on empty files; the daemon starts on a folder of N sites. Timed:
each stage of its first pass (from its `pass` event) and the time from its start to the
first 200 of the last site. Reference, same run: a second Envoy on empty files given the
same N sites as pre-rendered files renamed into place (CDS confirmed, then RDS, to the
first 200 of the last site). One site changed: a new domain and the other upstream, so
both its cluster and its virtual host change; the daemon's own time is every stage but
write+confirm (target under 250 ms on the largest node), shown beside write+confirm and
Envoy's own time to apply the same change. Restart: the daemon stopped and started again
on the same files, nothing changed, timed to the end of its first (confirmed) pass,
against the same Envoy-alone reference. Peak RSS is VmHWM from /proc.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Daemon, ms

SIZES = (100, 1000)
FULL_SIZES = (*SIZES, 10_000)
OWN_TARGET_MS = 100.0
COLD_TARGET = 1.5
"""Cold start to the last site served: at most this many times Envoy alone."""
RESTART_TARGET = 1.2
RSS_TARGET = 1.5
"""The daemon's peak RSS with its validation twin, against Envoy's own."""
STAGES = ("load_validate_render", "verify", "write_confirm")


def measure(size: int, changes: int) -> dict[str, Any]:
    with common.scratch("scale") as (folder, stack):
        socks = common.start_upstreams(folder, stack, "u", "w")
        sites, stage = folder / "sites", folder / "stage"
        sites.mkdir()
        stage.mkdir()
        texts = {f"s{i:05d}": common.site_text([common.host_of(f"s{i:05d}")], socks["u"])
                 for i in range(size)}
        for name, text in texts.items():
            (sites / f"{name}.yaml").write_text(text)
        last = common.host_of(max(texts))
        floor, floor_sites = _floor_side(folder, stack, sites, texts)
        applied = common.apply_files(floor, common.render_files(floor.settings, floor_sites),
                                     serves=last, timeout=300)
        side = common.start_side(folder, stack, "d", sites, [])
        daemon = Daemon(folder, stack, side)
        served = side.probe.until(last, 200, timeout=600)
        first = daemon.wait_pass(0, lambda e: common.count(e.get("added", [])) == size, 600)
        daemon.wait_idle(0, quiet=0.5, timeout=600)
        cold_hwm = common.vm_hwm_kib(daemon.pid)
        missing = [n for n in texts if side.probe.status(common.host_of(n)) != 200]
        result: dict[str, Any] = {
            "sites": size,
            "envoy_apply_ms": {"cds": ms(applied.cds_s), "rds": ms(applied.rds_s),
                               "total": ms(applied.total_s)},
            "daemon_start_to_last_site_ms": ms(served - daemon.started),
            "first_pass_ms": {**{k: first["stages_ms"].get(k) for k in STAGES},
                              "duration": first["duration_ms"]},
            "first_pass_confirmed": first.get("confirmed"),
            "not_served_after_start": len(missing),
            "daemon_vmhwm_mib_cold": round(cold_hwm / 1024, 1),
        }
        result["ratio_start_to_envoy"] = common.ratio(
            result["daemon_start_to_last_site_ms"], result["envoy_apply_ms"]["total"])
        result["change"] = _changes(changes, daemon, side, floor, floor_sites, stage, socks)
        result["daemon_vmhwm_mib"] = round(common.vm_hwm_kib(daemon.pid) / 1024, 1)
        twin = common.twin_pid(side.settings.out_dir)
        result["twin_vmhwm_mib"] = round(common.vm_hwm_kib(twin) / 1024, 1) if twin else 0.0
        result["envoy_vmhwm_mib"] = round(common.vm_hwm_kib(side.envoy.process.pid) / 1024, 1)
        result["restart_ms"] = _restart(folder, stack, daemon, side)
        result["ratio_restart_to_envoy"] = common.ratio(
            result["restart_ms"]["ms"], result["envoy_apply_ms"]["total"])
        return result


def _restart(folder: Path, stack: ExitStack, daemon: Daemon,
             side: common.Side) -> dict[str, Any]:
    """The daemon stopped, then started on the same files: start to its first pass done
    (nothing to write; Envoy's versions read back), and what that pass wrote."""
    daemon.process.stop()
    # A pass that changes nothing is logged at debug.
    again = Daemon(folder, stack, side, ["--log-level", "debug"], tag="-restart")
    first = again.wait_pass(0, lambda e: True, 600)
    return {"ms": ms(time.monotonic() - again.started), "written": first.get("written", []),
            "confirmed": first.get("confirmed"), "first_pass_ms": first["stages_ms"]}


def _floor_side(folder: Path, stack: ExitStack, sites: Path,
                texts: dict[str, str]) -> tuple[common.Side, list[common.SiteResources]]:
    side = common.start_side(folder, stack, "f", sites, [])
    return side, [common.render_site(side.settings, n, t) for n, t in texts.items()]


def _changes(count: int, daemon: Daemon, side: common.Side, floor: common.Side,
             floor_sites: list[common.SiteResources], stage: Path,
             socks: dict[str, Path]) -> dict[str, Any]:
    """Change one site `count` times (a new domain each time, the upstream alternating)."""
    target = floor_sites[len(floor_sites) // 2].name
    samples: list[dict[str, float]] = []
    for j in range(count):
        new_host = f"v{j}.{common.host_of(target)}"
        text = common.site_text([common.host_of(target), new_host],
                                socks["w" if j % 2 == 0 else "u"])
        changed = common.render_site(floor.settings, target, text)
        files = common.render_files(floor.settings, [
            changed if s.name == target else s for s in floor_sites])
        envoy_ms = ms(common.apply_files(floor, files, serves=new_host).total_s)
        since = len(daemon.poll())
        renamed = common.stage_rename(stage, side.settings.sites_dir, target, text)
        served = side.probe.until(new_host, 200)
        event = daemon.wait_pass(since, lambda e: target in e.get("changed", []))
        daemon.wait_idle(since, quiet=0.3)
        stages = event["stages_ms"]
        own = event["duration_ms"] - stages["write_confirm"]
        samples.append({**{k: stages[k] for k in STAGES}, "duration": event["duration_ms"],
                        "own": round(own, 2), "rename_to_200": ms(served - renamed),
                        "envoy_apply": envoy_ms})
    keys = samples[0].keys() if samples else ()
    return {"changes": count, "samples": samples,
            "p50_ms": {k: round(common.median([s[k] for s in samples]), 1) for k in keys}}


def run(full: bool, quick: bool) -> dict[str, Any]:
    sizes = FULL_SIZES if full else SIZES
    repeats = 1 if quick else 3
    changes = 3 if quick else 7
    results = []
    for size in sizes:
        reps = 1 if size >= 10_000 else repeats
        runs = [measure(size, changes if r == reps - 1 else 0) for r in range(reps)]
        results.append(_median_of(runs))
    largest = results[-1]
    own = largest["change"]["p50_ms"]["own"]
    data = {"sizes": results, "target": {
        "rule": f"one site changed on the largest node ({largest['sites']:,} sites):"
                f" the daemon's own time (all but write+confirm) < {OWN_TARGET_MS:g} ms",
        "own_p50_ms": own, "met": own < OWN_TARGET_MS}}
    common.save("scale-full" if full else "scale", data, _markdown(data), _plot(data))
    return data


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median start-to-last-site time; all runs' key numbers kept."""
    ordered = sorted(runs, key=lambda r: r["daemon_start_to_last_site_ms"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["change"] = runs[-1]["change"]
    chosen["daemon_vmhwm_mib"] = runs[-1]["daemon_vmhwm_mib"]
    chosen["twin_vmhwm_mib"] = runs[-1].get("twin_vmhwm_mib", 0.0)
    chosen["repeats"] = [{"daemon_start_to_last_site_ms": r["daemon_start_to_last_site_ms"],
                          "envoy_apply_ms": r["envoy_apply_ms"]["total"],
                          "first_pass_ms": r["first_pass_ms"]} for r in runs]
    return chosen


def _markdown(data: dict[str, Any]) -> str:
    cold, change = [], []
    for r in data["sizes"]:
        first = r["first_pass_ms"]
        cold.append([f"{r['sites']:,}", " / ".join(f"{first[k]:.0f}" for k in STAGES),
                     f"{first['duration']:.0f}", f"{r['daemon_start_to_last_site_ms']:.0f}",
                     f"{r['envoy_apply_ms']['total']:.0f}", f"{r['ratio_start_to_envoy']:.1f}x",
                     f"{r['restart_ms']['ms']:.0f} ({r['ratio_restart_to_envoy']:.1f}x)",
                     f"{r['daemon_vmhwm_mib']:.0f}"])
        p50 = r["change"]["p50_ms"]
        if p50:
            change.append([f"{r['sites']:,}", r["change"]["changes"], f"{p50['own']:.0f}",
                           " / ".join(f"{p50[k]:.0f}" for k in STAGES),
                           f"{p50['envoy_apply']:.0f}", f"{p50['rename_to_200']:.0f}"])
    target = data["target"]
    verdict = "met" if target["met"] else (
        f"missed by {target['own_p50_ms'] - OWN_TARGET_MS:.1f} ms")
    return ("### Cold start (ms; medians of the repeats)\n\n" +
            common.table(["sites", "first pass: load+validate+render / verify / write+confirm",
                          "first pass total", "daemon start to last site served",
                          "Envoy alone (same files)", "ratio",
                          "restart, nothing changed (ratio)", "daemon peak RSS (MiB)"], cold) +
            "\n### One site changed (ms, p50)\n\n" +
            common.table(["sites", "changes", "daemon's own time (all but write+confirm)",
                          "load+validate+render / verify / write+confirm",
                          "Envoy alone (same change)", "rename to first 200"], change) +
            f"\nTarget ({target['rule']}): {verdict} (p50 {target['own_p50_ms']:.0f} ms).\n")


def _plot(data: dict[str, Any]) -> Any:
    plt = common.pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = data["sizes"]
    bars = [(f"daemon: {stage}", [r["first_pass_ms"][stage] for r in sizes]) for stage in STAGES]
    bars += [("Envoy alone, same files", [r["envoy_apply_ms"]["total"] for r in sizes]),
             ("daemon start to last site served",
              [r["daemon_start_to_last_site_ms"] for r in sizes])]
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars):
        left.bar([p + (i - (len(bars) - 1) / 2) * width for p in range(len(sizes))],
                 [v / 1000 for v in values], width, label=label)
    left.set_xticks(range(len(sizes)), [f"{r['sites']:,}" for r in sizes])
    left.set_yscale("log")
    left.set_xlabel("sites")
    left.set_ylabel("seconds (log scale)")
    left.set_title("Cold start: first pass by stage vs Envoy alone")
    left.legend(fontsize=7)
    right.bar([f"{r['sites']:,}" for r in sizes], [r["daemon_vmhwm_mib"] for r in sizes],
              color="tab:purple")
    right.set_xlabel("sites")
    right.set_ylabel("MiB")
    right.set_title("Daemon peak RSS (VmHWM)")
    return figure


def summary(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in data["sizes"]:
        first = r["first_pass_ms"]
        rows.append(["Cold start: daemon start to last site served", f"{r['sites']:,} sites",
                     f"{r['daemon_start_to_last_site_ms']:,.0f} ms (first pass: "
                     + " / ".join(f"{first[k]:,.0f}" for k in STAGES) + " ms)",
                     f"Envoy alone {r['envoy_apply_ms']['total']:,.0f} ms",
                     f"{r['ratio_start_to_envoy']:.1f}x",
                     _verdict(r["ratio_start_to_envoy"], COLD_TARGET, "x Envoy")])
    for r in data["sizes"]:
        rows.append(["Restart, nothing changed: start to first pass done", f"{r['sites']:,} sites",
                     f"{r['restart_ms']['ms']:,.0f} ms (wrote {len(r['restart_ms']['written'])}"
                     " files)", f"Envoy alone {r['envoy_apply_ms']['total']:,.0f} ms",
                     f"{r['ratio_restart_to_envoy']:.1f}x",
                     _verdict(r["ratio_restart_to_envoy"], RESTART_TARGET, "x Envoy")])
    for r in data["sizes"]:
        both = r["daemon_vmhwm_mib"] + r.get("twin_vmhwm_mib", 0.0)
        ratio = common.ratio(both, r["envoy_vmhwm_mib"])
        rows.append(["Daemon peak RSS (VmHWM), validation twin included", f"{r['sites']:,} sites",
                     f"{both:.0f} MiB (daemon {r['daemon_vmhwm_mib']:.0f},"
                     f" twin {r.get('twin_vmhwm_mib', 0.0):.0f})",
                     f"Envoy {r['envoy_vmhwm_mib']:.0f} MiB", f"{ratio:.2f}x",
                     _verdict(ratio, RSS_TARGET, "x Envoy's") if r["sites"] >= 10_000 else "—"])
    largest = data["sizes"][-1]
    p50 = largest["change"]["p50_ms"]
    target = data["target"]
    verdict = (f"< {OWN_TARGET_MS:g} ms: met" if target["met"] else
               f"< {OWN_TARGET_MS:g} ms: **missed** by {p50['own'] - OWN_TARGET_MS:.1f} ms")
    rows.append(["One site changed: daemon's own time (all but write+confirm), p50",
                 f"{largest['sites']:,} sites",
                 f"{p50['own']:.0f} ms (write+confirm {p50['write_confirm']:.0f} ms)",
                 f"Envoy alone applies the change in {p50['envoy_apply']:.0f} ms",
                 f"{common.ratio(p50['duration'], p50['envoy_apply']):.1f}x (whole pass)",
                 verdict])
    return rows


def _verdict(ratio: float, target: float, unit: str) -> str:
    if ratio <= target:
        return f"≤ {target:g}{unit}: met"
    return f"≤ {target:g}{unit}: **missed** by {ratio - target:.2f}x"
