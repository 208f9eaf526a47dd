"""The daemon loop: watch, debounce, reconcile, resync; signals and a clean stop.

One thread does the work (this one); watchdog's observer thread only signals. Every
wait is on an Event, so SIGTERM or SIGINT stops the loop at once: the observer thread
is joined, no temp file is left, and the last written files stay for Envoy.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

import structlog

from controlplane.envoy_admin import AdminClient
from controlplane.errors import ControlPlaneError, Stopping
from controlplane.metrics import Metrics, MetricsServer
from controlplane.reconciling import Outcome, Reconciler
from controlplane.settings import Settings
from controlplane.status import LAST_GOOD_DIR, clip, clip_all
from controlplane.tls import SDS_FOLDER
from controlplane.verifying import SCRATCH_DIR, Verifier
from controlplane.watching import Signal, Watch
from controlplane.writing import ensure_folder, hold_lock, remove_scratch, remove_stale_temps

log = structlog.get_logger("controlplane")
MISSING_FOLDER_POLL_S = 1.0
ENVOY_PROBE_S = 2.0
"""While quiet, Envoy's versions are read this often (one cheap text-readout request), so
the status stops calling sites serving soon after Envoy dies or loads other files."""
MAX_NAMES = 1000
"""Site names kept per list in one `pass` log line (then `and N more`): at most ~70 KB."""
FREEZE_AFTER = 100
"""Sites added or changed in one pass after which the heap is frozen again (see _pass)."""


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call `stop`; the previous handlers come back on exit."""
    def handle(signum: int, frame: FrameType | None) -> None:
        # Not stop() here: a handler runs between two bytecodes of the main thread, which
        # may hold the very lock that Event.set() takes. A thread takes it safely.
        threading.Thread(target=stop, name="stop-signal").start()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def sweep(settings: Settings) -> None:
    """Remove what a killed daemon may have left: temp files of atomic writes in the
    output, SDS, state and last-good folders, and validate's scratch folders."""
    state = settings.state
    for folder in (settings.out_dir, settings.out_dir / SDS_FOLDER, state,
                   state / LAST_GOOD_DIR):
        remove_stale_temps(folder)
    remove_scratch(state / SCRATCH_DIR)


