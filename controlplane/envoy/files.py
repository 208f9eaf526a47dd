"""The output files as the Publisher knows them: what each holds, whether Envoy took it
(`Confirmation`), what one apply did (`Report`) and what to say of a refusal, what a
previous run left on disk, and the one-shot write of `render`.
"""

from __future__ import annotations

import contextlib
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from controlplane.envoy.admin import AdminClient, Counters
from controlplane.errors import (
    ControlPlaneError,
    EnvoyCannotBind,
    EnvoyRejected,
    EnvoyUnavailable,
    OutputError,
)
from controlplane.render.rendering import discovery_response, fragment
from controlplane.render.snapshot import Snapshot
from controlplane.render.tls import SDS_FOLDER
from controlplane.settings import CDS_FILE, LDS_FILE, RDS_FILE
from controlplane.writing import ensure_folder, write_atomic

FILES = {"cds": CDS_FILE, "lds": LDS_FILE, "rds": RDS_FILE}
_E = TypeVar("_E", bound=ControlPlaneError)


class Confirmation(enum.Enum):
    """Whether Envoy took what was written."""

    CONFIRMED = "confirmed"
    """Envoy's admin socket says it runs it."""
    UNCONFIRMED = "unconfirmed"
    """Not (yet): Envoy down, slow or rejecting, or the write failed."""
    UNASKED = "unasked"
    """Written, with no admin socket to ask."""

    def as_status(self) -> bool | None:
        """The status file's `confirmed`: true, false, or null (no admin socket)."""
        return {Confirmation.CONFIRMED: True, Confirmation.UNCONFIRMED: False}.get(self)


@dataclass(slots=True)
class FileState:
    """What one output file holds, and whether Envoy confirmed it."""

    fragments: tuple[str, ...] = ()
    version: str = ""
    confirmed: Confirmation = Confirmation.UNCONFIRMED
    last_confirmed: tuple[str, ...] | None = None
    before: Counters | None = None
    """Envoy's counters read just before this version was written, kept until it is
    confirmed: a later pass still sees a rejection that came after a timeout. None when
    unknown (a file found on disk at start)."""


@dataclass(slots=True, kw_only=True)
class Report:
    """What one apply did; failures are kept as the errors raised, each naming its file."""

    written: list[str] = field(default_factory=list)
    asked: bool = False
    """Envoy's admin socket was asked something in this apply (never without one)."""
    rejected: list[EnvoyRejected] = field(default_factory=list)
    unconfirmed: list[EnvoyUnavailable] = field(default_factory=list)
    errors: list[ControlPlaneError] = field(default_factory=list)

    @property
    def confirmed(self) -> bool:
        return not (self.rejected or self.unconfirmed or self.errors)


def cause(admin: AdminClient | None, kind: str, rejected: EnvoyRejected) -> EnvoyRejected:
    """A listener Envoy could not bind (its port taken) is not the content's fault:
    say which address, as an EnvoyCannotBind. Asked before the re-install, which
    clears Envoy's record of the failure."""
    if kind != "lds" or admin is None:
        return rejected
    try:
        failed = admin.listener_errors()
    except EnvoyUnavailable:
        return rejected
    bind = {name: why for name, why in failed.items() if "cannot bind" in why}
    if not bind:
        return rejected
    reasons = "; ".join(f"listener {name!r}: {why}" for name, why in sorted(bind.items()))
    return EnvoyCannotBind(f"{rejected}; Envoy says: {reasons}", bind)


def about(what: str, exc: _E) -> _E:
    """The same kind of error, its message prefixed with what it is about."""
    return type(exc)(f"{what}: {exc}")


def out_paths(out_dir: Path) -> dict[str, Path]:
    return {kind: out_dir / name for kind, name in FILES.items()}


