"""Edge I/O for site files: find them, read them safely, parse YAML into plain documents.

Untrusted bytes stop here. A file becomes a `Document` (plain dicts, lists and scalars,
plus the line of every field for error messages) or a `SiteError` naming the file.
Safe YAML only: libyaml's safe loader, then a walk of the node graph before anything
is constructed that refuses aliases (so an alias bomb never expands), tags that build
objects, duplicate keys, complex keys and deep nesting.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controlplane.errors import Problem, SiteError, field_path
from controlplane.intake.naming import DEFAULTS as DEFAULTS
from controlplane.intake.naming import SUFFIXES as SUFFIXES
from controlplane.intake.naming import ignored_reason, is_files_folder
from controlplane.intake.naming import is_junk as is_junk
from controlplane.intake.naming import is_site_name as is_site_name
from controlplane.site.spec import DNS_LABEL

MAX_DEPTH = 32
MAX_NODES = 10_000
"""YAML values (scalars and collections) in one site file. A real site has a few hundred;
each value costs about 1 KiB once composed with its position, so 1 MiB of tiny values
(100,000 of them) would take the daemon past 100 MiB and several seconds. Counted from
the event stream, before anything is composed."""
_PLAIN_TAGS = {
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A directory entry that looks like a site file; not yet read."""

    name: str
    location: str
    """The entry's path as a string (a Path per entry costs 14 ms per 1,000 files)."""
    fingerprint: tuple[int, ...]
    """Identity and stat of the target: equal fingerprints mean unchanged content."""
    aliased: bool = False
    """A symlink, or a file with other hard links: its content can change through
    another name (a ConfigMap's `..data`), so an event naming it tells nothing."""

    @property
    def path(self) -> Path:
        return Path(self.location)


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    """A parsed site file: the data and the line of each field path (for messages)."""

    data: Any
    lines: dict[tuple[str | int, ...], int]


def scan(folder: Path) -> list[Entry]:
    """The site entries of `folder`, sorted by name. Missing folder: FileNotFoundError."""
    return scan_all(folder)[0]


def scan_all(folder: Path) -> tuple[list[Entry], list[Problem]]:
    """The site entries of `folder` sorted by name, and the entries that are not read
    (not junk, not a site file name), each with the reason, so none is skipped in silence."""
    entries, ignored = [], []
    with os.scandir(folder) as listing:
        for item in listing:
            if item.name == DEFAULTS:
                continue  # read as every site's defaults (`intake/defaults`), not as a site
            if is_site_name(item.name):
                entries.append(_entry(item.name, item.path, item.is_symlink()))
            elif not is_junk(item.name) and not is_files_folder(item):
                ignored.append(Problem(item.path, "", ignored_reason(item)))
    return sorted(entries, key=lambda e: e.location), sorted(ignored, key=lambda p: p.file)


def entry(folder: Path, filename: str) -> Entry | None:
    """The entry of one site file of `folder` as `scan_all` would give it; None when no
    such file is there (or the name is not a site file's)."""
    path = os.path.join(folder, filename)
    if filename == DEFAULTS or not is_site_name(filename) or not os.path.lexists(path):
        return None
    return _entry(filename, path, os.path.islink(path))


def _entry(filename: str, path: str, link: bool) -> Entry:
    name = filename.rsplit(".", 1)[0]
    try:
        st = os.stat(path)
        fingerprint: tuple[int, ...] = (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode,
        )
    except OSError:
        return Entry(name=name, location=path, fingerprint=(-1,), aliased=link)
    return Entry(name=name, location=path, fingerprint=fingerprint,
                 aliased=link or st.st_nlink > 1)


