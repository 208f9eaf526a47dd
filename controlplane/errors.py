"""The exception tree, split by what the caller should do about it.

    ControlPlaneError
    ├── SiteError            permanent for this content: the user must edit the file.
    │                        Carries every `Problem` found (file, line, field, reason),
    │                        at most `MAX_PROBLEMS`, so all are reported at once.
    ├── SettingsError        permanent: a bad flag or settings file; the CLI exits 2.
    ├── FolderBusy           permanent while it lasts: another controlplane owns the
    │                        output folder (its lock file); the CLI exits 3.
    ├── SitesUnavailable     temporary: the sites folder is missing; what serves stays.
    ├── Stopping             the daemon is stopping: the pass ends where it is.
    ├── OutputError          temporary: the output folder is full, read-only, missing.
    │                        The old files stay intact; the next pass tries again.
    └── EnvoyError           about the Envoy process or binary
        ├── EnvoyUnavailable temporary: the admin socket did not give an answer
        │   ├── EnvoyRefused     nothing listens (Envoy is down)
        │   ├── EnvoyTimeout     no complete answer in time (Envoy busy or hung)
        │   └── EnvoyBadAnswer   an answer that is not Envoy's (garbage, too big, HTTP error)
        ├── EnvoyRejected    Envoy refused a file it was given; carries its reason.
        │   └── EnvoyCannotBind  a listener's address is taken: not the sites' fault
        └── EnvoyBinaryError the binary could not be run at all (missing, crashed).

Each class carries `kind` (the label of `controlplane_errors_total`) and `retry` (whether
a later pass can help by itself). Errors and Problems stay objects through a pass (its
`Outcome` holds them); only the edges turn them into text: the status file, the log, the
metrics (by `kind`) and the CLI (exit codes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

_PART = re.compile(r"\[([0-9]+)\]|([^.\[\]]+)")


class ControlPlaneError(Exception):
    """Base of every error this package raises on purpose."""

    kind: ClassVar[str] = "other"
    retry: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one site file: where, which field, and why.

    `field` is a path into the document as `field_path` writes it (`routes[2].upstream`,
    list items counted from 1), empty for the whole file. `line` is 1-based when the YAML
    position is known.
    """

    file: str
    field: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


MAX_PROBLEMS = 20
"""At most this many problems are reported per file, then one line says how many more."""


def bounded(problems: list[Problem] | tuple[Problem, ...]) -> tuple[Problem, ...]:
    """The first `MAX_PROBLEMS` problems, then `and N more problems` if there are more
    (a list bounded before keeps its count: bounding twice changes nothing)."""
    shown = [p for p in problems if not (p.field == "" and _MORE.fullmatch(p.reason))]
    hidden = sum(int(m.group(1)) for p in problems
                 if p.field == "" and (m := _MORE.fullmatch(p.reason)))
    hidden += max(0, len(shown) - MAX_PROBLEMS)
    if not hidden:
        return tuple(problems)
    noun = "problem" if hidden == 1 else "problems"
    more = Problem(problems[0].file, "", f"and {hidden} more {noun}")
    return (*shown[:MAX_PROBLEMS], more)


_MORE = re.compile(r"and (\d+) more problems?")
def field_path(parts: Iterable[str | int]) -> str:
    """A field path as people count: `('routes', 0, 'timeout')` -> `routes[1].timeout`
    (a list index in brackets, from 1; a map key, even `1`, after a dot)."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part + 1}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def parse_field_path(text: str) -> tuple[str | int, ...]:
    """`routes[1].timeout` -> `('routes', 0, 'timeout')`, the inverse of `field_path`."""
    return tuple(int(index) - 1 if index else name for index, name in _PART.findall(text))


class SiteError(ControlPlaneError):
    """One or more problems with a site file; the site cannot be used in this version.
    A file with very many problems carries the first `MAX_PROBLEMS` and a count."""

    kind, retry = "validation", False

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = bounded(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SettingsError(ControlPlaneError):
    """A flag or a settings file value is wrong."""

    kind, retry = "settings", False


class FolderBusy(ControlPlaneError):
    """Another controlplane process holds the output folder's lock."""

    kind, retry = "busy", False


class SitesUnavailable(ControlPlaneError):
    """The sites folder is missing or unreadable; what serves keeps serving."""

    kind = "sites_folder"


class Stopping(ControlPlaneError):
    """The daemon was asked to stop in the middle of a long step (an Envoy validate)."""

    kind, retry = "stopping", False


class OutputError(ControlPlaneError):
    """The dynamic files could not be written; nothing that was there was harmed."""

    kind = "output"


class EnvoyError(ControlPlaneError):
    """Something about the Envoy process or binary."""

    kind = "envoy"


class EnvoyUnavailable(EnvoyError):
    """Envoy's admin interface did not answer in time, or did not confirm in time."""

    kind = "envoy_timeout"


class EnvoyRefused(EnvoyUnavailable):
    """Nothing listens on the admin socket (missing, or a stale socket file)."""

    kind = "envoy_refused"


class EnvoyTimeout(EnvoyUnavailable):
    """The admin socket gave no complete answer within the request's time bound."""

    kind = "envoy_timeout"


class EnvoyBadAnswer(EnvoyUnavailable):
    """The admin socket answered something Envoy would not: garbage, too many bytes,
    an HTTP error, JSON of the wrong shape."""

    kind = "envoy_bad_answer"


class EnvoyRejected(EnvoyError):
    """Envoy counted a rejection or failure for a file we wrote."""

    kind = "envoy_rejected"


class EnvoyCannotBind(EnvoyRejected):
    """Envoy rejected a listener because it could not bind its address (the port is
    taken): no `--mode validate` can foresee it, and the sites that changed are not at
    fault. `listeners` maps each listener's name to Envoy's reason."""

    kind = "envoy_bind"

    def __init__(self, message: str, listeners: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.listeners = dict(listeners or {})


class EnvoyBinaryError(EnvoyError):
    """The Envoy binary could not be run (missing, not executable, crashed, timed out)."""

    kind = "envoy_binary"
