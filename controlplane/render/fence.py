"""The fence of the escape hatch, on Envoy's canonical form.

A site's `envoy:` override is merged into its generated JSON, then both the generated
resource and the merged one are parsed into Envoy's protobuf messages. The fence looks
only at the messages, by their descriptors: `changes` lists every field path where they
differ (canonical snake_case names, `google.protobuf.Any` unpacked into its registered
type), so no JSON spelling (`clusterHeader`), nesting, `Any` wrapping or oneof choice
hides a field. `Policy.judge` then allows a change only inside an allow-listed path,
and an `Any` only of an allow-listed type at that position; TypedStruct never.
`visit` walks a whole message (Anys unpacked) for the checks on values.

A path is a tuple of `Field` (a message field), `int` (a list index) and `Key` (a map
key); `spelled` maps it back onto the user's own keys for the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from controlplane.errors import field_path

TYPED_STRUCTS = frozenset({"xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct"})
"""Untyped wrappers of an extension's config: they would hide its fields from the fence."""
_ANY = "google.protobuf.Any"
_PATTERN_PART = re.compile(r"\[([^\]]*)\]|([^.\[\]]+)")


@dataclass(frozen=True, slots=True)
class Field:
    """A message field on a path: its canonical name and its lowerCamel JSON name."""

    name: str
    json: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Key:
    """A map key on a path."""

    text: str

    def __str__(self) -> str:
        return self.text


Segment = Field | int | Key
Path = tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """A field path where the merged message differs from the generated one.
    `type_name` is set when the change is an `Any` of that type."""

    path: Path
    removed: bool = False
    type_name: str = ""


def pattern(text: str) -> tuple[str, ...]:
    """`'routes[*].route.timeout'` -> `('routes', '*', 'route', 'timeout')`; a bracket
    holds a map key or `*` (any index or key)."""
    return tuple(k if k else f for k, f in _PATTERN_PART.findall(text))


def _matches(part: str, segment: Segment) -> bool:
    if part == "*":
        return not isinstance(segment, Field)
    if isinstance(segment, Field):
        return segment.name == part
    return isinstance(segment, Key) and segment.text == part


def matched(patterns: tuple[tuple[str, ...], ...], path: Path) -> int:
    """How many leading segments of `path` the best of `patterns` matches."""
    best = 0
    for parts in patterns:
        count = 0
        for part, segment in zip(parts, path, strict=False):
            if not _matches(part, segment):
                break
            count += 1
        best = max(best, count)
    return best


def covered(patterns: tuple[tuple[str, ...], ...], path: Path) -> bool:
    """Some pattern is a prefix of `path` (its whole subtree is allowed)."""
    return any(len(p) <= len(path) and matched((p,), path) == len(p) for p in patterns)


def changes(base: Message, merged: Message) -> list[Change]:
    """Every field path where `merged` differs from `base`."""
    found: list[Change] = []
    _diff(base, merged, (), found)
    return found


def _diff(a: Message | None, b: Message | None, path: Path, found: list[Change]) -> None:
    if a is not None and b is not None and a == b:
        return
    present = b if b is not None else a
    assert present is not None
    if present.DESCRIPTOR.full_name == _ANY:
        _diff_any(a, b, path, found)
        return
    if a is None or b is None:
        if not present.ListFields():  # presence alone means something: `http2_options: {}`
            found.append(Change(path, removed=b is None))
            return
        if b is None and path and not isinstance(path[-1], Field):
            found.append(Change(path, removed=True))  # a list item or map entry dropped
            return
    fields = {fd.name: fd for m in (a, b) if m is not None for fd, _ in m.ListFields()}
    for name in sorted(fields):
        _diff_field(fields[name], a, b, (*path, Field(name, fields[name].json_name)), found)


def _value(message: Message | None, fd: FieldDescriptor) -> Any:
    if message is None:
        return None
    if fd.is_repeated or not fd.has_presence:
        return getattr(message, fd.name)
    return getattr(message, fd.name) if message.HasField(fd.name) else None


def _diff_field(fd: FieldDescriptor, a: Message | None, b: Message | None, path: Path,
                found: list[Change]) -> None:
    x, y = _value(a, fd), _value(b, fd)
    if fd.message_type is None:
        if _plain(x) != _plain(y):
            found.append(Change(path, removed=y is None))
    elif fd.message_type.GetOptions().map_entry:
        value_type = fd.message_type.fields_by_name["value"].message_type
        for key in sorted(set(x or ()) | set(y or ()), key=str):
            left = x[key] if x is not None and key in x else None
            right = y[key] if y is not None and key in y else None
            here = (*path, Key(str(key)))
            if value_type is None:
                if left != right:
                    found.append(Change(here, removed=right is None))
            else:
                _diff(left, right, here, found)
    elif fd.is_repeated:
        for i in range(max(len(x or ()), len(y or ()))):
            _diff(x[i] if x is not None and i < len(x) else None,
                  y[i] if y is not None and i < len(y) else None, (*path, i), found)
    elif x is not None or y is not None:
        _diff(x, y, path, found)


