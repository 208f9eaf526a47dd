"""The daemon's memory between passes, and one pass: scan -> check -> select -> publish
-> confirm -> record.

Level-triggered: every pass looks at the whole folder and compares it with what serves,
so a lost event costs latency, never correctness. Work is incremental: a file whose
stat fingerprint (or, failing that, content hash) is unchanged is not parsed again,
and Envoy re-checks only renders it has not passed before. The last good version of
each site is kept in the state folder across restarts.
"""

from __future__ import annotations

import os
import threading
import time

import structlog

from controlplane.daemon import certifying, recording, statusfile, tracking
from controlplane.daemon.passes import Clock, Outcome, blocked_by
from controlplane.envoy.files import Confirmation
from controlplane.envoy.publishing import Publisher
from controlplane.envoy.verifying import Verifier
from controlplane.errors import (
    EnvoyCannotBind,
    EnvoyUnavailable,
    OutputError,
    Problem,
    SitesUnavailable,
)
from controlplane.intake import loading, reading
from controlplane.intake.checking import (
    CERTIFICATE_RECHECK_S,
    Checked,
    check_content,
    check_entry,
    fence_of,
    scan,
    watched_folders,
)
from controlplane.intake.selecting import Selection, select
from controlplane.render import snapshot
from controlplane.settings import Settings

log = structlog.get_logger("controlplane")


