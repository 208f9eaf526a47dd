"""What the daemon says about each pass: one `pass` log event, a site's problems and
warnings when they change (and a warning again daily while it lasts), and systemd's
READY, STATUS and watchdog beats.
"""

from __future__ import annotations

import time

import structlog

from controlplane.daemon.notify import Notifier
from controlplane.daemon.passes import Outcome
from controlplane.daemon.statusfile import clip_all
from controlplane.envoy.files import Confirmation
from controlplane.errors import Problem
from controlplane.settings import Settings

log = structlog.get_logger("controlplane")
WARN_AGAIN_S = 24 * 3600.0
"""A warning that stays (a certificate about to expire) is logged again this often."""
MAX_NAMES = 1000
"""Site names kept per list in one `pass` log line (then `and N more`): at most ~70 KB."""
_LEVELS = {"debug": 10, "info": 20, "warning": 30}


class Reporter:
    """Remembers what was said, so that each thing is said when it changes."""

    def __init__(self, settings: Settings, notifier: Notifier) -> None:
        self.settings = settings
        self.notifier = notifier
        self._seen_problems: dict[str, list[Problem]] = {}
        self._seen_warnings: dict[str, tuple[list[str], float]] = {}
        self._confirmed = Confirmation.UNASKED
        self._ready = False

    def tell_systemd(self, outcome: Outcome, waiting: bool) -> None:
        """READY=1 after the first confirmed pass (or the first clean one without an
        admin socket), then STATUS and watchdog beats. `waiting`: for Envoy to start."""
        if not self.notifier.enabled:
            return
        good = not outcome.errors and not waiting and (
            outcome.confirmation is Confirmation.CONFIRMED
            or self.settings.admin_socket is None)
        text = (f"{len(outcome.invalid)} invalid; last pass"
                f" {'confirmed' if good else 'waiting for Envoy' if waiting else 'with errors'}")
        if good and not self._ready:
            self._ready = True
            self.notifier.ready(text)
        elif self._ready:
            self.notifier.send("READY=1", f"STATUS={text}")  # also ends a RELOADING=1
        else:
            self.notifier.status(text)
        self.notifier.watchdog()
        if self.notifier.error:
            log.warning("systemd.notify.failed", error=self.notifier.error)
            self.notifier.error = None

    def _log_warnings(self, warnings: dict[str, list[Problem]]) -> None:
        """Each site's warnings when they change, and again once a day while they last."""
        now = time.monotonic()
        for name, found in warnings.items():
            texts = [str(w) for w in found]
            seen = self._seen_warnings.get(name)
            if seen is None or seen[0] != texts or now - seen[1] >= WARN_AGAIN_S:
                for text in clip_all(texts):
                    log.warning("site.warning", site=name, warning=text)
                self._seen_warnings[name] = (texts, now)
        for name in set(self._seen_warnings) - set(warnings):
            del self._seen_warnings[name]

    def log(self, outcome: Outcome, seconds: float) -> None:
        """The pass as one event; each site's problems and warnings when they change."""
        for name, problems in outcome.problems.items():
            if self._seen_problems.get(name) != problems:
                for problem in clip_all([str(p) for p in problems]):
                    log.warning("site.invalid", site=name, problem=problem)
        fresh = set(outcome.added) | set(outcome.changed)
        for name in sorted(set(self._seen_problems) - set(outcome.problems)):
            if name in fresh:
                log.info("site.valid_again", site=name)
            elif name not in outcome.removed:
                log.info("site.problems_gone", site=name,
                         detail="its file was removed, or is back to the version that serves")
        self._seen_problems = outcome.problems
        self._log_warnings(outcome.warnings)
        if outcome.confirmation is Confirmation.CONFIRMED and (
                self._confirmed is Confirmation.UNCONFIRMED):
            log.info("envoy.confirming_again", versions=outcome.versions)
        self._confirmed = outcome.confirmation
        changed = outcome.added or outcome.changed or outcome.removed or outcome.written
        level = "warning" if outcome.errors or outcome.rejected else "info" if changed else "debug"
        log.log(_LEVELS[level], "pass", added=clip_all(outcome.added, MAX_NAMES),
                changed=clip_all(outcome.changed, MAX_NAMES),
                removed=clip_all(outcome.removed, MAX_NAMES),
                invalid=clip_all(outcome.invalid, MAX_NAMES),
                rejected=clip_all([str(e) for e in outcome.rejected]), written=outcome.written,
                confirmed=outcome.confirmation.as_status(),
                errors=clip_all([str(e) for e in outcome.errors]),
                versions=outcome.versions, stages_ms=outcome.durations_ms,
                duration_ms=round(seconds * 1000, 2))
