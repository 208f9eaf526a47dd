"""Pure rendering of TLS: one SDS secret per certificate file pair, and one HTTPS
filter chain per TLS site, matched by SNI on the site's domains.

Certificates reach Envoy through file-based SDS: `OUT/sds/<secret>.json` holds one
Secret naming the certificate and key files, with `watched_directory` on the
certificate's folder, so a renewal that renames files into that folder (certbot's
symlink swap, Kubernetes' `..data` swap) is reloaded by Envoy without touching the
listener. Envoy accepts one secret per SDS file and spends two inotify instances on each
(the SDS file and the watched folder), so sites that share a certificate share its
secret, and `Settings.max_certificates` bounds the total.
"""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path
from typing import Any

from controlplane.errors import Problem
from controlplane.site.features import Tls

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TLS_CONTEXT = ("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
               ".DownstreamTlsContext")
TLS_INSPECTOR = ("type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3"
                 ".TlsInspector")
SDS_FOLDER = "sds"
_VERSIONS = {"1.2": "TLSv1_2", "1.3": "TLSv1_3"}


def secret_name(tls: Tls) -> str:
    """The same certificate and key files give the same secret, whoever uses them."""
    cert, key = tls.files()
    digest = hashlib.sha256(f"{cert}\x00{key}".encode()).hexdigest()
    return f"tls-{digest[:12]}"


def secret(tls: Tls) -> dict[str, Any]:
    """The SDS Secret: Envoy reads the files, and re-reads both on any rename into the
    certificate's folder."""
    cert, key = tls.files()
    return {
        "name": secret_name(tls),
        "tls_certificate": {
            "certificate_chain": {"filename": cert},
            "private_key": {"filename": key},
            "watched_directory": {"path": posixpath.dirname(cert)},
        },
    }


def sds_path(out_dir: Path, name: str) -> Path:
    return out_dir.absolute() / SDS_FOLDER / f"{name}.json"


def tls_context(tls: Tls, sds_file: Path | None) -> dict[str, Any]:
    """The DownstreamTlsContext of a site's filter chain. `sds_file` None names a static
    secret instead (the scratch bootstrap of `envoy --mode validate`)."""
    reference: dict[str, Any] = {"name": secret_name(tls)}
    if sds_file is not None:
        reference["sds_config"] = {"path_config_source": {"path": str(sds_file)},
                                   "resource_api_version": "V3"}
    return {"@type": TLS_CONTEXT, "common_tls_context": {
        "tls_params": {"tls_minimum_protocol_version": _VERSIONS[tls.min_version]},
        "alpn_protocols": list(tls.alpn),
        "tls_certificate_sds_secret_configs": [reference],
    }}


def filter_chain(name: str, domains: list[str], context: dict[str, Any],
                 hcm: dict[str, Any]) -> dict[str, Any]:
    """A site's HTTPS filter chain: its SNI names, its certificate, the shared routes.
    A site serving `*` takes connections whose SNI no other site claims (or none)."""
    chain: dict[str, Any] = {"name": name}
    if "*" not in domains:
        chain["filter_chain_match"] = {"server_names": list(domains)}
    chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": context}
    chain["filters"] = [{"name": "envoy.filters.network.http_connection_manager",
                         "typed_config": hcm}]
    return chain


TLS_INSPECTOR_FILTER = {"name": "envoy.filters.listener.tls_inspector",
                        "typed_config": {"@type": TLS_INSPECTOR}}
"""The HTTPS listener's filter that reads the SNI its filter chains match on."""


def certificate_overflow(secrets: dict[str, tuple[str, str]], limit: int,
                         established: set[str] | frozenset[str] = frozenset()) -> dict[
        str, list[Problem]]:
    """Sites (name -> (source, secret name)) whose certificate would be one more than
    `limit` distinct ones: `established` sites (serving their last good version) keep
    their slots first, so a newcomer cannot push one out; then in name order."""
    seen: set[str] = set()
    problems: dict[str, list[Problem]] = {}
    for name in sorted(secrets, key=lambda n: (n not in established, n)):
        source, secret_name = secrets[name]
        if secret_name in seen or len(seen) < limit:
            seen.add(secret_name)
            continue
        problems[name] = [Problem(source, "tls", f"this would be certificate {limit + 1};"
                                  f" at most {limit} distinct certificates are allowed (Envoy"
                                  " spends 2 inotify instances on each): share certificates"
                                  " or raise max_certificates and fs.inotify.max_user_instances")]
    return problems
