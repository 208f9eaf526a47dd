"""The status file and the last-good store: what the daemon knows, kept on disk.

`STATE/status.json` says, per site, whether its file is valid, which version serves,
its problems (objects with file, line, field, reason) and when it last changed (ISO
8601, UTC); and, for the last pass, when it ran, what was applied and whether Envoy
confirmed it. `STATE/sites/NAME.yaml` holds the last
good bytes of each serving site (mode 0600), so a restart with a broken file still
serves that site's last good version. `controlplane status` prints the file as a table
(`liveness` adds whether the daemon that wrote it is alive).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controlplane.errors import Problem
from controlplane.writing import STATE_MODE, ensure_folder, sync_folder, write_atomic

STATUS_FILE = "status.json"
LAST_GOOD_DIR = "sites"
MAX_TEXT = 1000
"""Characters kept of one problem or error in the status file and the log (the rest is
cut, saying how much): a hostile file cannot make either grow without bound."""
MAX_ENTRIES = 50
"""Problems kept per site, and errors per pass; then one line says how many more."""


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def clip_all(texts: list[str], limit: int = MAX_ENTRIES) -> list[str]:
    """At most `limit` clipped entries, then `and N more`."""
    kept = [clip(t) for t in texts[:limit]]
    return [*kept, f"and {len(texts) - limit} more"] if len(texts) > limit else kept


def clip_problems(problems: list[Problem], limit: int = MAX_ENTRIES) -> list[Problem]:
    """At most `limit` problems, each reason clipped, then one saying how many more."""
    if not problems:
        return []
    kept = [p if len(p.reason) <= MAX_TEXT else dataclasses.replace(p, reason=clip(p.reason))
            for p in problems[:limit]]
    if len(problems) > limit:
        kept.append(Problem(problems[0].file, "", f"and {len(problems) - limit} more"))
    return kept


@dataclass(slots=True, kw_only=True)
class SiteStatus:
    state: str
    """`serving` (Envoy confirmed it runs this version) | `serving-last-good` (the file is
    broken; its last good version serves) | `pending` (written, not confirmed yet: Envoy
    down, slow or unable to bind a listener, or the output not writable) | `invalid`
    (nothing serves)."""
    file: str
    serving: str | None = None
    """Content hash of the version Envoy serves (or was given)."""
    problems: list[Problem] = field(default_factory=list)
    changed_at: float = 0.0
    warnings: list[Problem] = field(default_factory=list)
    """What serves but should be looked at: a certificate that expires soon or does not
    cover a domain, a route that never matches, a world-writable socket folder."""
    certificate_expiry: float | None = None
    """When the serving version's certificate expires (Unix time), for TLS sites."""
    upstream: dict[str, Any] | None = None
    """`state`, the worst of its sockets', and per endpoint its `state`, `since`, a `hint`
    and Envoy's `health` verdict (README "Upstreams")."""


@dataclass(slots=True, kw_only=True)
class PassStatus:
    at: float
    added: list[str]
    changed: list[str]
    removed: list[str]
    invalid: list[str]
    written: list[str]
    confirmed: bool | None
    errors: list[str]
    versions: dict[str, str]


