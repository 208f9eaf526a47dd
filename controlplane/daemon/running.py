"""The daemon loop: watch, debounce, reconcile, resync; signals, reload and a clean stop.

One thread does the work (this one); watchdog's observer thread only signals. Every
wait is on an Event, so SIGTERM, SIGINT or SIGQUIT stops the loop at once: the observer
thread is joined, no temp file is left, and the last written files stay for Envoy.
SIGHUP re-reads the settings (`reload`) and runs a full pass; settings that cannot
change in a running process are reported and keep their old values. Every signal is
logged. With `$NOTIFY_SOCKET` (systemd) the loop reports readiness after its first
confirmed pass, feeds the watchdog, and says when it reloads and stops.

At start the files are written first (Envoy cannot start without them); then, until
Envoy is up (`starting`), the daemon says once that it waits and writes nothing more (a
file renamed in while Envoy starts could be neither loaded nor confirmed); the first
pass once Envoy is up is a full one: start-up, not a failed pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from controlplane import configuring, logs
from controlplane.daemon import liveness, passes
from controlplane.daemon.metrics import Metrics, open_server
from controlplane.daemon.notify import Notifier
from controlplane.daemon.passes import Outcome
from controlplane.daemon.reconciling import Reconciler
from controlplane.daemon.reporting import Reporter
from controlplane.daemon.statusfile import clip
from controlplane.daemon.watching import Signal, Watch
from controlplane.envoy.serials import served_serials
from controlplane.envoy.starting import EnvoyStart
from controlplane.envoy.twinning import Validators
from controlplane.errors import ControlPlaneError, OutputError, Stopping
from controlplane.issuing.issuer import Issuer
from controlplane.settings import Settings
from controlplane.writing import ensure_folder, ensure_private_folder, hold_lock

log = structlog.get_logger("controlplane")
MISSING_FOLDER_POLL_S = 1.0
ENVOY_PROBE_S = 2.0
"""While quiet, Envoy's versions are read this often (one cheap text-readout request), so
the status stops calling sites serving soon after Envoy dies or loads other files."""
FREEZE_AFTER = 100
"""Sites added or changed in one pass after which the heap is frozen again (see _pass)."""


class Daemon:
    def __init__(self, settings: Settings, stop: threading.Event | None = None,
                 reload: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.signal = Signal()
        self.passes = 0
        self.metrics = Metrics(settings.resync_s)
        self.metrics_port: int | None = None
        self.notifier = Notifier()
        self._reload = reload
        self._reload_requested = threading.Event()
        self._envoy = EnvoyStart(settings.admin_socket, settings, self.stop, self.signal.wake)
        self._reporter = Reporter(settings, self.notifier)
        self._watch_error: str | None = None
        self._validators = Validators(self.stop)
        self.issuer = Issuer(settings, wake=lambda: self.signal.wake(everything=True),
                             counted=self.metrics.order_result,
                             served=lambda: served_serials(self.settings) if self._envoy.up.is_set()
                             else set())

    def request_stop(self) -> None:
        """Stop soon: from a signal handler or another thread."""
        self.stop.set()
        self.signal.wake()

    def request_reload(self) -> None:
        """Re-read the settings and run a full pass soon."""
        self._reload_requested.set()
        self.signal.wake()

    def run(self) -> None:
        """Own the output folder (its lock) for the whole life of the loop: a second
        daemon on it exits at once, before it touches any file of this one."""
        ensure_folder(self.settings.out_dir)
        with hold_lock(self.settings.out_dir, "run"):
            if ensure_private_folder(self.settings.state):
                log.warning("state.narrowed", folder=str(self.settings.state), mode="0700",
                            detail="the state folder was readable by others")
            liveness.sweep(self.settings)
            try:
                self._run()
            finally:
                liveness.sweep(self.settings)

    def _run(self) -> None:
        settings = self.settings
        if settings.admin_socket is None:
            log.warning("envoy.admin.none", detail="applies are written in order with a"
                        f" {settings.unconfirmed_gap_s:g}s gap and not confirmed")
        watch = Watch(settings.sites_dir, self.signal)
        server = open_server(self.settings.metrics, self.metrics, self.settings.state)
        self.metrics_port = server.port if server is not None else None
        info: dict[str, object] = {}
        waiter = None
        try:
            info = liveness.record_start(settings)
            log.info("daemon.start", sites=str(settings.sites_dir), out=str(settings.out_dir),
                     admin_socket=str(settings.admin_socket), metrics=str(settings.metrics),
                     systemd=self.notifier.enabled)
            waiter = self._envoy.watch()
            self._loop(watch)
        finally:
            self.notifier.stopping()
            self.stop.set()
            self.issuer.close()
            watch.stop()
            if waiter is not None:
                waiter.join(timeout=5)
            self._validators.close()
            if server is not None:
                server.close()
            if info:
                liveness.record_stop(settings, info)
            log.info("daemon.stop", passes=self.passes)

    def _reconciler(self) -> Reconciler:
        settings = self.settings
        up = settings.admin_socket is not None and self._envoy.up.is_set()
        return Reconciler(settings, verifier=self._validators.verifier(settings), stop=self.stop,
                          issuer=self.issuer, ask_envoy=up)

    def _watch(self, watch: Watch) -> bool:
        """(Re)start the watch; a folder that cannot be watched is polled, and said once."""
        try:
            watched = watch.ensure()
        except OSError as exc:
            error = (f"{self.settings.sites_dir}: cannot watch the folder:"
                     f" {exc.strerror or exc}; the daemon's user must be able to read it")
            if error != self._watch_error:
                log.error("watch.failed", error=error, detail="rescanning every second")
            self._watch_error = error
            return False
        self._watch_error = None
        return watched

    def _loop(self, watch: Watch) -> None:
        watched = self._watch(watch)
        self.signal.clear()  # the first pass looks at everything that ensure() signalled
        confirmed_mode = self._envoy.up.is_set()
        reconciler = self._reconciler()
        outcome = self._pass(reconciler)
        watch.also(reconciler.socket_folders)
        failures = int(outcome.retry)
        next_resync = time.monotonic() + self.settings.resync_s
        while not self.stop.is_set():
            settings = self.settings
            if watch.fallback_reason:
                log.warning("watch.polling", reason=watch.fallback_reason)
                watch.fallback_reason = None
            timeout, due = self._timeout(next_resync, outcome.retry, failures, watched)
            timeout = min(timeout, reconciler.upstreams.due_in() + 0.005)  # a socket to see
            woken = self.signal.wait_batch(timeout, settings.debounce_quiet_s,
                                           settings.debounce_max_s, self.stop,
                                           settings.debounce_complete_s)
            if self.stop.is_set():
                break
            self._between_passes(reconciler)
            reloaded = self._reload_requested.is_set() or (
                confirmed_mode != self._envoy.up.is_set())
            if reloaded:
                reconciler, confirmed_mode = self._reloaded(reconciler)
            if self._awaiting_envoy() and not outcome.retry:
                # The files are written; a later write could reach an Envoy that is just
                # starting, unconfirmed. Wait: the first pass once Envoy is up is full.
                self.notifier.watchdog()
                next_resync = time.monotonic() + self.settings.resync_s
                continue
            if not (woken or reloaded or outcome.retry or time.monotonic() >= next_resync
                    or not watched or due is not None) and reconciler.envoy_runs_ours():
                self.notifier.watchdog()
                continue  # quiet, and Envoy still runs what was confirmed: no pass needed
            watched, outcome = self._watched_pass(watch, reconciler)
            failures = failures + 1 if outcome.retry else 0
            if time.monotonic() >= next_resync or not outcome.retry:  # a targeted pass
                next_resync = min(time.monotonic(), reconciler.full_at) + self.settings.resync_s

    def _between_passes(self, reconciler: Reconciler) -> None:
        """Alive; the upstream sockets looked at again; an ACME order started when due."""
        self.metrics.beat()
        reconciler.upstreams.refresh_status(reconciler.status, self.metrics.upstreams)
        self.issuer.tick()

    def _reloaded(self, previous: Reconciler) -> tuple[Reconciler, bool]:
        """After SIGHUP, or Envoy coming up or going away: a new reconciler on the
        settings now in effect, with what the previous one reported per site."""
        self._apply_reload()
        mode = self._envoy.up.is_set()  # read before the reconciler that follows it
        fresh = self._reconciler()
        fresh.carry_status(previous)
        return fresh, mode

    def _watched_pass(self, watch: Watch, reconciler: Reconciler) -> tuple[bool, Outcome]:
        """(whether the sites folder is watched, the pass); then the folders of the
        sockets and htpasswd files the pass found are watched too."""
        watched = self._watch(watch)
        outcome = self._pass(reconciler)
        watch.also(reconciler.socket_folders)
        return watched, outcome

    def _timeout(self, next_resync: float, retry: bool, failures: int,
                 watched: bool) -> tuple[float, float | None]:
        """How long the loop may sleep, and when a file written in place is due."""
        settings = self.settings
        timeout = max(0.0, next_resync - time.monotonic())
        if retry:  # backoff: retry_s, doubled each failing pass, up to retry_max_s
            timeout = min(timeout, settings.retry_s * 2 ** min(max(failures - 1, 0), 16),
                          max(settings.retry_s, settings.retry_max_s))
        if not watched:
            timeout = min(timeout, MISSING_FOLDER_POLL_S)
        if settings.admin_socket is not None:
            timeout = min(timeout, ENVOY_PROBE_S)
        if self.notifier.watchdog_s is not None:
            timeout = min(timeout, self.notifier.watchdog_s)
        acme_due = self.issuer.due_in()
        if acme_due is not None:
            timeout = min(timeout, acme_due + 0.01)
        _, due = self.signal.unfinished(settings.write_close_wait_s)
        if due is not None:  # a file written in place and not closed yet
            timeout = min(timeout, due + 0.01)
        return timeout, due

    def _apply_reload(self) -> None:
        """SIGHUP: the new settings, except those that need a restart (reported)."""
        if not self._reload_requested.is_set():
            return
        self._reload_requested.clear()
        self.notifier.reloading()
        if self._reload is None:
            log.warning("settings.reload.unavailable", detail="no settings source to re-read")
            return
        try:
            fresh = self._reload()
        except ControlPlaneError as exc:
            log.error("settings.reload.failed", error=str(exc), detail="keeping the old settings")
            return
        self.settings, kept, changed = configuring.reloaded(self.settings, fresh)
        self.issuer.reconfigure(self.settings)
        if kept:
            log.warning("settings.reload.needs_restart", keys=kept,
                        detail="these keep their old values until the daemon restarts")
        if "log_level" in changed or "log_format" in changed:
            logs.configure(self.settings.log_level, self.settings.log_format)
        log.info("settings.reloaded", changed=changed)

    def _pass(self, reconciler: Reconciler) -> Outcome:
        started = time.perf_counter()
        for name in self.signal.take_overdue(self.settings.write_close_wait_s):
            log.warning("site.unclosed", file=name, waited_s=self.settings.write_close_wait_s,
                        detail="written in place and not closed; taken as it is")
        try:
            outcome = reconciler.run_pass(
                self.signal.unfinished(self.settings.write_close_wait_s)[0],
                self.signal.take_touched())
        except Stopping:
            return Outcome()
        except ControlPlaneError as exc:
            log.error("pass.failed", error=clip(str(exc)), kind=exc.kind)
            self.metrics.record_failure(exc.kind, str(exc))
            return Outcome(retry=True, errors=[exc])
        except OSError as exc:  # a file or folder the daemon needs: name it, and the fix
            where = exc.filename or "a file or folder"
            error = OutputError(f"{where}: {exc.strerror or exc}; check that it exists and"
                                " that the daemon's user may read it (and write the out and"
                                " state folders)")
            log.error("pass.failed", error=str(error), kind=error.kind)
            self.metrics.record_failure(error.kind, str(error))
            return Outcome(retry=True, errors=[error])
        except Exception as exc:  # a bug must cost one pass, not every site: retry, loudly
            log.exception("pass.crashed", error=repr(exc))
            self.metrics.record_failure("internal", repr(exc))
            return Outcome(retry=True, errors=[ControlPlaneError(repr(exc))])
        seconds = time.perf_counter() - started
        self.passes += 1
        if self.passes == 1 or len(outcome.added) + len(outcome.changed) >= FREEZE_AFTER:
            passes.freeze_heap()
        self._reporter.log(outcome, seconds)
        self.metrics.record(outcome, seconds, reconciler.status.site_states())
        self.metrics.certificates(reconciler.status.certificate_expiries())
        self.metrics.upstreams(reconciler.upstreams.rows())
        if self._awaiting_envoy():
            self.metrics.waiting(f"waiting for Envoy's admin socket {self.settings.admin_socket}")
        self._reporter.tell_systemd(outcome, self._awaiting_envoy())
        return outcome

    def _awaiting_envoy(self) -> bool:
        return self.settings.admin_socket is not None and not self._envoy.up.is_set()