def _plain(value: Any) -> Any:
    return list(value) if value is not None and not isinstance(value, (str, bytes, int, float,
                                                                      bool)) else value


def _diff_any(a: Message | None, b: Message | None, path: Path, found: list[Change]) -> None:
    if b is None:
        found.append(Change(path, removed=True))
        return
    name = type_name(b)
    found.append(Change(path, type_name=name))
    if name in TYPED_STRUCTS:
        return
    before = unpack(a) if a is not None and type_name(a) == name else None
    _diff(before, unpack(b), path, found)


def type_name(any_message: Message) -> str:
    return str(getattr(any_message, "type_url", "")).rsplit("/", 1)[-1]


def unpack(any_message: Message) -> Message:
    """The message inside an `Any`, of its registered type (ParseDict has checked it)."""
    descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name(any_message))
    inner = message_factory.GetMessageClass(descriptor)()
    any_message.Unpack(inner)
    return inner


def visit(message: Message, check: Callable[[Path, Descriptor, Message], None],
          path: Path = ()) -> None:
    """`check(path, descriptor, message)` on `message` and every message inside it."""
    if message.DESCRIPTOR.full_name == _ANY:
        if type_name(message) not in TYPED_STRUCTS:
            visit(unpack(message), check, path)
        return
    check(path, message.DESCRIPTOR, message)
    for fd, value in message.ListFields():
        if fd.message_type is None:
            continue
        here = (*path, Field(fd.name, fd.json_name))
        for sub, item in _children(fd, value):
            visit(item, check, (*here, *sub))


def _children(fd: FieldDescriptor, value: Any) -> Iterator[tuple[Path, Message]]:
    if fd.message_type.GetOptions().map_entry:
        if fd.message_type.fields_by_name["value"].message_type is not None:
            for key in sorted(value, key=str):
                yield (Key(str(key)),), value[key]
    elif fd.is_repeated:
        for i, item in enumerate(value):
            yield (i,), item
    else:
        yield (), value


def strings(message: Message) -> Iterator[tuple[FieldDescriptor, str]]:
    """The string (and bytes, decoded) fields set directly on `message`."""
    for fd, value in message.ListFields():
        if fd.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            continue
        for item in value if fd.is_repeated else (value,):
            yield fd, item.decode("utf-8", "replace") if isinstance(item, bytes) else item


_FREE_FORM = frozenset({"google.protobuf.Struct", "google.protobuf.Value",
                        "google.protobuf.ListValue"})


def canonical_keys(node: Any, descriptor: Descriptor) -> Any:
    """`node` (Envoy's JSON form of a `descriptor` message) with lowerCamel keys written
    snake_case, so an override merges into the generated keys whatever its spelling.
    Unknown keys stay (ParseDict names them); so does a key given in both spellings."""
    if not isinstance(node, dict) or descriptor.full_name in _FREE_FORM:
        return node
    if descriptor.full_name == _ANY:
        try:
            descriptor = descriptor_pool.Default().FindMessageTypeByName(
                str(node.get("@type", "")).rsplit("/", 1)[-1])
        except KeyError:
            return node
    by_json = {fd.json_name: fd for fd in descriptor.fields}
    result: dict[str, Any] = {}
    for key, value in node.items():
        fd = descriptor.fields_by_name.get(key) or by_json.get(key)
        name = key if fd is None or fd.name in result else fd.name
        result[name] = value if fd is None else _canonical_value(value, fd)
    return result


def _canonical_value(value: Any, fd: FieldDescriptor) -> Any:
    kind = fd.message_type
    if kind is None:
        return value
    if kind.GetOptions().map_entry:
        inner = kind.fields_by_name["value"].message_type
        return {k: canonical_keys(v, inner) for k, v in value.items()} if inner is not None and (
            isinstance(value, dict)) else value
    if fd.is_repeated and isinstance(value, list):
        return [canonical_keys(item, kind) for item in value]
    return canonical_keys(value, kind)


def spelled(path: Path, written: Any) -> str:
    """`path` in the user's own keys where the override holds it (`clusterHeader` stays
    `clusterHeader`), canonical names beyond, as `errors.field_path` writes it."""
    parts: list[str | int] = []
    node = written
    for segment in path:
        key: str | int | None = None
        if isinstance(segment, Field) and isinstance(node, Mapping):
            given = [k for k in (segment.name, segment.json) if k in node]
            key = next((k for k in given if node[k] is not None), given[0] if given else None)
        elif isinstance(segment, Key) and isinstance(node, Mapping) and segment.text in node:
            key = segment.text
        elif isinstance(segment, int) and isinstance(node, list) and segment < len(node):
            key = segment
        parts.append(segment if isinstance(segment, int) else str(segment if key is None else key))
        node = node[key] if key is not None else None
    return field_path(parts)
