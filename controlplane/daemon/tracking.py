"""The upstreams of the serving sites, followed between passes: what each socket is
(`probing`) and what Envoy's own health checks say of each endpoint.

The reconciler hands the tracker the serving versions after each pass (endpoints are
worked out again only for versions that changed), and the loop asks it to `refresh`
whenever it comes round. A path is looked at when due: a socket that is not up every
second (a freshly started upstream is seen as soon as it listens), one that is up every
`UP_RECHECK_S` with a connect (a server killed without removing its socket shows
`refused` then), and every path at the end of each pass without a connect unless the
file changed (an event in a socket folder starts a pass). Envoy's health verdicts come
from `/clusters` (`envoy.health`), at most every `HEALTH_READ_S`, bounded in time.

A site's report is the `upstream` entry of its status: the worst state of its sockets,
and per endpoint its state, since when, Envoy's health verdict and a hint. A change is
logged once (`upstream.down`, `upstream.up`).
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from controlplane.daemon import statusfile
from controlplane.envoy.health import HealthReader
from controlplane.errors import EnvoyUnavailable
from controlplane.intake import probing
from controlplane.intake.checking import Checked, fence_of
from controlplane.intake.indexes import replaced
from controlplane.intake.paths import Fence
from controlplane.intake.probing import Followed
from controlplane.settings import Settings

log = structlog.get_logger("controlplane")

UP_RECHECK_S = 10.0
"""A socket found up is connected to again this often: a server killed without removing
its socket (no inotify event) shows `refused` within this; the upstream sees an accept
and a close every 10 s, nothing more."""
DOWN_RECHECK_S = 1.0
"""A socket that is not up is looked at this often (for most states, a stat only)."""
FRESH_RECHECK_S = 0.1
"""A socket created moments ago that refused is tried again this soon: its server binds
(creating the file, which wakes the daemon) a moment before it listens."""
FRESH_S = 2.0
HEALTH_READ_S = 1.0
"""Envoy's health verdicts are read this often while some site has health checks."""
HEALTH_BACKOFF_S = 5.0
RECENT_S = 2.0
"""A folder changed this recently is looked into at each pass even with the same mtime:
timestamps are coarse (a jiffy on ext4), so a removal and a new socket within one tick
leave the mtime as it was."""
MAX_LOGGED = 20
"""Endpoint changes logged one by one in one look; the rest are counted in one line."""
MAX_FILTER = 8000
"""Characters of the cluster-name filter sent to Envoy; past it, every cluster is read."""


@dataclass(slots=True)
class _Seen:
    probe: probing.Probe
    probed_at: float
    """When it was last looked at (monotonic)."""
    changed_at: float
    """When its state last changed (monotonic), and the same as Unix time in `since`."""
    since: float


