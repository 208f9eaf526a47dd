"""The status page: the daemon's status file as a small read-only HTML page, served at `/`
on the metrics address.

No script, no external asset, no build step: it works offline on a node and refreshes
itself with a meta refresh. Everything in it that came from a site file (names, paths,
problems) is escaped, and the server sends a Content-Security-Policy that allows no
script at all, so a hostile site file cannot run code in an operator's browser.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping
from typing import Any

CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
REFRESH_S = 5
_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #ddd;
         vertical-align: top; }
th { background: #f4f4f4; }
.serving { color: #176b2c; }
.invalid, .error { color: #b00020; }
.pending, .warn { color: #9a6700; }
code { font: 12px ui-monospace, monospace; }
ul { margin: 0; padding-left: 1.1em; }
"""


def page(document: Mapping[str, Any] | None, reason: str = "") -> str:
    """The HTML page of a status document (None: no status yet, with the reason)."""
    body = _sites(document) + _last_pass(document) if document else (
        f"<p class=error>No status yet: {_e(reason)}</p>")
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta http-equiv=refresh content={REFRESH_S}>"
            "<meta name=viewport content='width=device-width'>"
            f"<title>controlplane status</title><style>{_STYLE}</style></head>"
            f"<body><h1>controlplane</h1>{body}</body></html>\n")


def _sites(document: Mapping[str, Any]) -> str:
    sites = document.get("sites") or {}
    head = ("<tr><th>site</th><th>state</th><th>domains</th><th>file</th><th>upstream</th>"
            "<th>version serving</th><th>certificate</th><th>problems and warnings</th></tr>")
    rows = "".join(_row(name, sites[name]) for name in sorted(sites))
    return f"<h2>{len(sites)} sites</h2><table>{head}{rows}</table>"


def _row(name: str, site: Mapping[str, Any]) -> str:
    state = str(site.get("state", "?"))
    kind = "serving" if state == "serving" else "invalid" if state == "invalid" else "pending"
    problems = [f"<li class=error>{_e(_text(p))}</li>" for p in site.get("problems") or ()]
    warnings = [f"<li class=warn>{_e(_text(w))}</li>" for w in site.get("warnings") or ()]
    notes = f"<ul>{''.join(problems + warnings)}</ul>" if problems or warnings else "-"
    cells = (
        f"<td>{_e(name)}</td><td class={kind}>{_e(state)}</td>",
        f"<td>{_e(', '.join(str(d) for d in site.get('domains') or ()) or '-')}</td>",
        f"<td><code>{_e(site.get('file', '-'))}</code></td>",
        f"<td>{_upstream(site.get('upstream'))}</td>",
        f"<td><code>{_e(site.get('serving') or '-')}</code></td>",
        f"<td>{_e(site.get('certificate_expiry') or '-')}</td><td>{notes}</td>",
    )
    return f"<tr>{''.join(cells)}</tr>"


def _last_pass(document: Mapping[str, Any]) -> str:
    last = document.get("last_pass") or {}
    if not last:
        return ""
    errors = "".join(f"<li class=error>{_e(_text(e))}</li>" for e in last.get("errors") or ())
    versions = ", ".join(f"{k} {v}" for k, v in sorted((last.get("versions") or {}).items()))
    return (f"<h2>Last pass</h2><p>at {_e(_time(last.get('at')))}; confirmed by Envoy:"
            f" {_e(last.get('confirmed'))}; versions: <code>{_e(versions or '-')}</code></p>"
            + (f"<ul>{errors}</ul>" if errors else ""))


def _upstream(value: Any) -> str:
    """A site's upstream: each endpoint with its state, Envoy's health verdict and, when
    it does not serve, the hint (escaped HTML)."""
    if not isinstance(value, Mapping) or not isinstance(value.get("endpoints"), Mapping):
        return "-" if value is None else _e(value)
    items = []
    for endpoint, entry in sorted(value["endpoints"].items()):
        entry = entry if isinstance(entry, Mapping) else {}
        state, health = entry.get("state"), entry.get("health")
        words = [str(w) for w in (state, health and f"health: {health}") if w]
        good = state in (None, "up") and health in (None, "healthy")
        hint = f"<br><small>{_e(entry['hint'])}</small>" if entry.get("hint") else ""
        items.append(f"<li class={'serving' if good else 'error'}><code>{_e(endpoint)}</code>"
                     f" {_e(', '.join(words))}{hint}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else "-"


def _text(value: Any) -> str:
    """A problem as a line, whether the status holds it as text or as an object."""
    if isinstance(value, Mapping):
        where = str(value.get("file", ""))
        if value.get("line"):
            where += f":{value['line']}"
        field = f" {value['field']}:" if value.get("field") else ""
        return f"{where}:{field} {value.get('reason', '')}"
    return str(value)


def _time(value: Any) -> str:
    if isinstance(value, int | float):
        return datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat(timespec="seconds")
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