class Reconciler:
    """Keeps what the daemon knows between passes; `run_pass` is one reconciliation."""

    def __init__(self, settings: Settings, *, verifier: Verifier | None,
                 ask_envoy: bool, stop: threading.Event,
                 issuer: certifying.Issuer | None = None) -> None:
        """`ask_envoy`: confirm through Envoy's admin socket (once Envoy is up); `issuer`
        orders ACME certificates beside the passes."""
        self._settings = settings
        self._issuer = issuer
        self._verifier = verifier
        self._publisher = (Publisher.asking(settings, stop) if ask_envoy
                           else Publisher(settings, None, stop))
        self._cache: dict[str, tuple[tuple[int, ...], Checked]] = {}
        self._generation = 0
        """Counts new entries in the cache and the last good store (see _socket_folders)."""
        self._folders_key: tuple[int, int, int] | None = None
        self._rejected: dict[str, str] = {}
        self._ignored: set[str] = set()
        self.socket_folders: list[str] = []
        """The folders of the sites' sockets and htpasswd files, as written and resolved:
        the daemon watches them, so a symlink planted (or removed) there is judged, and a
        changed htpasswd file applied, at the next pass."""
        self.status = statusfile.StatusFile(settings.state)
        self.upstreams = tracking.Tracker(settings=settings)
        self._confirmed: dict[str, str] = {}
        """Site -> the digest Envoy last confirmed running (a fully confirmed apply)."""
        self._envoy_ok = False
        """The last apply reached Envoy and was written (no timeout, refusal, output error)."""
        self._blocked: dict[str, list[str]] = {}
        """Sites kept from serving by a listener Envoy cannot bind, with the cause."""
        self.last_good = self._load_last_good()
        self._serving: dict[str, Checked] = dict(self.last_good)
        """What serves, as far as the daemon knows: at start, what served before it stopped
        (a rejection must blame only what changed since)."""

    def _load_last_good(self) -> dict[str, Checked]:
        found = {}
        for name, content in statusfile.load_last_good(self._settings.state).items():
            source = str(self._settings.sites_dir / f"{name}.yaml")
            item = check_content(name, source, content, self._settings)
            if not item.problems:
                found[name] = item
        return found

    def carry_status(self, previous: Reconciler) -> None:
        """Take over what `previous` reported per site (a reload or Envoy coming up
        builds a new reconciler): a site whose state stays keeps its `changed_at`."""
        self.status, self.upstreams = previous.status, previous.upstreams

    def envoy_runs_ours(self) -> bool:
        """Envoy answers and runs the versions last written (True without an admin
        socket, or when there is nothing confirmed to compare)."""
        return self._publisher.runs_ours()

    def run_pass(self, unfinished: frozenset[str] = frozenset()) -> Outcome:
        """One reconciliation. `unfinished`: file names being written in place and not
        closed yet; their previous version stands in for them (a new one waits)."""
        outcome = Outcome()
        clock = Clock(outcome.durations_ms)
        checked = self._scan(outcome, unfinished)
        clock.lap("load_validate_render")
        if checked is None:  # no sites folder: what serves stays, if its paths still hold
            checked = dict(self._serving or self.last_good)
            selection = select(checked, checked, None, None, fence_of(self._settings))
        else:
            selection = select(checked, self.last_good, self._verifier,
                               self._settings.max_certificates, fence_of(self._settings))
        clock.lap("verify")
        self._diff(outcome, selection)
        self._apply(outcome, selection)
        clock.lap("write_confirm")
        self._record(outcome, selection, checked)
        self.socket_folders = self._socket_folders()
        clock.lap("record")
        return outcome

    def _socket_folders(self) -> list[str]:
        """Worked out again only when a checked version or a last good one came or went."""
        key = (self._generation, len(self._cache), len(self.last_good))
        if key != self._folders_key:
            self._folders_key = key
            self.socket_folders = watched_folders(
                [*(c for _, c in self._cache.values()), *self.last_good.values()])
        return self.socket_folders

    def _scan(self, outcome: Outcome, unfinished: frozenset[str]) -> dict[str, Checked] | None:
        def check(entry: loading.Entry) -> Checked | None:
            if unfinished and os.path.basename(entry.location) in unfinished:
                return self._previous(entry.name)  # its last version stands in, if any
            return self._check_cached(entry)

        try:
            found = scan(self._settings, check)
        except (FileNotFoundError, NotADirectoryError):
            outcome.errors.append(SitesUnavailable(
                f"{self._settings.sites_dir}: the sites folder is missing; keeping what"
                " serves until it is back"))
            return None
        self._report_ignored(found.ignored)
        self._cache = {n: v for n, v in self._cache.items() if n in found.checked}
        return found.checked

    def _report_ignored(self, ignored: list[Problem]) -> None:
        """One log line per ignored entry while it stays, not one per pass."""
        for problem in ignored:
            if problem.file not in self._ignored:
                log.warning("file.ignored", file=problem.file, reason=problem.reason)
        self._ignored = {p.file for p in ignored}

    def _previous(self, name: str) -> Checked | None:
        """What was known of a site before its file started being rewritten."""
        cached = self._cache.get(name)
        return cached[1] if cached is not None else self.last_good.get(name)

    def _check_cached(self, entry: loading.Entry) -> Checked:
        cached = self._cache.get(entry.name)
        if cached is not None and cached[0] == entry.fingerprint and (
                cached[1].source == entry.location) and all(
                reading.fingerprint(path) == seen for path, seen in cached[1].reads) and (
                cached[1].expires_at is None
                or time.time() - cached[1].checked_at < CERTIFICATE_RECHECK_S):
            item = cached[1]
        else:
            item = check_entry(entry, self._settings)
            self._cache[entry.name] = (entry.fingerprint, item)
            self._generation += 1
        reason = self._rejected.get(item.digest)
        if reason is not None and not item.problems:
            item = Checked(name=item.name, source=item.source, digest=item.digest,
                           problems=(Problem(item.source, "envoy", reason),))
        return item

    def _diff(self, outcome: Outcome, selection: Selection) -> None:
        old, new = self._serving, selection.serving
        outcome.added = sorted(set(new) - set(old))
        outcome.removed = sorted(set(old) - set(new))
        outcome.changed = sorted(n for n in set(new) & set(old) if new[n].digest != old[n].digest)
        outcome.invalid = sorted(selection.problems)
        outcome.problems = {n: list(ps) for n, ps in sorted(selection.problems.items())}
        certifying.warnings(self._issuer, selection.warnings, new)
        outcome.warnings = {n: list(ws) for n, ws in sorted(selection.warnings.items())
                            if n in new}

    def _apply(self, outcome: Outcome, selection: Selection) -> None:
        serving = selection.serving
        self._blocked = {}
        resources, answers = certifying.resources(self._issuer, serving)
        try:
            report = self._publisher.apply(snapshot.snapshot(self._settings, resources))
        except OutputError as exc:
            outcome.errors.append(exc)
            outcome.retry, outcome.confirmation = True, Confirmation.UNCONFIRMED
            return  # Envoy goes on serving what it served: unchanged sites stay serving
        outcome.written, outcome.rejected = report.written, list(report.rejected)
        outcome.errors.extend([*report.unconfirmed, *report.errors])
        outcome.versions = {k: f.version for k, f in self._publisher.files.items()}
        outcome.confirmation = (Confirmation.UNASKED if not self._publisher.asks_envoy
                                else Confirmation.CONFIRMED if report.confirmed
                                else Confirmation.UNCONFIRMED)
        outcome.retry = bool(report.unconfirmed or report.rejected or report.errors)
        self._envoy_ok = not any(isinstance(e, EnvoyUnavailable) for e in outcome.errors)
        if report.confirmed and self._publisher.asks_envoy:  # not merely written
            self._confirmed = {name: item.digest for name, item in serving.items()}
        certifying.applied(self._issuer, answers, report, outcome.retry, self._settings)
        binds = [e for e in report.rejected if isinstance(e, EnvoyCannotBind)]
        if binds:
            self._blocked = blocked_by(binds, serving)
        elif report.rejected:
            self._blame(outcome, serving)
            return
        # Written and not rejected: these versions passed every check, Envoy's validate
        # included, so they are the last good ones even before Envoy confirms (it may
        # not be up yet; the files are what it will load).
        self._promote(serving)

    def _blame(self, outcome: Outcome, serving: dict[str, Checked]) -> None:
        """Envoy rejected what `validate` passed: the sites new in this pass are held
        back until their files change (their last good versions serve meanwhile)."""
        reason = "Envoy rejected the update that carried this version: " + "; ".join(
            str(e) for e in outcome.rejected)
        if self._verifier is not None:
            why = self._verifier.explain([c.resources for c in serving.values()
                                          if c.resources is not None])
            if why is not None:
                reason += f"; Envoy says: {why}"
                first = outcome.rejected[0]
                outcome.rejected[0] = type(first)(f"{first}; Envoy says: {why}")
        for name in outcome.added + outcome.changed:
            self._rejected[serving[name].digest] = reason

    def _promote(self, serving: dict[str, Checked]) -> None:
        state = self._settings.state
        for name in set(self._serving) - set(serving):
            self.last_good.pop(name, None)
            statusfile.drop_last_good(state, name)
        fresh = {name: item for name, item in serving.items()
                 if item.content is not None and self.last_good.get(name) is not item}
        statusfile.save_last_good(state, {name: item.content or b""
                                          for name, item in fresh.items()})
        self.last_good.update(fresh)
        self._generation += bool(fresh)
        self._serving = dict(serving)

    def _record(self, outcome: Outcome, selection: Selection,
                checked: dict[str, Checked] | None) -> None:
        now = time.time()
        sites = recording.site_statuses(selection, checked, self._blocked, self._state,
                                        self.status.sites, now)
        self.status.update(sites, self.upstreams.after_pass(selection.serving))
        last = statusfile.PassStatus(
            at=now, added=outcome.added, changed=outcome.changed, removed=outcome.removed,
            invalid=outcome.invalid, written=outcome.written,
            confirmed=outcome.confirmation.as_status(),
            errors=statusfile.clip_all([str(e) for e in outcome.errors + outcome.rejected]),
            versions=outcome.versions)
        try:
            self.status.write(last)
        except OutputError as exc:
            outcome.errors.append(exc)

    def _state(self, name: str, serving: Checked | None, problems: list[Problem]) -> str:
        """What the status says of one site. `serving` only when Envoy confirmed that it
        runs this very version (or, without an admin socket, once written); `pending`
        while the version is written but not confirmed: Envoy down, slow, rejecting an
        update or unable to bind a listener, or the output folder not writable."""
        if serving is None:
            return "invalid"
        unasked = not self._publisher.asks_envoy and self._settings.admin_socket is None
        confirmed = unasked or (self._envoy_ok and self._confirmed.get(name) == serving.digest)
        if not confirmed or name in self._blocked:
            return "pending"
        return "serving-last-good" if problems else "serving"