@dataclass(slots=True, kw_only=True)
class Tracker:
    settings: Settings | None = None
    health: HealthReader | None = None
    """Where Envoy's health verdicts come from (None: no admin socket). Before Envoy is
    up a read fails, and is tried again after HEALTH_BACKOFF_S."""
    _sites: dict[str, Followed] = field(default_factory=dict)
    _users: dict[str, list[str]] = field(default_factory=dict)
    """Socket path -> the sites that name it."""
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _fenced: dict[str, float] = field(default_factory=dict)
    """Paths the fence refused at their last look (not probed), and when: looked at
    again after DOWN_RECHECK_S, not at every round (the next pass reports them)."""
    _folders: dict[str, tuple[int, int, int] | None] = field(default_factory=dict)
    """Folder -> (device, inode, mtime) when its sockets were last looked at: an entry
    created, removed or renamed in it changes its mtime."""
    _health: dict[str, dict[str, str]] = field(default_factory=dict)
    """Cluster -> endpoint -> `healthy` | `unhealthy` | `pending`, as Envoy last said."""
    _health_at: float = float("-inf")
    _reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    _versions: dict[str, Checked] = field(default_factory=dict)  # what _sites came from
    _handed: dict[str, dict[str, Any]] = field(default_factory=dict)  # `moved_reports`

    def __post_init__(self) -> None:
        if self.health is None and self.settings is not None and self.settings.admin_socket:
            self.health = HealthReader(self.settings)

    def follow(self, sites: dict[str, Followed]) -> None:
        """The serving sites' endpoints after a pass (what is no longer named is dropped)."""
        self._refollow(sites, set(sites) | set(self._sites))

    def _refollow(self, sites: Mapping[str, Followed], names: set[str]) -> None:
        """Follow `sites` for these names; a name they lack is no longer followed."""
        emptied = set()
        for name in names:
            old = self._sites.pop(name, None)
            for path in dict.fromkeys(old.sockets if old is not None else ()):
                users = self._users[path]
                users.remove(name)
                if not users:
                    del self._users[path]
                    emptied.add(path)
            new = sites.get(name)
            if new is None:
                self._reports.pop(name, None)
                continue
            self._sites[name] = new
            for path in dict.fromkeys(new.sockets):
                bisect.insort(self._users.setdefault(path, []), name)
        for path in emptied - self._users.keys():
            self._seen.pop(path, None)
            self._fenced.pop(path, None)

    def due_in(self, now: float | None = None) -> float:
        """Seconds until some path or the health verdicts are due (inf: nothing to do)."""
        now = time.monotonic() if now is None else now
        times = [self._due(path, now) for path in self._users]
        if self._checked():
            times.append(self._health_at + HEALTH_READ_S)
        return max(0.0, min(times) - now) if times else float("inf")

    def _due(self, path: str, now: float) -> float:
        seen = self._seen.get(path)
        if seen is None:
            return self._fenced.get(path, float("-inf")) + DOWN_RECHECK_S
        if seen.probe.state == probing.UP:
            return seen.probed_at + UP_RECHECK_S
        fresh = seen.probe.state == probing.REFUSED and now - seen.changed_at < FRESH_S
        return seen.probed_at + (FRESH_RECHECK_S if fresh else DOWN_RECHECK_S)

    def refresh(self, fence: Fence, everything: bool = False) -> set[str]:
        """Look at the paths that are due, and with `everything` (the end of a pass) also
        at every path whose folder changed (connecting only to new files); read Envoy's
        verdicts when due. Returns the sites whose report changed."""
        now = time.monotonic()
        folders = self._moved_folders() if everything else set()
        changed = set()
        for path in sorted(self._users):
            due = self._due(path, now) <= now
            if (due or path not in self._seen or os.path.dirname(path) in folders) and (
                    self._look(path, fence, due, now)):
                changed.add(path)
        sites = {n for p in changed for n in self._users[p]}
        sites |= set(self._sites) - set(self._reports)
        if self._checked() and self._health_at + HEALTH_READ_S <= now and self._read_health(now):
            sites |= {n for n, f in self._sites.items() if f.checked_clusters}
        return self._report_sites(sites)

    def after_pass(self, serving: dict[str, Checked]) -> Callable[[str], dict[str, Any] | None]:
        """Follow the endpoints of the versions a pass serves, look at every path (the
        pass's events may have changed any), and give the report of each site."""
        moved = replaced(serving, self._versions)
        if moved:  # only the sites whose version is another object cost
            self._refollow({n: probing.followed(serving[n].uses, serving[n].resources)
                            for n in moved if n in serving}, moved)
            self._versions = dict(serving)
        self.refresh(self._fence(), everything=True)
        return self.report

    def refresh_status(self, status: statusfile.StatusFile,
                       changed: Callable[[list[tuple[str, str, bool]]], None]) -> None:
        """Between passes: look at what is due (with a fence built now), put the sites
        whose upstream changed into the status file and tell `changed` (the metrics)."""
        if self.due_in() > 0:
            return
        found = self.refresh(self._fence())
        if found:
            status.set_upstreams({name: self.report(name) for name in found})
            changed(self.rows())

    def _fence(self) -> Fence:
        assert self.settings is not None, "a tracker in a daemon knows its settings"
        return fence_of(self.settings)

    def _moved_folders(self) -> set[str]:
        moved = set()
        for folder in {os.path.dirname(p) for p in self._users}:
            try:
                found = os.stat(folder)
                identity: tuple[int, int, int] | None = (found.st_dev, found.st_ino,
                                                         found.st_mtime_ns)
            except OSError:
                identity = None
            recent = identity is not None and time.time() - identity[2] / 1e9 < RECENT_S
            if recent or self._folders.get(folder, ()) != identity:
                moved.add(folder)
            self._folders[folder] = identity
        return moved

    def _look(self, path: str, fence: Fence, connect: bool, now: float) -> bool:
        """Look at one path; True when its state changed."""
        seen = self._seen.get(path)
        probe = probing.look(path, fence, connect, None if seen is None else seen.probe)
        if probe is None:  # the fence refuses it now: the next pass reports why
            if seen is not None:
                seen.probed_at = now
            else:
                self._fenced[path] = now
            return False
        self._fenced.pop(path, None)
        if seen is None or seen.probe.state != probe.state:
            self._seen[path] = _Seen(probe=probe, probed_at=now, changed_at=now,
                                     since=time.time())
            return True
        if probe is not seen.probe:  # looked at again, not merely found unchanged
            seen.probe, seen.probed_at = probe, now
        return False

    def _checked(self) -> list[str]:
        return sorted({c for f in self._sites.values() for c in f.checked_clusters})

    def _read_health(self, now: float) -> bool:
        """Envoy's verdicts, bounded in time; True when they changed."""
        if self.health is None:
            found: dict[str, dict[str, str]] = {}
        else:
            try:
                found = self.health.read(self._checked(), MAX_FILTER)
            except EnvoyUnavailable as exc:  # keep the last verdicts; ask again later
                log.debug("upstream.health.unread", error=str(exc))
                self._health_at = now + HEALTH_BACKOFF_S - HEALTH_READ_S
                return False
        self._health_at = now
        changed, self._health = found != self._health, found
        return changed

    def _report_sites(self, names: set[str]) -> set[str]:
        changed, logged = set(), 0
        for name in sorted(names):
            report = self._report(self._sites[name])
            old = self._reports.get(name)
            if report != old:
                logged += self._log_changes(name, old, report, logged >= MAX_LOGGED)
                self._reports[name] = report
                changed.add(name)
        if logged > MAX_LOGGED:
            log.warning("upstream.changes", more=logged - MAX_LOGGED,
                        detail="more upstream changes than are logged one by one; see the"
                        " status")
        return changed

    def _report(self, site: Followed) -> dict[str, Any]:
        endpoints: dict[str, dict[str, Any]] = {}
        for path in site.sockets:
            seen = self._seen.get(path)
            if seen is None:
                continue
            entry: dict[str, Any] = {"state": seen.probe.state, "since": _iso(seen.since)}
            if seen.probe.state != probing.UP:
                entry["hint"] = probing.hint(seen.probe.state, path, seen.probe.detail)
            endpoints[path] = entry
        for endpoint in (*site.sockets, *site.addresses):
            verdicts = [self._health[c][endpoint] for c in site.checked_clusters
                        if endpoint in self._health.get(c, {})]
            if verdicts:
                health = next((v for v in ("unhealthy", "pending") if v in verdicts), "healthy")
                endpoints.setdefault(endpoint, {})["health"] = health
        states = [e["state"] for e in endpoints.values() if "state" in e]
        return {"state": probing.worst(states), "endpoints": endpoints}

    def report(self, name: str) -> dict[str, Any] | None:
        """The `upstream` entry of one site's status (None: it is not followed)."""
        report = self._reports.get(name)
        return report if report is None or report["endpoints"] else None

    def moved_reports(self) -> set[str]:
        """The sites whose report came, went or changed since the last call."""
        moved = replaced(self._reports, self._handed)
        self._handed = dict(self._reports)
        return moved

    def rows(self) -> list[tuple[str, str, bool]]:
        """(site, endpoint, up) for each followed endpoint: up when its socket accepts
        (TCP endpoints are not probed) and Envoy, where it checks health, finds it healthy."""
        return [(name, endpoint, up(entry)) for name, report in sorted(self._reports.items())
                for endpoint, entry in sorted(report["endpoints"].items())]

    def _log_changes(self, name: str, old: dict[str, Any] | None, new: dict[str, Any],
                     quiet: bool) -> int:
        """Log each endpoint whose state or health changed (unless `quiet`: only count
        them); a first look that finds it up is not news. Returns how many."""
        before = {} if old is None else old["endpoints"]
        count = 0
        for endpoint, entry in sorted(new["endpoints"].items()):
            was = before.get(endpoint)
            if (was is None and up(entry)) or (was is not None and (
                    was.get("state"), was.get("health")) == (entry.get("state"),
                                                             entry.get("health"))):
                continue
            count += 1
            if quiet:
                continue
            if up(entry):
                log.info("upstream.up", site=name, endpoint=endpoint, **_fields(entry))
            else:
                log.warning("upstream.down", site=name, endpoint=endpoint, **_fields(entry))
        return count


def up(entry: dict[str, Any]) -> bool:
    """An endpoint's report says it takes requests."""
    return bool(entry.get("state", probing.UP) == probing.UP
                and entry.get("health", "healthy") == "healthy")


def _fields(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k in ("state", "health", "hint")}


def _iso(seconds: float) -> str:
    return statusfile.iso_time(seconds)
