"""Start-up: is Envoy up yet? The daemon writes its files before Envoy can start (Envoy
needs them), unconfirmed; then, until Envoy's admin socket exists and Envoy answers LIVE
on it, it waits and says so once. A thread watches for the socket and wakes the loop
when Envoy is up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from controlplane.envoy.admin import AdminClient
from controlplane.errors import EnvoyUnavailable
from controlplane.settings import Settings

log = structlog.get_logger("controlplane")
POLL_S = 0.1
LIVE_WITHIN_S = 60.0
"""An admin socket that exists but whose Envoy is not LIVE by then: confirm anyway (and
report what goes wrong) rather than wait for ever."""


class EnvoyStart:
    """`up` is set once Envoy is up (at once when its admin socket is already there)."""

    def __init__(self, path: Path | None, settings: Settings, stop: threading.Event,
                 wake: Callable[[], None]) -> None:
        self._path, self._settings, self._stop, self._wake = path, settings, stop, wake
        self.up = threading.Event()

    def watch(self) -> threading.Thread | None:
        """Start watching for Envoy; None when there is nothing to wait for."""
        if self._path is None:
            return None
        if self._path.exists():
            self.up.set()
            return None
        log.info("envoy.admin.waiting", socket=str(self._path),
                 detail="the files are written; waiting for Envoy to start on them")
        thread = threading.Thread(target=self._wait, args=(self._path,), name="envoy-start")
        thread.start()
        return thread

    def _wait(self, path: Path) -> None:
        admin, since = AdminClient(path, self._settings), None
        while not self._stop.wait(POLL_S):
            if not path.exists():
                continue
            since = since or time.monotonic()
            if _live(admin) or time.monotonic() - since > LIVE_WITHIN_S:
                log.info("envoy.admin.found", socket=str(path))
                self.up.set()
                self._wake()
                return


def _live(admin: AdminClient) -> bool:
    """Envoy has started on the files: /ready answers 200 (LIVE) once its first load of
    them is done; confirming before that only times out."""
    try:
        admin.get("/ready")
    except EnvoyUnavailable:
        return False
    return True
