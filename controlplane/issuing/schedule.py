"""The ACME schedule of each site, kept in `STATE/acme/schedule.json` so that a restarting
daemon keeps its backoff: failures, the next attempt, the last error, and the server's
renewal info (ARI). Renewal is due when a third of the certificate's lifetime is left,
less a jitter fixed per certificate, unless the server's renewal info says otherwise.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from controlplane.issuing import store
from controlplane.settings import Settings

RETRY_S = 60.0
RETRY_MAX_S = 24 * 3600.0
RENEW_AT = 1 / 3
"""Renew when this fraction of the certificate's lifetime is left (Let's Encrypt's advice)."""
JITTER = 0.05
"""...up to this fraction of the lifetime earlier, fixed per certificate (by its serial),
so certificates issued together do not renew together."""


@dataclass(slots=True, kw_only=True)
class Job:
    """What the issuer knows of one site that asks for a certificate."""

    domains: tuple[str, ...]
    failures: int = 0
    next_attempt: float = 0.0
    reason: str | None = None
    """Why the last order failed (the status says it)."""
    ari_at: float | None = None
    ari_check_after: float = 0.0
    ari_serial: str | None = None



def failed(job: Job, reason: str, retry_after: float | None) -> None:
    """Back off: `RETRY_S`, doubled per failure up to `RETRY_MAX_S`, and at least what
    the server asked (`Retry-After`)."""
    job.failures += 1
    wait = min(RETRY_S * 2 ** min(job.failures - 1, 20), RETRY_MAX_S)
    job.next_attempt = time.time() + max(wait, retry_after or 0.0)
    job.reason = reason


def load(settings: Settings) -> dict[str, Job]:
    jobs = {}
    for name, saved in store.load_json(settings, store.SCHEDULE_FILE).items():
        if isinstance(saved, dict) and isinstance(saved.get("domains"), list):
            jobs[name] = _job(saved)
    return jobs


def _job(saved: dict[str, Any]) -> Job:
    return Job(domains=tuple(saved["domains"]), failures=int(saved.get("failures", 0)),
               next_attempt=float(saved.get("next_attempt", 0)), reason=saved.get("reason"),
               ari_at=saved.get("ari_at"), ari_check_after=float(saved.get("ari_check_after", 0)),
               ari_serial=saved.get("ari_serial"))


def save(settings: Settings, jobs: dict[str, Job]) -> None:
    store.save_json(settings, store.SCHEDULE_FILE, {
        name: {"domains": list(job.domains), "failures": job.failures,
               "next_attempt": job.next_attempt, "reason": job.reason, "ari_at": job.ari_at,
               "ari_check_after": job.ari_check_after, "ari_serial": job.ari_serial}
        for name, job in sorted(jobs.items())})


def renewal_at(current: store.Current, ari_at: float | None) -> float:
    """When to renew: the server's suggestion (ARI) if it gave one, else when a third of
    the lifetime is left, up to `JITTER` of it earlier (fixed by the serial)."""
    if ari_at is not None:
        return ari_at
    lifetime = current.not_after - current.not_before
    spread = int(hashlib.sha256(current.serial.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return current.not_after - lifetime * (RENEW_AT + JITTER * spread)
