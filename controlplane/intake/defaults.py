"""Intake: the sites folder's shared defaults, `_defaults.yaml`, merged under every site.

The file is read like a site file (a regular file inside the sites folder, bounded,
safe YAML) and may set only the keys every HTTP site may share (`INHERITABLE`): never
what makes a site itself (domains, upstreams, routes, certificates, its stats names, the
escape hatch), nor an upstream (`forward_auth`: an upstream belongs to one site). Each
site's document is merged over it by the escape hatch's rules: a mapping merges key by
key, `null` deletes an inherited key, anything else replaces (lists whole). A default
applies only where the site's kind takes that key. A problem in an inherited value is
told at the defaults file's line, naming the site it broke; the site keeps its last good
version. Since they change every site, the defaults are used only from a file owned by
root or the daemon's user that group and others cannot write (`owner_problem`): write
access to the sites folder is control over every site anyway, but a file shared by
accident must not be. Nor can they enforce a policy: a site drops any default with
`key: null`. The defaults' content is part of every site's digest and their fingerprint part
of every site's reads, so a change re-checks every site. No `${VAR}` substitution: a
site file and its defaults mean what they say, and the daemon's environment never
reaches the world-readable route file.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import Problem, SiteError
from controlplane.intake.loading import DEFAULTS, Document, parse
from controlplane.intake.reading import fingerprint, read_bounded

FILENAME = DEFAULTS
INHERITABLE = {"http": ("cors", "rate_limit", "access", "compression", "access_log",
                        "basic_auth", "error_pages", "request_headers", "response_headers"),
               "tcp": (), "tls-passthrough": ()}
"""The keys the defaults may give each kind of site."""
Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Defaults:
    """The defaults file as read: its document, or its problems; empty when absent."""

    source: str
    fingerprint: tuple[int, ...]
    content: bytes = b""
    document: Document | None = None
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Merged:
    """A site's document with its defaults under it, and which paths it inherited."""

    document: Document
    inherited: frozenset[Path] = field(default_factory=frozenset)
    defaults: Document | None = None
    source: str = ""

    def inherited_keys(self) -> frozenset[str]:
        """The site keys that came, whole, from the defaults."""
        return frozenset(str(p[0]) for p in self.inherited if len(p) == 1)


_cache: dict[str, tuple[tuple[int, ...], Defaults]] = {}
"""Each folder's defaults by fingerprint: 10,000 sites read and parse them once a change."""


def load(folder: str, max_bytes: int) -> Defaults:
    """The defaults of the sites folder `folder` (absent: an empty Defaults)."""
    path = posixpath.join(folder, FILENAME)
    seen = fingerprint(path)
    cached = _cache.get(path)
    if cached is not None and cached[0] == seen:
        return cached[1]
    found = _read(path, folder, seen, max_bytes)
    _cache[path] = (seen, found)
    return found


def _read(path: str, folder: str, seen: tuple[int, ...], max_bytes: int) -> Defaults:
    if seen == (-1,) and not os.path.lexists(path):
        return Defaults(source=path, fingerprint=seen)
    if os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) != (
            os.path.realpath(folder)):
        return _broken(path, seen, "the file is a symlink to outside the sites folder")
    try:
        content = read_bounded(path, max_bytes, owner_problem)
        document = parse(content, path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return _broken(path, seen, reason if reason.startswith(_OWNED) else (
            f"cannot read: {reason}"))
    except SiteError as exc:
        return Defaults(source=path, fingerprint=seen, problems=tuple(exc.problems))
    if not isinstance(document.data, dict):
        return _broken(path, seen, "the defaults are a mapping of site keys")
    problems = tuple(Problem(path, str(key), "not a key the defaults may set; they may set"
                             f" {', '.join(INHERITABLE['http'])}", document.lines.get((key,)))
                     for key in document.data if key not in INHERITABLE["http"])
    return Defaults(source=path, fingerprint=seen, content=content, document=document,
                    problems=problems)


_OWNED = "owned by uid"


def owner_problem(found: os.stat_result) -> str | None:
    """Why a defaults file with this owner and mode is not used, or None."""
    mode = stat.S_IMODE(found.st_mode)
    if found.st_uid in (0, os.geteuid()) and not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return (f"{_OWNED} {found.st_uid} with mode {mode:04o}; the defaults change every"
            " site, so they are used only from a file owned by root or the daemon's user"
            f" (uid {os.geteuid()}) that group and others cannot write: chown and"
            " `chmod go-w` it (every site keeps its last good version until then)")


def _broken(path: str, seen: tuple[int, ...], reason: str) -> Defaults:
    return Defaults(source=path, fingerprint=seen, problems=(Problem(path, "", reason),))


def apply(document: Document, defaults: Defaults, where: str, kind: str = "http") -> Merged:
    """`document` (the site `where`) merged over the defaults its kind takes."""
    if defaults.problems:
        raise SiteError([Problem(p.file, p.field, f"{p.reason} (the defaults of {where})",
                                 p.line) for p in defaults.problems])
    if defaults.document is None or not isinstance(document.data, dict):
        return Merged(document=document)
    base = {k: v for k, v in defaults.document.data.items() if k in INHERITABLE[kind]}
    inherited: set[Path] = set()
    data = _merge(base, document.data, (), inherited)
    lines = dict(document.lines)
    for path, line in defaults.document.lines.items():
        if path and _inherited(path, inherited):
            lines[path] = line
    return Merged(document=Document(data=data, lines=lines), inherited=frozenset(inherited),
                  defaults=defaults.document, source=defaults.source)


def _merge(base: dict[str, Any], over: dict[str, Any], path: Path,
           inherited: set[Path]) -> dict[str, Any]:
    merged = dict(base)
    inherited.update((*path, key) for key in base)
    for key, value in over.items():
        at = (*path, key)
        inherited.discard(at)
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and key in base:
            merged[key] = _merge(base[key], value, at, inherited)
        else:
            merged[key] = value
    return merged


def _inherited(path: Path, inherited: set[Path] | frozenset[Path]) -> bool:
    return any(path[:end] in inherited for end in range(1, len(path) + 1))


def placed(merged: Merged | None, where: str, path: Path) -> tuple[str, str]:
    """(file, note) for a problem at `path`: the defaults file when the value there was
    inherited (the note names the site), else the site file."""
    if merged is None or not _inherited(path, merged.inherited):
        return where, ""
    return merged.source, f" (a default, inherited by {where})"
