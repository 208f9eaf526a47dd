"""The status file as text for people: the table `controlplane status` prints, and
durations as `1m ago`.
"""

from __future__ import annotations

from typing import Any

from controlplane.daemon.statusfile import iso_time, parse_time


def table(document: dict[str, Any], now: float) -> str:
    """The status file as a table for people: one line per site with its state and since
    when, then the last pass."""
    rows = [("SITE", "STATE", "SINCE", "SERVING", "UPSTREAM", "PROBLEMS")]
    hints: list[str] = []
    for name, site in document.get("sites", {}).items():
        problems = "; ".join(_message(p) for p in site["problems"]) or "-"
        upstream, found = _upstream(site.get("upstream"))
        rows.append((name, site["state"], _when(site.get("changed_at"), now),
                     site["serving"] or "-", upstream, problems))
        hints.extend(f"  {name}: {line}" for line in found)
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
             for r in rows]
    if hints:
        lines += ["", "upstreams not serving:", *hints]
    last = document.get("last_pass") or {}
    if last:
        confirmed = {True: "confirmed by Envoy", False: "NOT confirmed by Envoy",
                     None: "not confirmed (no admin socket)"}[last["confirmed"]]
        lines.append("")
        lines.append(f"last pass: {_when(last.get('at'), now)}, {confirmed};"
                     f" versions {last['versions']}")
        lines.extend(f"  error: {e}" for e in last["errors"])
    return "\n".join(lines)


def _message(problem: Any) -> str:
    return str(problem["message"]) if isinstance(problem, dict) else str(problem)


def _when(at: Any, now: float) -> str:
    seconds = parse_time(at)
    if seconds is None:
        return "-"
    return f"{iso_time(seconds)[:19]}Z ({ago(now - seconds)})"


def ago(seconds: float) -> str:
    """3s ago, 5m ago, 2h ago, 3d ago."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _upstream(report: Any) -> tuple[str, list[str]]:
    """A site's upstream in a word (`up`, `missing`, `up, 1 unhealthy`), and a line per
    endpoint that does not serve, with its hint."""
    if not isinstance(report, dict):
        return "-", []
    lines, unhealthy = [], 0
    for endpoint, entry in sorted((report.get("endpoints") or {}).items()):
        state, health = entry.get("state"), entry.get("health")
        if health not in (None, "healthy"):
            unhealthy += 1
            lines.append(f"{endpoint}: Envoy's health check: {health}")
        if state not in (None, "up"):
            lines.append(f"{endpoint}: {state}: {entry.get('hint', '')}")
    word = str(report.get("state") or "-")
    return (f"{word}, {unhealthy} unhealthy" if unhealthy else word), lines
