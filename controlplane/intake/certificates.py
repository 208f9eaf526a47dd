"""Edge I/O: read a TLS site's certificate and key files and judge them before Envoy does.

Errors (the site is not used): a file that cannot be read (or is not a regular file,
or is over `MAX_PEM_BYTES`: never waited on, see `reading.read_bounded`), is not PEM, or
a key that does not belong to the certificate. Warnings (the site serves): the certificate does not
cover one of the site's domains, or it expires within `EXPIRY_WARNING` (or has expired).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from controlplane.errors import Problem
from controlplane.intake.reading import read_bounded
from controlplane.site.features import Tls

EXPIRY_WARNING = datetime.timedelta(days=14)
MAX_PEM_BYTES = 1024 * 1024


def inspect(source: str, tls: Tls, domains: Sequence[str],
            now: datetime.datetime | None = None) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) about the certificate files of one site."""
    cert, key_file = tls.files()
    chain, problem = _read(source, "tls.cert", cert)
    key_bytes, key_problem = _read(source, "tls.key", key_file)
    problems = [p for p in (problem, key_problem) if p is not None]
    if problems:
        return problems, []
    assert chain is not None and key_bytes is not None
    swapped = _swapped(source, tls, chain, key_bytes)
    if swapped is not None:
        return [swapped], []
    try:
        certificate = x509.load_pem_x509_certificates(chain)[0]
    except ValueError as exc:
        return [Problem(source, "tls.cert", f"{tls.cert}: not a PEM certificate: {exc}")], []
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError) as exc:
        return [Problem(source, "tls.key", f"{tls.key}: not an unencrypted PEM private key:"
                        f" {exc}")], []
    if not _belongs(key, certificate):
        return [Problem(source, "tls.key", f"{tls.key} does not match the certificate"
                        f" {tls.cert}")], []
    return [], _coverage(source, certificate, domains) + _expiry(source, tls, certificate, now)


def expiry_of(path: str) -> float | None:
    """When the first certificate in `path` expires (Unix time), or None if unreadable."""
    try:
        chain = read_bounded(path, MAX_PEM_BYTES)
        return x509.load_pem_x509_certificates(chain)[0].not_valid_after_utc.timestamp()
    except (OSError, ValueError, IndexError):
        return None


def _read(source: str, field: str, path: str) -> tuple[bytes | None, Problem | None]:
    """Bounded in time and size: a FIFO, device or socket is refused, never waited on."""
    try:
        return read_bounded(path, MAX_PEM_BYTES), None
    except OSError as exc:
        return None, Problem(source, field, f"{path}: cannot read: {exc.strerror}")


def _swapped(source: str, tls: Tls, chain: bytes, key: bytes) -> Problem | None:
    """A key where the certificate should be, or the other way round: say so."""
    cert_is_key = b"PRIVATE KEY-----" in chain and b"-----BEGIN CERTIFICATE" not in chain
    key_is_cert = b"-----BEGIN CERTIFICATE" in key and b"PRIVATE KEY-----" not in key
    if cert_is_key and key_is_cert:
        return Problem(source, "tls", f"cert and key are swapped: {tls.cert} holds a private"
                       f" key and {tls.key} a certificate; exchange the two paths")
    if cert_is_key:
        return Problem(source, "tls.cert", f"{tls.cert} holds a private key, not a"
                       " certificate; tls.cert names the certificate chain (fullchain.pem)")
    if key_is_cert:
        return Problem(source, "tls.key", f"{tls.key} holds a certificate, not a private"
                       " key; tls.key names the key (privkey.pem)")
    return None


def _belongs(key: PrivateKeyTypes, certificate: x509.Certificate) -> bool:
    form = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(key.public_key().public_bytes(*form) ==
                certificate.public_key().public_bytes(*form))


def names_of(certificate: x509.Certificate) -> list[str]:
    """The DNS names a certificate is valid for (its SANs; its CN when it has none)."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [n.lower() for n in extension.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        attributes = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return [str(a.value).lower() for a in attributes]


def covers(names: Sequence[str], domain: str) -> bool:
    """A name covers the same name, and `*.x` covers one more label in front of `x`."""
    if domain in names:
        return True
    head, _, rest = domain.partition(".")
    return bool(rest) and head != "*" and f"*.{rest}" in names


def _coverage(source: str, certificate: x509.Certificate,
              domains: Sequence[str]) -> list[Problem]:
    names = names_of(certificate)
    missing = [d for d in domains if d != "*" and not covers(names, d)]
    if not missing:
        return []
    return [Problem(source, "tls.cert", f"the certificate does not cover {', '.join(missing)}"
                    f" (it names {', '.join(names) or 'nothing'})")]


def _expiry(source: str, tls: Tls, certificate: x509.Certificate,
            now: datetime.datetime | None) -> list[Problem]:
    now = now or datetime.datetime.now(datetime.UTC)
    ends = certificate.not_valid_after_utc
    if ends <= now:
        return [Problem(source, "tls.cert", f"{tls.cert} expired on {ends:%Y-%m-%d %H:%M} UTC")]
    if ends - now <= EXPIRY_WARNING:
        days = (ends - now).days
        return [Problem(source, "tls.cert", f"{tls.cert} expires in {days} days"
                        f" ({ends:%Y-%m-%d %H:%M} UTC)")]
    return []