def write_once(out_dir: Path, target: Snapshot, *, pretty: bool = False) -> None:
    """`render`: every file of the snapshot, written once in the make-before-break order
    (certificates, clusters, routes, listeners), with no Envoy to confirm. `pretty`
    indents the JSON for people to read."""
    def encoded(fragments: list[str]) -> bytes:
        _, data = discovery_response(fragments)
        if pretty:
            data = (json.dumps(json.loads(data), indent=2, sort_keys=True) + "\n").encode()
        return data

    for name, text in target.secrets.items():
        ensure_folder(out_dir / SDS_FOLDER)
        write_atomic(out_dir / SDS_FOLDER / f"{name}.json", encoded([text]))
    for kind, fragments in target.files().items():
        write_atomic(out_dir / FILES[kind], encoded(list(fragments)))


def read_state(out_dir: Path, kind: str) -> FileState:
    """A restart continues from what is on disk, so make-before-break still holds."""
    try:
        document = json.loads((out_dir / FILES[kind]).read_bytes())
        fragments = tuple(fragment(r, None) for r in document["resources"])
        return FileState(fragments=fragments, version=str(document["version_info"]),
                         confirmed=Confirmation.UNCONFIRMED)
    except (OSError, ValueError, KeyError, TypeError):
        return FileState(version="", confirmed=Confirmation.UNCONFIRMED)


def read_secrets(out_dir: Path) -> dict[str, str]:
    """What each SDS file a previous run left holds, by secret name."""
    folder = out_dir / SDS_FOLDER
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            document = json.loads(path.read_bytes())
            found[path.stem] = fragment(document["resources"][0], None)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
    return found


def cluster_names(fragments: tuple[str, ...]) -> dict[str, str]:
    """Fragment -> name of the clusters a previous run left in cds.json: the one place
    our own output is read back, since that run's snapshot is gone."""
    names = {}
    for text in fragments:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            names[text] = str(json.loads(text)["name"])
    return names


def write_secrets(out_dir: Path, held: dict[str, str], report: Report,
                  secrets: Mapping[str, str]) -> None:
    """New or changed SDS files, one secret each (Envoy takes one per file); `held` is
    what each SDS file holds, kept up to date."""
    folder = out_dir / SDS_FOLDER
    for name, text in sorted(secrets.items()):
        if held.get(name) == text and (folder / f"{name}.json").exists():
            continue
        ensure_folder(folder)
        _, data = discovery_response([text])
        write_atomic(folder / f"{name}.json", data)
        held[name] = text
        report.written.append(f"{SDS_FOLDER}/{name}.json")


def remove_secrets(out_dir: Path, held: dict[str, str], report: Report,
                   secrets: Mapping[str, str]) -> None:
    """The SDS files no confirmed listener names any more (not in `secrets`)."""
    for name in sorted(set(held) - set(secrets)):
        try:
            (out_dir / SDS_FOLDER / f"{name}.json").unlink(missing_ok=True)
        except OSError as exc:
            report.errors.append(OutputError(f"removing {SDS_FOLDER}/{name}.json:"
                                             f" {exc.strerror}"))
            continue
        del held[name]


def not_loaded(state: FileState, now: Counters | None) -> bool:
    """A file written before Envoy (re)started, or before this daemon did, that Envoy
    does not run (it refused it at start: a port taken) is renamed again, or Envoy
    would never look at it again. A file written in this run keeps its own counters
    and is not rewritten while Envoy is merely slow."""
    return bool(now is not None and state.confirmed is Confirmation.UNCONFIRMED and (
        state.before is None and state.version and now.version != state.version))


def adopt(states: Mapping[str, FileState], counters: Mapping[str, Counters]) -> None:
    """After a restart: a file on disk that Envoy runs (same version) is confirmed,
    and is the one to re-install after a later rejection."""
    for kind, state in states.items():
        now = counters.get(kind)
        if now is not None and state.before is not None and (
                now.success < state.before.success or (
                    now.version == state.version and now.success <= state.before.success)):
            # Envoy restarted: its counters began again. Also when they have come back
            # to where they were: one Envoy takes the version written only by an update
            # after `before` was read, which moves `update_success`; so it is a new
            # Envoy that loaded the file at its start.
            state.before = None
        if state.confirmed is Confirmation.UNCONFIRMED and state.before is None and (
                now is not None and now.version == state.version != ""):
            state.confirmed, state.last_confirmed = Confirmation.CONFIRMED, state.fragments
