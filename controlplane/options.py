"""The command line's grammar: one option per setting, generated from `Settings`, so
every setting has a flag with its help text and default; the same options are accepted
before and after the subcommand. Parsing only: values stay strings here and are
validated with the other sources in `configuring`.
"""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from controlplane import __version__
from controlplane.settings import Settings, field_docs
from controlplane.values import Listen

ALIASES = {"out_dir": ("--out", "--out-dir"), "state_dir": ("--state", "--state-dir"),
           "sites_dir": ("--sites", "--sites-dir"), "admin_socket": ("--admin-socket",)}
"""Settings whose flag is not simply `--` + the key with dashes (the first is shown)."""

PRECEDENCE = ("settings: flags win over CONTROLPLANE_* environment variables, which win"
              " over the --config file, which wins over the defaults")


COMPLETE_FILE, COMPLETE_DIRECTORY = "file", "directory"
"""What an option completes to, as `completion` maps it to shtab's (`with_completions`):
shtab itself is imported only there, not at every start (40 ms)."""


def with_completions(parser: argparse.ArgumentParser, kinds: dict[str, Any]) -> None:
    """Each option's completion kind, and its subcommands', replaced by `kinds`' entry."""
    for action in parser._actions:
        kind = getattr(action, "complete", None)
        if isinstance(kind, str) and kind in kinds:
            action.complete = kinds[kind]  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                with_completions(sub, kinds)


def flag_names() -> dict[str, str]:
    """The flag that sets each key, for messages."""
    return {key: ALIASES.get(key, ("--" + key.replace("_", "-"),))[0]
            for key in Settings.model_fields}


def settings_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """Every setting as an option; below a subcommand their defaults are SUPPRESS, so an
    option given before the subcommand is not overwritten by the subcommand's default."""
    default = None if top else argparse.SUPPRESS
    group = parser.add_argument_group(PRECEDENCE)
    config = group.add_argument("--config", type=Path, metavar="FILE", default=default,
                                help="the settings file (YAML), like config/controlplane.yaml")
    config.complete = COMPLETE_FILE  # type: ignore[attr-defined]
    for key, info in Settings.model_fields.items():
        _option(group, key, info, default)


def _option(group: argparse._ArgumentGroup, key: str, info: FieldInfo, default: Any) -> None:
    names = ALIASES.get(key, ("--" + key.replace("_", "-"),))
    text = _help(key, info)
    if info.annotation is bool:
        group.add_argument(*names, dest=key, action=argparse.BooleanOptionalAction,
                           default=default, help=text)
        if key == "verify_with_envoy":
            group.add_argument("--no-envoy", dest=key, action="store_false", default=default,
                               help="the same as --no-verify-with-envoy")
        return
    choices = typing.get_args(info.annotation) if _is_literal(info.annotation) else None
    action = group.add_argument(*names, dest=key, default=default, metavar=_metavar(key, info),
                                choices=choices, help=text)
    if _mentions(info.annotation, Path):
        action.complete = (COMPLETE_DIRECTORY  # type: ignore[attr-defined]
                           if key.endswith("_dir") or key.endswith("_dirs") else COMPLETE_FILE)


def _help(key: str, info: FieldInfo) -> str:
    doc = field_docs().get(key, "")
    sentences = re.split(r"(?<=[.)])\s+(?=[A-Z`])", doc)
    text = sentences[0]
    defaults = [s for s in sentences[1:] if s.startswith("Default:")]
    if info.default is None:
        text += " " + defaults[0] if defaults else " (default: unset)"
    else:
        text += f" (default: {_shown(info.default)})"
    return text.replace("%", "%%")


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ":".join(str(v) for v in value) or "empty"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _metavar(key: str, info: FieldInfo) -> str | None:
    annotation = info.annotation
    if _is_literal(annotation):
        return None
    if _mentions(annotation, Listen):
        return "HOST:PORT"
    if key.endswith("_dirs"):
        return "DIR[:DIR...]"
    if _mentions(annotation, Path):
        return "DIR" if key.endswith("_dir") else "PATH"
    if key.endswith("_s"):
        return "SECONDS"
    return "N" if _mentions(annotation, int) else "TEXT"


def _mentions(annotation: Any, kind: type) -> bool:
    if annotation is kind:
        return True
    return any(_mentions(a, kind) for a in typing.get_args(annotation))


def _is_literal(annotation: Any) -> bool:
    return typing.get_origin(annotation) is typing.Literal


def flags_given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (or as the positional SITES_DIR)."""
    return {key: value for key, value in vars(args).items()
            if key in Settings.model_fields and value is not None}


def version() -> str:
    return f"controlplane {__version__}"


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks (the exit codes table)."""


def reference() -> str:
    """The settings as a Markdown table (the README's, kept equal by a test)."""
    rows = ["| key | flag | value | default | meaning |", "|---|---|---|---|---|"]
    for key, info in Settings.model_fields.items():
        flag = ", ".join(f"`{name}`" for name in ALIASES.get(key, ("--" + key.replace("_", "-"),)))
        if info.annotation is bool:
            flag += f", `--no-{key.replace('_', '-')}`"
        if key == "verify_with_envoy":
            flag += ", `--no-envoy`"
        meaning = field_docs().get(key, "").replace("|", "\\|")
        default = "unset" if info.default is None else f"`{_shown(info.default)}`"
        rows.append(f"| `{key}` | {flag} | {_value(key, info)} | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def _value(key: str, info: FieldInfo) -> str:
    annotation = info.annotation
    if _is_literal(annotation):
        return " \\| ".join(f"`{c}`" for c in typing.get_args(annotation))
    if annotation is bool:
        return "true or false"
    text = (_metavar(key, info) or "TEXT").replace("[:DIR...]", " list")
    if key.endswith("_port"):
        return text + ", 1-65535"
    limits = [f"{sign} {getattr(m, attr)}" for m in info.metadata
              for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))
              if getattr(m, attr, None) is not None]
    return text + (", " + ", ".join(limits) if limits else "")