def read(entry: Entry, folder: Path, max_bytes: int) -> bytes:
    """The bytes of a site file, refusing anything that is not a small regular file
    inside `folder` (symlinks are followed only when their target stays inside)."""
    where = entry.location
    if not DNS_LABEL.fullmatch(entry.name) or len(entry.name) > 63:
        raise _one(where, "", f"the site name {entry.name!r} (the file name) must be a DNS"
                   " label: a-z, 0-9 and '-', at most 63 characters")
    real, root = os.path.realpath(entry.location), os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root:
        raise _one(where, "", "the file is a symlink to outside the sites folder")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise _one(where, "", f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _one(where, "", "not a regular file")
        if st.st_size > max_bytes:
            raise _one(where, "", f"the file is {st.st_size} bytes; the limit is {max_bytes}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            content = handle.read(max_bytes + 1)
    except OSError as exc:
        raise _one(where, "", f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(content) > max_bytes:
        raise _one(where, "", f"the file is over the limit of {max_bytes} bytes")
    return content


def parse(content: bytes, where: str) -> Document:
    """Bytes -> Document, or SiteError with the line of the problem."""
    if b"\x00" in content:
        raise _one(where, "", f"NUL byte at offset {content.index(0)}; a site file is text")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _one(where, "", f"not UTF-8 (byte {exc.start}); save the file as UTF-8") from None
    _check_depth(text, where)
    loader = yaml.CSafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise _one(where, "", "the file is empty; a site needs 'domains' and an upstream")
        lines: dict[tuple[str | int, ...], int] = {}
        _check_graph(node, where, lines)
        return Document(data=loader.construct_document(node), lines=lines)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
        line = mark.line + 1 if mark is not None else None
        fix = _yaml_fix(exc, text.splitlines())
        raise SiteError([Problem(where, "", f"YAML: {reason}{fix}", line)]) from None
    finally:
        loader.dispose()


def _yaml_fix(exc: yaml.YAMLError, lines: list[str]) -> str:
    """The usual cause of a libyaml error, and the fix, in the user's words."""
    problem, context = str(getattr(exc, "problem", "")), str(getattr(exc, "context", ""))
    mark = getattr(exc, "problem_mark", None)
    at = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    if "alias" in context or "anchor" in context:
        start = getattr(getattr(exc, "context_mark", None) or mark, "column", 0)
        word = at[start:].split(",")[0].split("]")[0].split("}")[0].split()[0] if at else "*"
        return (f"; a value starting with {word[:1]!r} is read as a YAML alias or anchor:"
                f" quote it, as '{word}'")
    if "cannot start any token" in problem and "\t" in at:
        return "; YAML is indented with spaces, not tabs"
    if "mapping values are not allowed" in problem and mark is not None:
        return _colon_fix(lines, mark.line)
    if "expected key" in problem or "block end" in problem:
        indent = len(at) - len(at.lstrip(" "))
        spaces = f"{indent} space" + ("" if indent == 1 else "s")
        return (f"; check the indentation: this line starts after {spaces}, and the keys"
                " of one mapping must start in the same column")
    if "flow" in context:
        return ("; inside [ ] or { }, quote a value that holds ': ', ',', '[' or '{',"
                " e.g. {body: 'a: b'}")
    return ""


def _colon_fix(lines: list[str], number: int) -> str:
    at = lines[number]
    above = next((x for x in reversed(lines[:number]) if x.strip()), "")
    indent = len(at) - len(at.lstrip(" "))
    above_indent = len(above) - len(above.lstrip(" -"))
    key, _, value = at.strip().partition(": ")
    if indent > above_indent and ": " in above.strip(" -") and above.rstrip()[-1:] != ":":
        sibling = above.strip(" -").split(":")[0]
        return (f"; this line is indented more than the line above, so it reads as part of"
                f" that value: indent {key!r} like {sibling!r}")
    quoted = value.replace("'", "''")
    return (f"; a ': ' inside a plain value starts a mapping: quote the value, as"
            f" {key}: '{quoted}'")


def _check_depth(text: str, where: str) -> None:
    """Refuse deep nesting from the event stream, before libyaml's recursive composer
    sees it: 30,000 nested `[` (or `- - - ...`) overflow its C stack and kill the process.
    Refuse more than MAX_NODES values the same way (memory and time stay bounded)."""
    loader = yaml.CSafeLoader(text)
    depth = nodes = 0
    try:
        while (event := loader.get_event()) is not None:
            if isinstance(event, yaml.NodeEvent):
                nodes += 1
                if nodes > MAX_NODES:
                    mark = event.start_mark
                    raise SiteError([Problem(
                        where, "", f"more than {MAX_NODES} YAML values; split the site or"
                        " use fewer routes", mark.line + 1 if mark is not None else None)])
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    raise SiteError([Problem(where, "", f"nested deeper than {MAX_DEPTH}",
                                             mark.line + 1 if mark is not None else None)])
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as exc:
        # PyYAML 6.0.4's scanner refuses deep flow nesting itself, before any event reaches
        # the count above: the same refusal, whichever PyYAML the ranges allow.
        if "nesting depth" in str(getattr(exc, "problem", "")):
            mark = getattr(exc, "problem_mark", None)
            raise SiteError([Problem(where, "", f"nested deeper than {MAX_DEPTH}",
                                     mark.line + 1 if mark is not None else None)]) from None
        return  # the composer reports other syntax errors with their position
    finally:
        loader.dispose()


def _check_graph(root: yaml.Node, where: str, lines: dict[tuple[str | int, ...], int]) -> None:
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str | int, ...], int]] = [
        (root, (), root.start_mark.line + 1)]
    while stack:
        node, path, line = stack.pop()
        field = field_path(path)
        if id(node) in seen:
            raise SiteError([Problem(where, field, "YAML anchors and aliases are not allowed",
                                     line)])
        seen.add(id(node))
        if len(path) > MAX_DEPTH:
            raise SiteError([Problem(where, field, f"nested deeper than {MAX_DEPTH}", line)])
        if node.tag not in _PLAIN_TAGS:
            raise SiteError([Problem(where, field, f"the tag {node.tag!r} is not allowed", line)])
        lines[path] = line
        if isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(item, (*path, i), item.start_mark.line + 1)
                                   for i, item in enumerate(node.value)]))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(reversed(_mapping_children(node, path, where)))


_STATUS = re.compile(r"[1-9][0-9]{2}")
"""The one kind of number a key may be: an HTTP status (`error_pages: {503: ...}`)."""


def _plain_key(key: yaml.ScalarNode) -> bool:
    return key.tag == "tag:yaml.org,2002:str" or (
        key.tag == "tag:yaml.org,2002:int" and _STATUS.fullmatch(key.value) is not None)


def _mapping_children(
    node: yaml.MappingNode, path: tuple[str | int, ...], where: str,
) -> list[tuple[yaml.Node, tuple[str | int, ...], int]]:
    children = []
    keys: set[str] = set()
    for key, value in node.value:
        field = field_path((*path, key.value))
        if key.tag == "tag:yaml.org,2002:merge":
            raise SiteError([Problem(where, field, "YAML merge keys ('<<') are not allowed",
                                     key.start_mark.line + 1)])
        if not isinstance(key, yaml.ScalarNode) or not _plain_key(key):
            raise SiteError([Problem(where, field, "keys must be plain strings (or an HTTP"
                                     " status, as under error_pages)",
                                     key.start_mark.line + 1)])
        if key.value in keys:
            raise SiteError([Problem(where, field, "duplicate key", key.start_mark.line + 1)])
        keys.add(key.value)
        children.append((value, (*path, key.value), key.start_mark.line + 1))
    return children


def _one(where: str, field: str, reason: str) -> SiteError:
    return SiteError([Problem(where, field, reason)])
