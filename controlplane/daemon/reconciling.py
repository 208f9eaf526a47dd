"""The daemon's memory between passes, and one pass: scan -> check -> select -> publish
-> confirm -> record.

Level-triggered: a full pass looks at the whole folder and compares it with what serves,
so a lost event costs latency, never correctness; between full passes, a pass started
by site files' own events reads only those files (`daemon/scanning`). Work is
incremental: a file whose stat fingerprint is unchanged is not parsed again, Envoy
re-checks only renders it has not passed before, and only the sites that changed get a
new status. The last good version of each site is kept in the state folder across
restarts.
"""

from __future__ import annotations

import threading
import time

from controlplane.daemon import certifying, recording, scanning, statusfile, tracking
from controlplane.daemon.passes import Clock, Outcome, blocked_by
from controlplane.envoy.files import Confirmation
from controlplane.envoy.publishing import Publisher
from controlplane.envoy.verifying import Verifier
from controlplane.errors import (
    EnvoyCannotBind,
    EnvoyUnavailable,
    OutputError,
    Problem,
)
from controlplane.intake.checking import Checked, check_content
from controlplane.intake.selecting import Selection, select
from controlplane.render import snapshot
from controlplane.render.rendering import SiteResources
from controlplane.settings import Settings

AHEAD_FIRST = 250
"""New renders in a pass before the first group goes to Envoy's verdict ahead of the
rest; each next group is twice as big, up to AHEAD_MAX (`--mode validate` costs about
47 ms a run plus 0.4 ms a site: fewer, bigger runs, but the first starts early)."""
AHEAD_MAX = 2000


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
        self._folder = scanning.Scanner(settings)
        self.socket_folders: list[str] = []
        """The folders of the sites' sockets and htpasswd files (`Scanner.socket_folders`)."""
        self.status = statusfile.StatusFile(settings.state)
        self._recorder = recording.Recorder()
        self.upstreams = tracking.Tracker(settings=settings)
        self._confirmed: dict[str, str] = {}
        """Site -> the digest Envoy last confirmed running (a fully confirmed apply)."""
        self._envoy_ok = False
        """The last apply reached Envoy and was written (no timeout, refusal, output error)."""
        self._blocked: dict[str, list[str]] = {}
        """Sites kept from serving by a listener Envoy cannot bind, with the cause."""
        self._ahead: list[SiteResources] = []
        """New renders of this pass not handed to Envoy's verdict yet (`_check_ahead`)."""
        self._ahead_sent = 0
        if verifier is not None:
            self._folder.on_checked = self._check_ahead
            self._folder.envoy_judges = True
        self.last_good = self._load_last_good()
        self._folder.loaded = dict(self.last_good)
        self._serving: dict[str, Checked] = dict(self.last_good)
        """What serves, as far as the daemon knows: at start, what served before it stopped
        (a rejection must blame only what changed since)."""

    def _load_last_good(self) -> dict[str, Checked]:
        """The last good versions in the state folder, checked again; the renders Envoy
        accepted (persisted verdicts) skip the type checks."""
        found = {}
        trusted = self._verifier.passed() if self._verifier is not None else frozenset()
        for name, content in statusfile.load_last_good(self._settings.state).items():
            source = str(self._settings.sites_dir / f"{name}.yaml")
            item = check_content(name, source, content, self._settings, trusted)
            if not item.problems:
                found[name] = item
        return found

    def carry_status(self, previous: Reconciler) -> None:
        """Take over what `previous` reported per site (a reload or Envoy coming up
        builds a new reconciler): a site whose state stays keeps its `changed_at`."""
        self.status, self.upstreams = previous.status, previous.upstreams

    @property
    def full_at(self) -> float:
        """When the last full pass began (monotonic): the next is due `resync_s` later,
        whatever targeted passes came between."""
        return max(self._folder.full_at, time.monotonic() - self._settings.resync_s)

    def envoy_runs_ours(self) -> bool:
        """Envoy answers and runs the versions last written (True without an admin
        socket, or when there is nothing confirmed to compare)."""
        return self._publisher.runs_ours()

    def run_pass(self, unfinished: frozenset[str] = frozenset(),
                 touched: frozenset[str] | None = None) -> Outcome:
        """One reconciliation. `unfinished`: file names being written in place and not
        closed yet; their previous version stands in for them (a new one waits).
        `touched`: the sites folder's names that events named since the last pass, when
        nothing else changed; only those are read again (None: a full pass)."""
        outcome = Outcome()
        clock = Clock(outcome.durations_ms)
        self._ahead, self._ahead_sent = [], 0
        checked = self._folder.scan(outcome, unfinished, touched, self.last_good)
        clock.lap("load_validate_render")
        if checked is None:  # no sites folder: what serves stays, if its paths still hold
            checked = dict(self._serving or self.last_good)
            selection = select(checked, checked, None, None, self._folder.fence,
                               self._folder.indexes)
        else:
            selection = select(checked, self.last_good, self._verifier,
                               self._settings.max_certificates, self._folder.fence,
                               self._folder.indexes)
        clock.lap("verify")
        self._diff(outcome, selection)
        self._apply(outcome, selection)
        clock.lap("write_confirm")
        self._record(outcome, selection, checked)
        self.socket_folders = self._folder.socket_folders(self.last_good)
        clock.lap("record")
        return outcome

    def _check_ahead(self, item: Checked) -> None:
        """Hand new renders to Envoy's verdict in groups while the pass renders the rest
        (a cold start, a burst): the first group after `AHEAD_FIRST` of them, each next
        one twice as big, up to `AHEAD_MAX`. A one-site change hands nothing ahead."""
        verifier = self._verifier
        if verifier is None or item.problems or item.resources is None or (
                item.resources.digest in verifier.passed()):
            return
        self._ahead.append(item.resources)
        if len(self._ahead) >= min(AHEAD_MAX, AHEAD_FIRST << self._ahead_sent):
            verifier.check_ahead(self._ahead)
            self._ahead_sent += 1
            self._ahead = []

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
            self._folder.hold_back(serving[name].digest, reason)

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
        self._folder.generation += bool(fresh)
        self._serving = dict(serving)

    def _record(self, outcome: Outcome, selection: Selection,
                checked: dict[str, Checked] | None) -> None:
        now = time.time()
        try:
            sites, looked = self._recorder.statuses(
                selection, checked, self._blocked, self._state, previous=self.status.sites,
                confirmed=self._confirmed,
                state=(self._envoy_ok, self._publisher.asks_envoy), now=now)
            report = self.upstreams.after_pass(selection.serving)
            moved = self.upstreams.moved_reports()
            self.status.update(sites, report, None if looked is None else looked | moved)
        except BaseException:
            self._recorder.forget()  # what it kept was not recorded: the next pass redoes all
            raise
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


