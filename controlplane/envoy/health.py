"""Envoy's own health-check verdicts on the endpoints of the sites that have health
checks, read from its admin socket for the daemon's upstream status.

One read is `/clusters?format=json`, filtered to the clusters asked about (Envoy's
`filter` is an RE2 over cluster names; past `max_filter` characters every cluster is
read, within the admin client's byte bound), and bounded to `HEALTH_TIMEOUT_S` in
total, so a slow Envoy holds the daemon's loop no longer than that. Each endpoint, by
socket path or `HOST:PORT`, is `healthy`, `unhealthy` (it failed Envoy's active checks)
or `pending` (not checked yet).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from controlplane.envoy.admin import AdminClient
from controlplane.errors import EnvoyBadAnswer
from controlplane.settings import Settings

HEALTH_TIMEOUT_S = 0.5
"""One read is bounded to this: the loop never waits longer for Envoy."""


class HealthReader:
    """Reads Envoy's health verdicts through the admin socket of `settings`."""

    def __init__(self, settings: Settings) -> None:
        if settings.admin_socket is None:
            raise ValueError("health verdicts need an admin socket")
        self._client = AdminClient(settings.admin_socket, settings, timeout=HEALTH_TIMEOUT_S)

    def read(self, clusters: list[str], max_filter: int) -> dict[str, dict[str, str]]:
        """Cluster -> endpoint -> verdict, for these clusters (those Envoy has)."""
        pattern = "^(" + "|".join(re.escape(c) for c in clusters) + ")$"
        query = {"format": "json", **({"filter": pattern} if len(pattern) <= max_filter else {})}
        body = self._client.get("/clusters?" + urllib.parse.urlencode(query))
        wanted = set(clusters)
        try:
            statuses = json.loads(body).get("cluster_statuses", [])
            return {str(c["name"]): host_health(c.get("host_statuses", []))
                    for c in statuses if isinstance(c, dict) and c.get("name") in wanted}
        except (ValueError, AttributeError, TypeError) as exc:
            raise EnvoyBadAnswer(f"admin /clusters: not Envoy's JSON: {exc!r:.100}") from exc


def host_health(hosts: list[Any]) -> dict[str, str]:
    """Endpoint -> verdict from the `host_statuses` of one cluster."""
    found = {}
    for host in hosts:
        address = host.get("address", {})
        pipe, tcp = address.get("pipe"), address.get("socket_address")
        if pipe is not None:
            where = str(pipe.get("path", ""))
        elif tcp is not None:
            ip, port = str(tcp.get("address", "")), tcp.get("port_value")
            where = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        else:
            continue
        flags = host.get("health_status", {})
        found[where] = ("pending" if flags.get("pending_active_hc") else
                        "unhealthy" if flags.get("failed_active_health_check") else "healthy")
    return found
