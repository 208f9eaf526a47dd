"""Which certificates Envoy serves, by serial (admin `/certs`): a renewed ACME
certificate counts as taken only once its serial is there."""

from __future__ import annotations

from controlplane.envoy.admin import AdminClient
from controlplane.settings import Settings


def served_serials(settings: Settings) -> set[str]:
    """The serials of every certificate Envoy holds (empty without an admin socket)."""
    if settings.admin_socket is None:
        return set()
    return AdminClient(settings.admin_socket, settings).certificate_serials()