class StatusFile:
    """The status file of one daemon, kept between passes (and across the reconcilers a
    reload builds). A site whose status is unchanged keeps its object, its `changed_at`
    and its serialised line (10,000 sites: ~300 ms to serialise them all)."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self.sites: dict[str, SiteStatus] = {}
        self._json = "{}"
        self._lines: dict[str, tuple[SiteStatus, str]] = {}
        self._order: list[str] = []
        self._place: dict[str, int] = {}
        self._out: list[str] = []
        """The lines of the sites part, in `_order`; `_place`: a site's index in it."""
        self._last: PassStatus | None = None

    def update(self, found: dict[str, SiteStatus],
               upstream: Callable[[str], Any] = lambda _: None,
               among: set[str] | None = None) -> None:
        """This pass's status of every site, with the `upstream` of each serving one. One
        whose state, version and problems stay keeps its `changed_at`. `among`: the only
        sites whose status (as an object) or upstream may differ from the last update;
        the others are left as they are (None: any may)."""
        if among is None:
            sites: dict[str, SiteStatus] = {}
            names: Iterable[str] = found
            changed = set(found) != set(self.sites)
        else:
            sites, names, changed = dict(self.sites), [n for n in among if n in found], False
            for name in among - set(names):
                changed = sites.pop(name, None) is not None or changed
        for name in names:
            new = found[name]
            report, old = upstream(name) if new.serving else None, self.sites.get(name)
            if new is old:  # the pass kept it (`recording`): only its upstream may move
                sites[name] = old if report == old.upstream else dataclasses.replace(
                    old, upstream=report)
                changed = changed or sites[name] is not old
                continue
            new.upstream = report
            same = old is not None and (old.state, old.serving, old.problems) == (
                new.state, new.serving, new.problems)
            if same and old is not None and (
                    old.warnings, old.certificate_expiry, old.upstream) == (
                    new.warnings, new.certificate_expiry, new.upstream):
                sites[name] = old
                continue
            if same and old is not None:
                new.changed_at = old.changed_at
            sites[name] = new
            changed = True
        self.sites = sites
        if changed:
            self._json = self._sites_json(among)

    def write(self, last_pass: PassStatus) -> None:
        """The status file from the sites' status and this pass."""
        self._last = last_pass
        write_status(self._state_dir, self._json, last_pass)

    def set_upstreams(self, reports: dict[str, dict[str, Any] | None]) -> None:
        """Between passes: new `upstream` entries of sites, written with the last pass."""
        names = set(reports) & set(self.sites)
        if self._last is None or not names:
            return
        for name in names:
            self.sites[name] = dataclasses.replace(self.sites[name], upstream=reports[name])
        self._json = self._sites_json(names)
        self.write(self._last)

    def _sites_json(self, among: set[str] | None) -> str:
        """The `sites` part of the status file, one line per site, sorted. Each site's
        line is kept with the SiteStatus it was made from, to reuse while unchanged;
        when no site came or went, only the lines of `among` are looked at."""
        sites, lines = self.sites, self._lines
        if among is None or len(self._out) != len(sites) or any(
                (n in sites) != (n in lines) for n in among):
            self._order = sorted(sites)
            self._place = {name: place for place, name in enumerate(self._order)}
            self._out = [""] * len(self._order)
            among = set(sites)
            for name in [n for n in lines if n not in sites]:
                del lines[name]
        for name in among & sites.keys():
            site, cached = sites[name], lines.get(name)
            if cached is None or cached[0] is not site:
                cached = (site, f"  {json.dumps(name)}: "
                                f"{json.dumps(_site_dict(site), sort_keys=True)}")
                lines[name] = cached
            self._out[self._place[name]] = cached[1]
        return "{\n" + ",\n".join(self._out) + "\n}" if self._out else "{}"

    def certificate_expiries(self) -> dict[str, float]:
        """When each serving TLS site's certificate expires (Unix time)."""
        return {name: site.certificate_expiry for name, site in self.sites.items()
                if site.certificate_expiry is not None and site.serving is not None}

    def site_states(self) -> dict[str, int]:
        """How many sites are in each state after the last pass."""
        counts: dict[str, int] = {}
        for site in self.sites.values():
            counts[site.state] = counts.get(site.state, 0) + 1
        return counts


def _site_dict(site: SiteStatus) -> dict[str, Any]:
    return {"state": site.state, "file": site.file, "serving": site.serving,
            "problems": [problem_dict(p) for p in site.problems],
            "warnings": [problem_dict(w, "warning") for w in site.warnings],
            "certificate_expiry": (None if site.certificate_expiry is None
                                   else iso_time(site.certificate_expiry)),
            "upstream": site.upstream,
            "changed_at": iso_time(site.changed_at)}


def problem_dict(problem: Problem, severity: str | None = None) -> dict[str, Any]:
    """A problem for JSON readers: where, which field, why, and the one-line message."""
    found: dict[str, Any] = {"file": problem.file, "line": problem.line, "field": problem.field,
                             "reason": problem.reason, "message": str(problem)}
    if severity is not None:
        found["severity"] = severity
    return found


def iso_time(seconds: float) -> str:
    """A Unix time as ISO 8601 in UTC, to the millisecond: 2026-05-04T12:00:00.000Z."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: Any) -> float | None:
    """The Unix time of an ISO 8601 string (or a number, as older files held)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def write_status(state_dir: Path, sites: str, last_pass: PassStatus) -> None:
    """The status file from the serialised `sites` part and this pass."""
    ensure_folder(state_dir, 0o700)
    document = {**asdict(last_pass), "at": iso_time(last_pass.at)}
    data = (f'{{"last_pass": {json.dumps(document, sort_keys=True)},\n'
            f'"sites": {sites}}}\n').encode()
    # Not fsync'd: the status is a report written anew every pass, not state to recover.
    write_atomic(state_dir / STATUS_FILE, data, STATE_MODE, durable=False)


def read_status(state_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((state_dir / STATUS_FILE).read_text())
    return loaded


def save_last_good(state_dir: Path, contents: dict[str, bytes]) -> None:
    """Each file is replaced atomically; one fsync of the folder covers them all (an
    fsync per file cost 1.2-1.6 ms a site: 12 s for a 10,000-site cold start)."""
    if not contents:
        return
    folder = state_dir / LAST_GOOD_DIR
    ensure_folder(folder, 0o700)
    for name, content in contents.items():
        write_atomic(folder / f"{name}.yaml", content, STATE_MODE, durable=False)
    sync_folder(folder)


def drop_last_good(state_dir: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / LAST_GOOD_DIR / f"{name}.yaml")


def load_last_good(state_dir: Path) -> dict[str, bytes]:
    folder = state_dir / LAST_GOOD_DIR
    found: dict[str, bytes] = {}
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as listing:
        for item in listing:
            if item.name.endswith(".yaml") and item.is_file(follow_symlinks=False):
                found[item.name.removesuffix(".yaml")] = Path(item.path).read_bytes()
    return found
