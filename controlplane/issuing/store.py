"""The ACME files on disk: the account key, each site's certificate and key, the
schedule (backoff, renewal info) and operators' renewal requests; all under
`STATE/acme/`, folders 0700 and files 0600, so only the daemon's uid (which is Envoy's in
compose and k3s) reads them.

A site's folder holds `fullchain.pem` and `privkey.pem` as links into `..data`, itself a
link to one version folder (`..v-SERIAL`). A new certificate is written into a new
version folder, then `..data` is swapped by one rename: Envoy's SDS watches the site's
folder (`watched_directory`), sees that one rename and reloads both files together, so
it never reads a new certificate beside an old key, and the secret's file names never
change: renewal touches no listener and no SDS file. The previous version stays until
the next swap, so a renewal Envoy does not take can be swapped back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from controlplane.settings import Settings
from controlplane.site.spec import Site
from controlplane.writing import STATE_MODE, TEMP_PREFIX, ensure_folder, sync_folder, write_atomic

ACME_DIR = "acme"
CERTS_DIR = "certs"
RENEW_DIR = "renew"
CERT_FILE, KEY_FILE = "fullchain.pem", "privkey.pem"
DATA_LINK = "..data"
VERSION_PREFIX = "..v-"
ACCOUNT_FILE = "account.json"
SCHEDULE_FILE = "schedule.json"


def root(settings: Settings) -> Path:
    return settings.state.absolute() / ACME_DIR


def site_folder(settings: Settings, site: str) -> Path:
    return root(settings) / CERTS_DIR / site


def files(settings: Settings, site: str) -> tuple[str, str]:
    """(certificate, key) of a site, as Envoy names them."""
    folder = site_folder(settings, site)
    return str(folder / CERT_FILE), str(folder / KEY_FILE)


def private_folder(settings: Settings, *parts: str) -> Path:
    """`STATE/acme/PARTS...`, each level made 0700 (the state folder is the daemon's)."""
    path = root(settings)
    ensure_folder(path, 0o700)
    for part in parts:
        path = path / part
        ensure_folder(path, 0o700)
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class Current:
    """The certificate a site serves now, as read from its folder."""

    chain: bytes
    certificate: x509.Certificate
    version: str
    """The version folder's name."""

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def domains(self) -> tuple[str, ...]:
        try:
            names = self.certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            return ()
        return tuple(sorted(names))

    @property
    def not_before(self) -> float:
        return self.certificate.not_valid_before_utc.timestamp()

    @property
    def not_after(self) -> float:
        return self.certificate.not_valid_after_utc.timestamp()


def current(settings: Settings, site: str) -> Current | None:
    """The site's certificate, or None (not issued yet, or unreadable)."""
    folder = site_folder(settings, site)
    try:
        version = os.readlink(folder / DATA_LINK)
        chain = (folder / CERT_FILE).read_bytes()
        return Current(chain=chain, certificate=x509.load_pem_x509_certificates(chain)[0],
                       version=version)
    except (OSError, ValueError, IndexError):
        return None


def install(settings: Settings, site: str, chain: bytes, key: bytes) -> str | None:
    """Write a new certificate and key and make them the site's, by one rename; the
    version folder it replaced (kept until the next install), or None."""
    folder = private_folder(settings, CERTS_DIR, site)
    serial = format(x509.load_pem_x509_certificates(chain)[0].serial_number, "x")
    version = f"{VERSION_PREFIX}{serial}-{time.time_ns()}"
    staging = folder / version
    staging.mkdir(mode=0o700)
    write_atomic(staging / CERT_FILE, chain, STATE_MODE, force=True)
    write_atomic(staging / KEY_FILE, key, STATE_MODE, force=True)
    for name in (CERT_FILE, KEY_FILE):
        if not (folder / name).is_symlink():
            _link(folder, name, f"{DATA_LINK}/{name}")
    previous = _swap(folder, version)
    _prune(folder, keep={version, previous})
    return previous


def restore(settings: Settings, site: str, version: str) -> None:
    """Make an earlier version the site's again (Envoy did not take the new one)."""
    folder = site_folder(settings, site)
    if (folder / version).is_dir():
        _swap(folder, version)


def _swap(folder: Path, version: str) -> str | None:
    try:
        previous: str | None = os.readlink(folder / DATA_LINK)
    except OSError:
        previous = None
    _link(folder, DATA_LINK, version)
    return previous


def _link(folder: Path, name: str, target: str) -> None:
    temp = folder / f"{TEMP_PREFIX}{name}-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    os.symlink(target, temp)
    os.replace(temp, folder / name)
    sync_folder(folder)


def _prune(folder: Path, keep: set[str | None]) -> None:
    for entry in folder.iterdir():
        if entry.name.startswith(VERSION_PREFIX) and entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def issued_sites(settings: Settings) -> list[str]:
    """Sites that have a certificate folder."""
    folder = root(settings) / CERTS_DIR
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir())


def remove(settings: Settings, site: str) -> None:
    shutil.rmtree(site_folder(settings, site))
    with contextlib.suppress(FileNotFoundError):
        (root(settings) / RENEW_DIR / site).unlink()


def request_renewal(settings: Settings, site: str) -> None:
    """An operator asks for a renewal now (`controlplane certificates --renew SITE`)."""
    folder = private_folder(settings, RENEW_DIR)
    write_atomic(folder / site, b"", STATE_MODE, force=True)


def renewal_requested(settings: Settings, site: str) -> bool:
    return (root(settings) / RENEW_DIR / site).exists()


def renewal_done(settings: Settings, site: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (root(settings) / RENEW_DIR / site).unlink()


def load_json(settings: Settings, name: str) -> dict[str, Any]:
    path = root(settings) / name
    try:
        found = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def save_json(settings: Settings, name: str, document: dict[str, Any]) -> None:
    path = private_folder(settings) / name
    write_atomic(path, json.dumps(document, sort_keys=True, indent=1).encode(), STATE_MODE)


def resolve(site: Site, settings: Settings) -> Site:
    """The site as it serves now: an ACME site with its issued files named as its
    certificate, or as a plain HTTP site while none is issued."""
    tls = site.spec.tls
    if tls is None or not tls.acme:
        return site
    cert, key = files(settings, site.name)
    if not (os.path.isfile(cert) and os.path.isfile(key)):
        return dataclasses.replace(site, spec=site.spec.model_copy(update={"tls": None}))
    issued = tls.model_copy(update={"cert": cert, "key": key})
    return dataclasses.replace(site, spec=site.spec.model_copy(update={"tls": issued}))
