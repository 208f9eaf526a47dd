"""The exception tree, split by what the caller should do about it.

    ControlPlaneError
    ├── SiteError            permanent for this content: the user must edit the file.
    │                        Carries the file, the field path and the reason; many are
    │                        collected into a SiteErrors so all are reported at once.
    ├── SettingsError        permanent: a bad flag or settings file; the CLI exits 2.
    ├── OutputError          temporary: the output folder is full, read-only, missing.
    │                        The old files stay intact; the next pass tries again.
    └── EnvoyError           about the Envoy process or binary
        ├── EnvoyUnavailable temporary: admin socket missing, hanging, or a timeout.
        ├── EnvoyRejected    Envoy refused a file it was given; carries its reason.
        └── EnvoyBinaryError the binary could not be run at all (missing, crashed).

Only the CLI turns these into exit codes; the daemon turns them into status and log events.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_PART = re.compile(r"\[([0-9]+)\]|([^.\[\]]+)")


class ControlPlaneError(Exception):
    """Base of every error this package raises on purpose."""


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

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = bounded(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SettingsError(ControlPlaneError):
    """A flag or a settings file value is wrong."""


class OutputError(ControlPlaneError):
    """The dynamic files could not be written; nothing that was there was harmed."""


class EnvoyError(ControlPlaneError):
    """Something about the Envoy process or binary."""


class EnvoyUnavailable(EnvoyError):
    """Envoy's admin interface did not answer in time, or did not confirm in time."""


class EnvoyRejected(EnvoyError):
    """Envoy counted a rejection or failure for a file we wrote."""


class EnvoyBinaryError(EnvoyError):
    """The Envoy binary could not be run (missing, not executable, crashed, timed out)."""
