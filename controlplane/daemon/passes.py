"""What one pass did (`Outcome`), timed by stage (`Clock`), and which sites a listener
that Envoy cannot bind keeps from serving.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

from controlplane.envoy.files import Confirmation
from controlplane.errors import (
    ControlPlaneError,
    EnvoyCannotBind,
    Problem,
)
from controlplane.intake.checking import (
    Checked,
)


@dataclass(slots=True, kw_only=True)
class Outcome:
    """What one pass did; the daemon logs it as one event and writes it to the status file."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    rejected: list[ControlPlaneError] = field(default_factory=list)
    errors: list[ControlPlaneError] = field(default_factory=list)
    """Kept as the errors raised: each has its `kind` (metrics) and its message."""
    confirmation: Confirmation = Confirmation.UNCONFIRMED
    retry: bool = False
    durations_ms: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    problems: dict[str, list[Problem]] = field(default_factory=dict)
    warnings: dict[str, list[Problem]] = field(default_factory=dict)
    """Per serving site: what to look at (a certificate expiring soon, a shadowed route)."""


def blocked_by(binds: list[EnvoyCannotBind], serving: dict[str, Checked]) -> dict[
        str, list[str]]:
    """The sites a listener that cannot bind keeps from serving, with Envoy's reason:
    the TLS and passthrough sites for the HTTPS listener, a TCP site for its own, every
    HTTP site for the HTTP listener."""
    blocked: dict[str, list[str]] = {}
    for error in binds:
        for listener, why in sorted(error.listeners.items()):
            cause = (f"Envoy cannot open the {listener!r} listener: {why}; it is applied"
                     " as soon as the address is free")
            for name, item in serving.items():
                if _behind(listener, name, item):
                    blocked.setdefault(name, []).append(cause)
    return blocked


def _behind(listener: str, name: str, item: Checked) -> bool:
    """Whether the site is served by that listener: a TCP site by its own, `tcp-NAME`; a
    TLS or passthrough site by `https`; every HTTP site by the others (`http`)."""
    resources = item.resources
    if resources is None:
        return False
    if listener.startswith("tcp-"):
        return listener == f"tcp-{name}"
    if listener == "https":
        return resources.tls is not None or resources.passthrough is not None
    return resources.tcp_listener is None and resources.passthrough is None


class Clock:
    def __init__(self, into: dict[str, float]) -> None:
        self._into = into
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self._into[stage] = round((now - self._last) * 1000, 2)
        self._last = now


def freeze_heap() -> None:
    """Move the long-lived objects (every site's model and resources) out of the cyclic
    GC's sight: a full collection over 10,000 sites costs ~170 ms and would land in the
    middle of a one-site change. Collect first, so no garbage is frozen with them."""
    gc.collect()
    gc.freeze()
