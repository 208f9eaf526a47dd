"""`controlplane certificates`: the ACME certificates in the state folder, an operator's
request to renew one now, and the removal of those no site asks for any more.

A site that stops asking (its file removed, or `acme: true` taken out) keeps its files,
so a mistake costs no new order against the CA's rate limits; `--clean` removes them
once that is meant.
"""

from __future__ import annotations

import time
from typing import Any

from controlplane.errors import SettingsError
from controlplane.issuing import store
from controlplane.settings import Settings


def report(settings: Settings, asking: set[str]) -> list[dict[str, Any]]:
    """One entry per site that asks or has files: domains, serial, validity."""
    schedule = store.load_json(settings, store.SCHEDULE_FILE)
    found = []
    for site in sorted(asking | set(store.issued_sites(settings))):
        current = store.current(settings, site)
        saved = schedule.get(site)
        saved = saved if isinstance(saved, dict) else {}
        entry: dict[str, Any] = {"site": site, "asks": site in asking,
                                 "folder": str(store.site_folder(settings, site))}
        if current is not None:
            entry.update(domains=list(current.domains), serial=current.serial,
                         not_after=_clock(current.not_after))
        if saved.get("reason"):
            entry.update(last_error=saved["reason"],
                         next_attempt=_clock(float(saved.get("next_attempt", 0))))
        entry["renewal_requested"] = store.renewal_requested(settings, site)
        found.append(entry)
    return found


def text(entries: list[dict[str, Any]]) -> str:
    lines = []
    for entry in entries:
        state = (f"serial {entry['serial']}, until {entry['not_after']}" if "serial" in entry
                 else "no certificate yet")
        asks = "" if entry["asks"] else " (no site asks for it: --clean removes it)"
        lines.append(f"{entry['site']}: {state}{asks}")
        if "last_error" in entry:
            lines.append(f"  last order failed: {entry['last_error']};"
                         f" next attempt at {entry['next_attempt']}")
        if entry["renewal_requested"]:
            lines.append("  renewal requested")
    return "\n".join(lines) if lines else "no ACME certificates"


def renew(settings: Settings, site: str, asking: set[str]) -> None:
    """Ask the running daemon to renew the site's certificate at once."""
    if site not in asking:
        raise SettingsError(f"--renew {site}: no site file of that name asks for"
                            " 'tls: {acme: true}'")
    store.request_renewal(settings, site)


def clean(settings: Settings, asking: set[str]) -> list[str]:
    """Remove the files of sites that no longer ask; the names removed."""
    removed = [site for site in store.issued_sites(settings) if site not in asking]
    for site in removed:
        store.remove(settings, site)
    return removed


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
