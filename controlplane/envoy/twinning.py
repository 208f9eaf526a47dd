"""Envoy's verdict from the warm validation twin (`validator: twin`), not a process per change.

`verifying.Verifier` decides which groups of sites to check (the changed ones, bisected
on a failure); `TwinVerifier` checks each group on the twin (`twin.TwinProcess`): the
group is rendered as the live Envoy is given it and written to the twin's files in the
live Envoy's make-before-break order (CDS, then RDS and LDS), each step confirmed by the
version readouts alone, as the live Envoy's settled steps are (`AdminClient.confirm`,
`settled`): each file goes in under a version this twin never held (the salt counts up),
and `version_text` is the last version Envoy took whole (a rejected file, even partly
applied, leaves it as it was), so showing it can only mean the twin took the file. The
counters are read only to see a rejection: once before the first step after a start or
a rejection, then kept while every step is taken (they only rise, and a taken step adds
no rejection, so one still shows above them). A rejection's reason comes from the twin's
log (file subscriptions report it nowhere else).

What the twin is given differs from what the live Envoy is given only where Envoy does
not judge a file when it applies it (`render/twinfiles`: listeners not bound, upstreams
never probed, certificates inline, logs to /dev/null, clusters of routes validated).

After any rejection, what the twin holds is unknown: the kept counters are dropped,
before the next check its clusters are emptied (confirmed) and every file is rewritten
under a new version, so no stale accept is inherited; a twin that does not answer is
replaced.
`--mode validate` (the parent class) stays the fallback: while the twin starts or after
it died (it is restarted), when it does not answer, and for groups above
`MAX_TWIN_GROUP` sites, where one process is faster. A twin left above `MAX_TWIN_RSS`
bytes after a check is restarted, which gives its memory back.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from controlplane.envoy.admin import AdminClient, Counters
from controlplane.envoy.twin import TWIN_DIR, TwinProcess
from controlplane.envoy.verdicts import VERDICTS_FILE
from controlplane.envoy.verifying import SCRATCH_DIR, Verifier, envoy_binary, short_reason
from controlplane.errors import EnvoyRejected, EnvoyUnavailable, Stopping
from controlplane.render import rendering
from controlplane.render.rendering import SiteResources
from controlplane.render.twinfiles import EMPTY, TwinFiles, twin_files
from controlplane.settings import Settings
from controlplane.writing import write_atomic

log = structlog.get_logger("controlplane")
MAX_TWIN_GROUP = 64
"""Groups of more sites go to `--mode validate`: the twin takes about 1 ms a site (it
removes the last group's clusters and builds the new ones), a process about 47 ms plus
0.4 ms a site, so they cross near 80 (`python -m bench twin`). Such groups are a
whole-config batch at start, a burst of new sites, the first halves of a bisection."""
MAX_TWIN_RSS = 128 * 1024 * 1024
"""A twin above this after a check is restarted (Envoy keeps memory it once used); it
idles at about 65 MiB and stays near 75 with groups of at most `MAX_TWIN_GROUP`."""
RESTART_GAP_S = 5.0
"""A twin that died is started again at most this often (a crash loop costs nothing)."""
REASON_WAIT_S = 0.5
POLL_S, MAX_POLL_S = 0.001, 0.016
"""The twin's readouts are asked for every 1 ms at first: it serves nobody, and holds a
group of sites, so a read costs it almost nothing (a small file applies in 1-2 ms)."""
_MESSAGE = re.compile(r"^(trace|debug|info|warning|error|critical)\|")
_REJECTED = re.compile(r"config update (?:rejected|failure): (.*)", re.DOTALL)


class TwinUnavailable(Exception):
    """The twin cannot give a verdict now (starting, dead, not answering)."""


class Twin:
    """The twin Envoy and what it holds; `check` gives its verdict on one group."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.binary = envoy_binary(settings)
        self.process = TwinProcess(self.binary, settings.state / TWIN_DIR)
        self._stop = stop
        self._known: TwinFiles | None = None
        self._counters: dict[str, Counters] | None = None
        """The counters last read, by file kind, kept while every step since was taken:
        a rejection shows above them. None: read them before the next step."""
        self.requests: collections.Counter[str] = collections.Counter()
        """Admin requests made to the twin, by kind, across its runs (tests, benchmarks)."""
        self._ready = self._said_died = False
        self._salt = 0
        self._next_start = 0.0

    def start(self, grace_s: float = 5.0) -> None:
        """(Re)start it; what it holds is unknown until its first check."""
        self._known = EMPTY  # the files are written empty before it starts
        self._counters, self._ready, self._said_died = None, False, False
        self._next_start = time.monotonic() + RESTART_GAP_S
        self.process.stop(grace_s)
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def wait_ready(self, settings: Settings, timeout: float) -> bool:
        """Start it if needed and wait until it answers (tests, benchmarks)."""
        if not self.process.alive():
            self.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                self._admin(settings)
                return True
            except TwinUnavailable:
                self._stop.wait(0.02)
        return False

    def _admin(self, settings: Settings) -> AdminClient:
        """The twin's admin client once it answers; restarts a twin that died."""
        if not self.process.alive():
            if self.process.starts and not self._said_died:
                self._said_died = True
                log.warning("twin.died", exit_code=self.process.exit_code(),
                            log=self.process.log_since(0)[-5:])
            if time.monotonic() >= self._next_start or not self.process.starts:
                self.start()
            raise TwinUnavailable("the validation twin is starting")
        admin = AdminClient(self.process.admin_socket, settings)
        admin.requests = self.requests
        if not self._ready:
            try:
                admin.get("/ready")
            except EnvoyUnavailable as exc:
                raise TwinUnavailable(f"the validation twin is starting: {exc}") from None
            self._ready = True
        return admin

    def check(self, settings: Settings, group: Sequence[SiteResources]) -> str | None:
        """None when the twin takes the group, else the reason from its log."""
        admin = self._admin(settings)
        target = twin_files(settings, group, self.process.admin_socket.parent / "hc.sock",
                            self.process.paths()["rds"])
        mark = self.process.mark()
        try:
            known = self._known or self._resync(admin, settings)
            for step in _steps(known, target):
                self._step(admin, settings, step)
        except EnvoyRejected:
            self._known = self._counters = None
            return self._reason(mark)
        except EnvoyUnavailable as exc:  # hung or gone: a fresh one next time
            if self._stop.is_set():
                raise Stopping("stopping: the validation twin's check ended") from None
            log.warning("twin.restart", reason=str(exc))
            self.start(grace_s=0.0)
            raise TwinUnavailable(f"the validation twin did not answer: {exc}") from None
        self._known = target
        if self.process.rss_bytes() > MAX_TWIN_RSS:
            log.info("twin.restart", rss_bytes=self.process.rss_bytes(), sites=len(group))
            self.start()
        return None

    def _resync(self, admin: AdminClient, settings: Settings) -> TwinFiles:
        """After a rejection: no clusters, confirmed; the route and listener files are
        rewritten by the next steps. Rewriting the same cluster file would not do: Envoy
        keeps a cluster it failed to build, and takes the same cluster later as
        unchanged. The listeners stay: removing them would end the route file's
        subscription, and a new one starts its counters from zero."""
        self._step(admin, settings, {"cds": ()})
        self._known = EMPTY
        return EMPTY

    def _step(self, admin: AdminClient, settings: Settings,
              files: dict[str, tuple[str, ...]]) -> None:
        """Write each file under a new version, then confirm each by its readout (the
        module's docstring says why that is enough). The counters are read first only
        when none are kept, and are kept again only once every file was taken: a step
        that ends any other way leaves them unknown."""
        counters, self._counters = self._counters, None
        if counters is None:
            counters = dict(admin.counters())
        versions = {}
        for kind, fragments in files.items():
            self._salt += 1
            version, data = rendering.discovery_response(list(fragments), f"twin-{self._salt}")
            write_atomic(self.process.paths()[kind], data, 0o600, force=True, durable=False)
            versions[kind] = version
        for kind, version in versions.items():
            counters[kind] = admin.confirm(kind, counters[kind], version,
                                           settings.confirm_timeout_s, self._stop,
                                           poll_s=POLL_S, max_poll_s=MAX_POLL_S, settled=True)
        self._counters = counters

    def _reason(self, mark: int) -> str:
        """The twin's own words for the rejection that followed `mark`."""
        deadline = time.monotonic() + REASON_WAIT_S
        while True:
            for message in _messages(self.process.log_since(mark)):
                found = _REJECTED.search(message)
                if found is not None:
                    return short_reason(" ".join(found.group(1).split()))
            if time.monotonic() >= deadline or self._stop.wait(0.01):
                return "Envoy rejected it (the validation twin logged no reason)"


def _messages(lines: list[str]) -> list[str]:
    """Log lines joined into messages (a message's later lines carry no level)."""
    messages: list[str] = []
    for line in lines:
        if _MESSAGE.match(line) or not messages:
            messages.append(_MESSAGE.sub("", line))
        else:
            messages[-1] += "\n" + line
    return messages


def _steps(known: TwinFiles, target: TwinFiles) -> list[dict[str, tuple[str, ...]]]:
    """Make before break, for the group: its clusters first, then its routes and
    listeners (only the files that change). The clusters of the group checked before go
    in the same step: the twin serves nobody, and that group is not what the live Envoy
    serves, so a step holding both would judge a mix no Envoy is ever given."""
    steps: list[dict[str, tuple[str, ...]]] = []
    if target.clusters != known.clusters:
        steps.append({"cds": _sorted(target.clusters)})
    routes = {kind: getattr(target, kind) for kind in ("rds", "lds")
              if getattr(target, kind) != getattr(known, kind)}
    if routes:
        steps.append(routes)
    return steps


def _sorted(clusters: dict[str, str]) -> tuple[str, ...]:
    return tuple(clusters[name] for name in sorted(clusters))


class TwinVerifier(Verifier):
    """`Verifier` whose runs go to the twin when it can take them."""

    def __init__(self, settings: Settings, twin: Twin, scratch: Path | None = None,
                 stop: threading.Event | None = None, verdicts: Path | None = None) -> None:
        super().__init__(settings, scratch=scratch, stop=stop, verdicts=verdicts)
        self._twin = twin
        self.twin_runs = 0
        """Runs the twin answered (the rest went to `envoy --mode validate`)."""

    def _run(self, group: list[SiteResources]) -> str | None:
        if self._stop.is_set():
            raise Stopping("stopping: the validation twin's check ended")
        if len(group) <= MAX_TWIN_GROUP:
            try:
                reason = self._twin.check(self._settings, group)
            except TwinUnavailable as exc:
                log.debug("twin.unavailable", reason=str(exc), detail="envoy --mode validate")
            else:
                self.runs += 1
                self.twin_runs += 1
                return reason
        return super()._run(group)


class Validators:
    """The daemon's Envoy validator across passes and reloads, as the settings say: the
    twin, kept warm (started by the thread that asks first, the loop's, so it dies with
    that thread), or an `envoy --mode validate` Verifier; either keeps its verdicts in
    `STATE/verdicts.json`, so a restart re-checks only what changed meanwhile."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._twin: Twin | None = None

    def verifier(self, settings: Settings) -> Verifier | None:
        scratch, verdicts = settings.state / SCRATCH_DIR, settings.state / VERDICTS_FILE
        wanted = settings.verify_with_envoy and settings.validator == "twin"
        if self._twin is not None and (not wanted or self._twin.binary != envoy_binary(settings)):
            self.close()  # a reload turned it off, or names another Envoy
        if not settings.verify_with_envoy:
            return None
        if settings.validator == "process":
            return Verifier(settings, scratch=scratch, stop=self._stop, verdicts=verdicts)
        if self._twin is None:
            self._twin = Twin(settings, self._stop)
            self._twin.start()  # answers within a second; `--mode validate` until then
        return TwinVerifier(settings, self._twin, scratch=scratch, stop=self._stop,
                            verdicts=verdicts)

    def close(self) -> None:
        if self._twin is not None:
            self._twin.stop()
            self._twin = None
