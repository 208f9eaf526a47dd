"""The sites folder as the daemon knows it between passes: each file's checked version
(checked again only when its stat fingerprint, or a file it read, changed), the path
rules (`Fence`) of the last full pass, and the folders worth watching.

A full pass lists and stats the whole folder and builds a new Fence. A targeted pass,
started by events that named only site files (and within `resync_s` of the last full
pass), reads only those files and keeps the Fence: no path moved, since an event in a
watched socket folder, a folder event, or one the watcher cannot place makes the next
pass full. At 10,000 sites that is one file read instead of 10,000 stats and 20,000
resolved paths.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

import structlog

from controlplane.daemon.passes import Outcome
from controlplane.errors import Problem, SitesUnavailable
from controlplane.intake import loading, reading
from controlplane.intake.checking import (
    CERTIFICATE_RECHECK_S,
    Checked,
    check_entry,
    fence_of,
    rescan,
    scan,
    watched_folders,
)
from controlplane.intake.indexes import Indexes
from controlplane.intake.naming import DEFAULTS
from controlplane.settings import Settings

log = structlog.get_logger("controlplane")


class Scanner:
    """What the sites folder held at the last pass, and how to look at it again."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._cache: dict[str, tuple[tuple[int, ...], Checked]] = {}
        self.generation = 0
        """Counts new entries in the cache and the last good store (see socket_folders)."""
        self._folders_key: tuple[int, int, int] | None = None
        self._checked: dict[str, Checked] | None = None
        """The last pass's checked versions: a targeted pass starts from them."""
        self.fence = fence_of(settings)
        """The path rules, built anew at each full pass (see `_targeted`)."""
        self.indexes = Indexes()
        """Who claims each domain, name and upstream, kept across all passes (what
        depends on the fence starts anew with it)."""
        self._full_at = float("-inf")
        self._aliased = False
        """Some site file is a link or has other hard links: every pass is full."""
        self._fresh: list[Checked] | None = None
        """Versions checked in this targeted pass (None: a full pass)."""
        self.loaded: dict[str, Checked] = {}
        """The last good versions as loaded from the state folder at start, before their
        certificates were judged: a file that still holds those bytes is not parsed,
        validated and rendered a second time (10,000 sites: half the restart)."""
        self.rejected: dict[str, str] = {}
        """Render digest -> why Envoy rejected the update that carried it (`hold_back`)."""
        self._ignored: set[str] = set()
        self.on_checked: Callable[[Checked], None] | None = None
        """Told of each version checked anew (not from the cache), as the pass goes."""
        self.envoy_judges = False
        """Envoy's verdict comes before any render goes live: the renders of the daemon's
        own making skip the type checks in Python (`rendering.render_site`)."""
        self.folders: list[str] = []
        """The folders of the sites' sockets and htpasswd files, as written and resolved:
        the daemon watches them, so a symlink planted (or removed) there is judged, and a
        changed htpasswd file applied, at the next pass."""

    def socket_folders(self, last_good: dict[str, Checked]) -> list[str]:
        """Worked out again at every full pass, and in a targeted one when a checked
        version or a last good one came or went and the new versions bring a folder."""
        key = (self.generation, len(self._cache), len(last_good))
        if self._fresh is None or (key != self._folders_key and not set(
                watched_folders(self._fresh)) <= set(self.folders)):
            self.folders = watched_folders(
                [*(c for _, c in self._cache.values()), *last_good.values()])
        self._folders_key = key
        return self.folders

    def scan(self, outcome: Outcome, unfinished: frozenset[str],
             touched: frozenset[str] | None, last_good: dict[str, Checked]) -> dict[
            str, Checked] | None:
        """This pass's checked version of every site file (None: no sites folder, said
        in `outcome`). `last_good` stands in for files written in place and not closed."""
        def check(entry: loading.Entry) -> Checked | None:
            self._aliased = self._aliased or entry.aliased
            if unfinished and os.path.basename(entry.location) in unfinished:
                return self._previous(entry.name, last_good)  # its last version, if any
            return self._check_cached(entry)

        previous, self._checked = self._checked, None  # a pass that fails: the next is full
        self._fresh = [] if self._targeted(touched, previous) else None
        if self._fresh is not None and previous is not None and touched is not None:
            self.fence.seal()  # a path first named now is resolved afresh
            found = rescan(self._settings, previous, touched, check)
            if found is not None:
                for name in set(previous) - set(found):
                    self._cache.pop(name, None)
                self._checked = found
                return found
        return self._scan_all(outcome, check)

    def _scan_all(self, outcome: Outcome,
                  check: Callable[[loading.Entry], Checked | None]) -> dict[str, Checked] | None:
        self._fresh, self.fence = None, fence_of(self._settings)
        self._aliased, self._full_at = _aliased_defaults(self._settings), time.monotonic()
        try:
            scanned = scan(self._settings, check)
        except (FileNotFoundError, NotADirectoryError):
            outcome.errors.append(SitesUnavailable(
                f"{self._settings.sites_dir}: the sites folder is missing; keeping what"
                " serves until it is back"))
            return None
        self._report_ignored(scanned.ignored)
        self._cache = {n: v for n, v in self._cache.items() if n in scanned.checked}
        digests = {c.digest for c in scanned.checked.values()}
        self.rejected = {d: r for d, r in self.rejected.items() if d in digests}
        self._checked = scanned.checked
        return scanned.checked

    @property
    def full_at(self) -> float:
        """When the last full pass began (monotonic; -inf before the first)."""
        return self._full_at

    def _targeted(self, touched: frozenset[str] | None,
                  previous: dict[str, Checked] | None) -> bool:
        """Only the touched files need reading: events named them all, this reconciler
        has a full pass to build on, no site file is a link (an edit through another
        name touches no name of ours), and the resync is not due (it looks at
        everything, for events inotify dropped and for paths outside the watched folders)."""
        return touched is not None and previous is not None and not self._aliased and (
            time.monotonic() - self._full_at < self._settings.resync_s)

    def _report_ignored(self, ignored: list[Problem]) -> None:
        """One log line per ignored entry while it stays, not one per pass."""
        for problem in ignored:
            if problem.file not in self._ignored:
                log.warning("file.ignored", file=problem.file, reason=problem.reason)
        self._ignored = {p.file for p in ignored}

    def _previous(self, name: str, last_good: dict[str, Checked]) -> Checked | None:
        """What was known of a site before its file started being rewritten."""
        cached = self._cache.get(name)
        return cached[1] if cached is not None else last_good.get(name)

    def _check_cached(self, entry: loading.Entry) -> Checked:
        cached = self._cache.get(entry.name)
        if cached is not None and cached[0] == entry.fingerprint and (
                cached[1].source == entry.location) and all(
                reading.fingerprint(path) == seen for path, seen in cached[1].reads) and (
                cached[1].expires_at is None
                or time.time() - cached[1].checked_at < CERTIFICATE_RECHECK_S):
            item = cached[1]
        else:
            item = check_entry(entry, self._settings, self.loaded.pop(entry.name, None),
                               self.envoy_judges)
            self._cache[entry.name] = (entry.fingerprint, item)
            self.generation += 1
            if self._fresh is not None:
                self._fresh.append(item)
            if self.on_checked is not None:
                self.on_checked(item)
        return self._held_back(item)

    def hold_back(self, digest: str, reason: str) -> None:
        """Envoy rejected the update that carried this version: it is not offered again
        until its file changes, in a targeted pass (which reads no other file) too."""
        self.rejected[digest] = reason
        if self._checked is not None:
            self._checked = {n: self._held_back(c) for n, c in self._checked.items()}

    def _held_back(self, item: Checked) -> Checked:
        reason = self.rejected.get(item.digest)
        if reason is None or item.problems:
            return item
        return Checked(name=item.name, source=item.source, digest=item.digest,
                       problems=(Problem(item.source, "envoy", reason),))


def _aliased_defaults(settings: Settings) -> bool:
    """The defaults file is a link, or has other hard links: like a linked site file."""
    try:
        found = os.lstat(os.path.join(settings.sites_dir, DEFAULTS))
    except OSError:
        return False
    return stat.S_ISLNK(found.st_mode) or found.st_nlink > 1
