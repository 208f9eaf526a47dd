"""The schedule of ACME orders, run beside the daemon's passes: which site needs a
certificate now (none yet, a domain not covered, renewal due, an operator's request),
one worker thread that orders it, and the challenge answers the passes put in front of
Envoy.

The loop never waits on the ACME server: `tick` only starts the worker, and the worker
talks to the loop through this object (answers to publish, Envoy's confirmation of
them, a wake-up when the certificate is written). Renewal is due when a third of the
certificate's lifetime is left, less a jitter fixed per certificate, or when the
server's renewal info (ARI) says so. A failed order waits `RETRY_S`, doubled on each
failure up to `RETRY_MAX_S`, and at least what the server's `Retry-After` asked; the
schedule is kept in the state folder, so a restarting daemon does not hammer the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from controlplane.issuing import schedule, store
from controlplane.issuing.failures import REQUEST_TIMEOUT_S, OrderFailed
from controlplane.render import challenges
from controlplane.settings import Settings

log = structlog.get_logger("controlplane")

ORDER_TIMEOUT_S = 120.0
"""One order, from the first request to the certificate written (then it has failed)."""


class Issuer:
    """Orders certificates for the sites that ask, one at a time, in a worker thread."""

    def __init__(self, settings: Settings, *, wake: Callable[[], None],
                 served: Callable[[], set[str]] | None = None,
                 counted: Callable[[str], None] = lambda result: None) -> None:
        self._settings = settings
        self._wake = wake
        self._served = served
        """The serials Envoy serves (its admin `/certs`), to confirm a renewal."""
        self._counted = counted
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._answers: dict[str, dict[str, str]] = {}
        self._confirmed: dict[str, frozenset[str]] = {}
        self._running: str | None = None
        self._thread: threading.Thread | None = None
        self._jobs = schedule.load(settings)

    # The loop's side ---------------------------------------------------------------

    def reconfigure(self, settings: Settings) -> None:
        """New settings (SIGHUP): the next order uses them."""
        with self._cond:
            self._settings = settings

    def want(self, sites: dict[str, tuple[str, ...]]) -> None:
        """The sites that ask now, with their domains (after each pass)."""
        with self._cond:
            for name in set(self._jobs) - set(sites):
                del self._jobs[name]
            for name, domains in sites.items():
                job = self._jobs.setdefault(name, schedule.Job(domains=domains))
                if set(job.domains) != set(domains):
                    # New names order at once, unless orders failed: then the backoff
                    # holds (editing the domains must not buy a site an order a minute
                    # against the shared account's limits); `certificates --renew` asks now.
                    job.domains = domains
                    if not job.failures:
                        job.next_attempt = 0.0

    def answers(self) -> dict[str, dict[str, str]]:
        """Challenge answers to serve, per site (token -> key authorization)."""
        with self._cond:
            return {site: dict(found) for site, found in self._answers.items()}

    def applied(self, answers: dict[str, dict[str, str]], confirmed: bool) -> None:
        """A pass wrote `answers`; `confirmed` when Envoy confirmed it runs them."""
        if not confirmed:
            return
        with self._cond:
            for site, found in answers.items():
                self._confirmed[site] = frozenset(found)
            self._cond.notify_all()

    def notes(self) -> dict[str, str]:
        """What the status says of each site that asks: why it waits, or why the last
        renewal failed (nothing while all is well)."""
        now = time.time()
        found = {}
        with self._cond:
            for name, job in self._jobs.items():
                current = store.current(self._settings, name)
                when = _clock(max(job.next_attempt, now))
                if current is None or not set(job.domains) <= set(current.domains):
                    why = job.reason or ("ordering now" if self._running == name
                                         else "the order starts soon")
                    found[name] = f"waiting for certificate: {why}"
                    if job.reason:
                        found[name] += f"; next attempt at {when}"
                elif job.reason:
                    found[name] = (f"renewal failed: {job.reason}; the current certificate"
                                   f" (until {_clock(current.not_after)}) serves; next"
                                   f" attempt at {when}")
        return found

    def tick(self) -> None:
        """Start the worker on the most overdue site, if any is due and none runs."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            due = self._most_due(time.time())
            if due is None:
                return
            self._running = due
            self._thread = threading.Thread(target=self._work, args=(due,),
                                            name=f"acme-{due}", daemon=True)
            self._thread.start()

    def due_in(self) -> float | None:
        """Seconds until the next site is due (None: nothing asks, or an order runs: the
        worker wakes the loop when it ends)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return None
            now = time.time()
            times = [self._due_at(name, job, now) for name, job in self._jobs.items()]
        return max(0.0, min(times) - now) if times else None

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)

    # The schedule ------------------------------------------------------------------

    def _most_due(self, now: float) -> str | None:
        due = sorted((self._due_at(n, j, now), n) for n, j in self._jobs.items())
        return due[0][1] if due and due[0][0] <= now else None

    def _due_at(self, name: str, job: schedule.Job, now: float) -> float:
        """When the site's next order (or renewal-info check) is due."""
        current = store.current(self._settings, name)
        if current is None or not set(job.domains) <= set(current.domains) or (
                store.renewal_requested(self._settings, name)):
            return job.next_attempt
        if job.ari_serial != current.serial:
            job.ari_at, job.ari_check_after, job.ari_serial = None, 0.0, current.serial
        return max(job.next_attempt, min(schedule.renewal_at(current, job.ari_at),
                                         job.ari_check_after))

    # The worker --------------------------------------------------------------------

    def _work(self, name: str) -> None:
        try:
            with self._cond:
                job = self._jobs.get(name)
                domains = job.domains if job else ()
            current = store.current(self._settings, name)
            if job is None:
                return
            if self._needs_order(name, job, current):
                self._order(name, domains, current)
            elif current is not None:
                self._check_renewal_info(name, job, current)
        except Exception as exc:  # a bug costs one attempt, never the daemon
            log.exception("acme.crashed", site=name, error=repr(exc))
            self._failed(name, OrderFailed("error", repr(exc)))
        finally:
            with self._cond:
                self._running = None
                self._answers.pop(name, None)
                self._confirmed.pop(name, None)
            self._wake()

    def _needs_order(self, name: str, job: schedule.Job, current: store.Current | None) -> bool:
        if current is None or not set(job.domains) <= set(current.domains):
            return True
        return store.renewal_requested(self._settings, name) or (
            time.time() >= schedule.renewal_at(current, job.ari_at))

    def _check_renewal_info(self, name: str, job: schedule.Job, current: store.Current) -> None:
        try:
            from controlplane.issuing import ordering  # see _order

            at, again = ordering.renewal_info(self._settings, current.chain)
        except OrderFailed as exc:
            at, again = job.ari_at, time.time() + 6 * 3600
            log.warning("acme.renewal_info.failed", site=name, error=exc.reason)
        with self._cond:
            job.ari_at, job.ari_check_after = at, max(again, time.time() + 60)
            schedule.save(self._settings, self._jobs)
        log.info("acme.renewal_info", site=name, serial=current.serial,
                 renew_at=_clock(schedule.renewal_at(current, job.ari_at)),
                 from_server=at is not None, ask_again=_clock(job.ari_check_after))

    def _order(self, name: str, domains: tuple[str, ...], current: store.Current | None) -> None:
        renewing = current is not None
        store.renewal_done(self._settings, name)
        log.info("acme.order.start", site=name, domains=list(domains), renewal=renewing)
        started = time.monotonic()
        # Imported with the first order: the ACME library and requests cost every command
        # that imports the daemon about 0.2 s, and most nodes never order.
        from controlplane.issuing import ordering

        try:
            issued = ordering.order(self._settings, domains, lambda answers, deadline:
                                    self._publish(name, answers, deadline),
                                    started + ORDER_TIMEOUT_S, self._stop)
            previous = store.install(self._settings, name, issued.chain, issued.key)
            self._confirm(name, previous if renewing else None)
        except OrderFailed as exc:
            if exc.result != "stopped":  # a stop is no failure of the server's
                self._failed(name, exc)
            return
        fresh = store.current(self._settings, name)
        result = "renewed" if renewing else "issued"
        self._counted(result)
        with self._cond:
            job = self._jobs.get(name)
            if job is not None:
                job.failures, job.next_attempt, job.reason = 0, 0.0, None
            schedule.save(self._settings, self._jobs)
        log.info(f"acme.order.{result}", site=name, domains=list(domains),
                 serial=fresh.serial if fresh else None,
                 not_after=_clock(fresh.not_after) if fresh else None,
                 duration_ms=round((time.monotonic() - started) * 1000, 1))

    def _publish(self, name: str, answers: dict[str, str], deadline: float) -> None:
        """Have the next pass serve the answers, and wait until Envoy confirmed them."""
        try:  # only base64url reaches a route: a server's odd token never breaks a pass
            for token, answer in answers.items():
                challenges.route(token, answer)
        except ValueError as exc:
            raise OrderFailed("refused", f"the ACME server sent an unusable challenge: {exc}"
                              ) from None
        with self._cond:
            self._answers[name] = dict(answers)
        self._wake()
        wanted = frozenset(answers)
        with self._cond:
            done = self._cond.wait_for(lambda: self._stop.is_set() or (
                wanted <= self._confirmed.get(name, frozenset())),
                timeout=max(0.0, deadline - time.monotonic()))
        if self._stop.is_set():
            raise OrderFailed("stopped", "the daemon is stopping")
        if not done:
            raise OrderFailed("unconfirmed", "Envoy did not confirm the challenge routes in"
                              " time (see the pass errors)")

    def _confirm(self, name: str, previous: str | None) -> None:
        """A renewal: wait until Envoy serves the new serial; else put the old one back."""
        fresh = store.current(self._settings, name)
        if previous is None or self._served is None or fresh is None:
            return
        deadline = time.monotonic() + max(10.0, 2 * self._settings.confirm_timeout_s)
        while not self._stop.wait(0.1):
            try:
                if fresh.serial in self._served():
                    return
            except Exception:  # Envoy busy or restarting: ask again until the deadline
                pass
            if time.monotonic() > deadline:
                break
        store.restore(self._settings, name, previous)
        raise OrderFailed("unconfirmed", f"Envoy did not load the renewed certificate"
                          f" (serial {fresh.serial}); the previous one serves again")

    def _failed(self, name: str, exc: OrderFailed) -> None:
        self._counted(exc.result)
        with self._cond:
            job = self._jobs.get(name)
            if job is None:
                return
            schedule.failed(job, exc.reason, exc.retry_after)
            schedule.save(self._settings, self._jobs)
        log.warning("acme.order.failed", site=name, result=exc.result, error=exc.reason,
                    failures=job.failures, next_attempt=_clock(job.next_attempt))


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