class Daemon:
    def __init__(self, settings: Settings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.signal = Signal()
        self.passes = 0
        self.metrics = Metrics(settings.resync_s)
        self.metrics_port: int | None = None
        self._seen_problems: dict[str, list[str]] = {}

    def request_stop(self) -> None:
        """Stop soon: from a signal handler or another thread."""
        self.stop.set()
        self.signal.wake()

    def run(self) -> None:
        """Own the output folder (its lock) for the whole life of the loop: a second
        daemon on it exits at once, before it touches any file of this one."""
        ensure_folder(self.settings.out_dir)
        with hold_lock(self.settings.out_dir, "run"):
            sweep(self.settings)
            try:
                self._run()
            finally:
                sweep(self.settings)

    def _run(self) -> None:
        settings = self.settings
        admin = None
        if settings.admin_socket is None:
            log.warning("envoy.admin.none", detail="applies are written in order with a"
                        f" {settings.unconfirmed_gap_s:g}s gap and not confirmed")
        else:
            admin = AdminClient(settings.admin_socket, settings)
        verifier = (Verifier(settings, scratch=settings.state / SCRATCH_DIR, stop=self.stop)
                    if settings.verify_with_envoy else None)
        reconciler = Reconciler(settings, verifier=verifier, admin=admin, stop=self.stop)
        watch = Watch(settings.sites_dir, self.signal)
        server = None
        if settings.metrics is not None:
            server = MetricsServer(settings.metrics, self.metrics, settings.state)
            self.metrics_port = server.port
        log.info("daemon.start", sites=str(settings.sites_dir), out=str(settings.out_dir),
                 admin_socket=str(settings.admin_socket), metrics=str(settings.metrics))
        try:
            self._loop(reconciler, watch)
        finally:
            watch.stop()
            if server is not None:
                server.close()
            log.info("daemon.stop", passes=self.passes)

    def _loop(self, reconciler: Reconciler, watch: Watch) -> None:
        settings = self.settings
        watched = watch.ensure()
        self.signal.clear()  # the first pass looks at everything that ensure() signalled
        outcome = self._pass(reconciler)
        watch.also(reconciler.socket_folders)
        failures = int(outcome.retry)
        next_resync = time.monotonic() + settings.resync_s
        while not self.stop.is_set():
            if watch.fallback_reason:
                log.warning("watch.polling", reason=watch.fallback_reason)
                watch.fallback_reason = None
            timeout = max(0.0, next_resync - time.monotonic())
            if outcome.retry:  # backoff: retry_s, doubled each failing pass, to retry_max_s
                timeout = min(timeout, settings.retry_s * 2 ** min(failures - 1, 16),
                              max(settings.retry_s, settings.retry_max_s))
            if not watched:
                timeout = min(timeout, MISSING_FOLDER_POLL_S)
            if settings.admin_socket is not None:
                timeout = min(timeout, ENVOY_PROBE_S)
            _, due = self.signal.unfinished(settings.write_close_wait_s)
            if due is not None:  # a file written in place and not closed yet
                timeout = min(timeout, due + 0.01)
            woken = self.signal.wait_batch(timeout, settings.debounce_quiet_s,
                                           settings.debounce_max_s, self.stop)
            if self.stop.is_set():
                break
            self.metrics.beat()
            if not (woken or outcome.retry or time.monotonic() >= next_resync or not watched
                    or due is not None) and reconciler.envoy_runs_ours():
                continue  # quiet, and Envoy still runs what was confirmed: no pass needed
            watched = watch.ensure()
            outcome = self._pass(reconciler)
            watch.also(reconciler.socket_folders)
            failures = failures + 1 if outcome.retry else 0
            if time.monotonic() >= next_resync or not outcome.retry:
                next_resync = time.monotonic() + settings.resync_s

    def _pass(self, reconciler: Reconciler) -> Outcome:
        started = time.perf_counter()
        for name in self.signal.take_overdue(self.settings.write_close_wait_s):
            log.warning("site.unclosed", file=name, waited_s=self.settings.write_close_wait_s,
                        detail="written in place and not closed; taken as it is")
        try:
            outcome = reconciler.run_pass(
                self.signal.unfinished(self.settings.write_close_wait_s)[0])
        except Stopping:
            return Outcome()
        except ControlPlaneError as exc:
            log.error("pass.failed", error=clip(str(exc)), kind=exc.kind)
            self.metrics.record_failure(exc.kind, str(exc))
            return Outcome(retry=True, errors=[exc])
        except Exception as exc:  # a bug must cost one pass, not every site: retry, loudly
            log.exception("pass.crashed", error=repr(exc))
            self.metrics.record_failure("internal", repr(exc))
            return Outcome(retry=True, errors=[ControlPlaneError(repr(exc))])
        seconds = time.perf_counter() - started
        self.passes += 1
        if self.passes == 1 or len(outcome.added) + len(outcome.changed) >= FREEZE_AFTER:
            # Move the long-lived objects (every site's model and resources) out of the
            # cyclic GC's sight: a full collection over 10,000 sites costs ~170 ms and
            # would land in the middle of a one-site change. Collect first, so no garbage
            # is frozen with them.
            gc.collect()
            gc.freeze()
        self._log(outcome, seconds)
        self.metrics.record(outcome, seconds, reconciler.site_states())
        return outcome

    def _log(self, outcome: Outcome, seconds: float) -> None:
        for name, problems in outcome.problems.items():
            if self._seen_problems.get(name) != problems:
                for problem in clip_all(problems):
                    log.warning("site.invalid", site=name, problem=problem)
        self._seen_problems = outcome.problems
        changed = outcome.added or outcome.changed or outcome.removed or outcome.written
        level = "warning" if outcome.errors or outcome.rejected else "info" if changed else "debug"
        log.log(_LEVELS[level], "pass", added=clip_all(outcome.added, MAX_NAMES),
                changed=clip_all(outcome.changed, MAX_NAMES),
                removed=clip_all(outcome.removed, MAX_NAMES),
                invalid=clip_all(outcome.invalid, MAX_NAMES),
                rejected=clip_all([str(e) for e in outcome.rejected]), written=outcome.written,
                confirmed=outcome.confirmed, errors=clip_all([str(e) for e in outcome.errors]),
                versions=outcome.versions, stages_ms=outcome.durations_ms,
                duration_ms=round(seconds * 1000, 2))


_LEVELS = {"debug": 10, "info": 20, "warning": 30}
