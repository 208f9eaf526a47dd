"""Where the settings come from, for the CLI: flags, then `CONTROLPLANE_*` environment
variables, then the settings file (`--config`), then the defaults; the first that sets a
key wins. The environment is read through pydantic-settings; the file keeps each key's
line, so a bad value is reported as `FILE:LINE: key: reason`. `load` runs at start and
again on SIGHUP, so a reload sees the same flags and environment with the new file.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from controlplane.errors import SettingsError
from controlplane.settings import Settings
from controlplane.values import error_reason

ENV_PREFIX = "CONTROLPLANE_"


class _Environment(Settings, BaseSettings):
    """The same fields, read from the environment (only used as pydantic-settings' shape)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore",
                                      env_ignore_empty=True, frozen=True)


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def load(config_file: Path | None, flags: Mapping[str, Any], flag_names: Mapping[str, str],
         warn: Callable[[str], None] = lambda _: None) -> Settings:
    """Settings from the four sources; every problem at once, one line each."""
    file_values, lines = read_file(config_file) if config_file is not None else ({}, {})
    env_values = dict(EnvSettingsSource(_Environment, env_prefix=ENV_PREFIX,
                                        env_ignore_empty=True)())
    for hint in unknown_environment(os.environ):
        warn(hint)
    merged = {**file_values, **env_values, **flags}

    def where(key: str) -> str:
        if key in flags:
            return flag_names.get(key, "--" + key.replace("_", "-"))
        if key in env_values:
            return f"${env_name(key)}"
        return f"{config_file}:{lines[key]}: {key}" if key in lines else f"settings: {key}"

    return from_mapping(merged, where=where)


def read_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A settings file's keys and values, and the line of each key."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the settings file: {exc.strerror}; give"
                            " --config an existing, readable YAML file") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise SettingsError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(values, dict) or not isinstance(node, (yaml.MappingNode, type(None))):
        raise SettingsError(f"{path}: a settings file is a mapping of keys, like"
                            " `listen: 0.0.0.0:8080`")
    lines: dict[str, int] = {}
    for key_node, _ in node.value if node is not None else ():
        key = str(key_node.value)
        if key in lines:
            raise SettingsError(f"{path}:{key_node.start_mark.line + 1}: {key}: set twice"
                                f" (first on line {lines[key]}); keep one")
        lines[key] = key_node.start_mark.line + 1
    return {str(k): v for k, v in values.items()}, lines


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """Hints for `CONTROLPLANE_*` variables close to, but not, a setting's name."""
    known = [env_name(key) for key in Settings.model_fields]
    hints = []
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            hints.append(f"${name} is not a setting; did you mean ${close[0]}?")
    return hints


FIXED = ("sites_dir", "out_dir", "state_dir", "listen", "listen_tls", "admin_socket",
         "metrics", "max_connections", "stat_prefix", "route_config_name")
"""Settings a running daemon keeps until restarted: the folders it watches and owns, the
sockets it opened, and what the bootstrap (Envoy's own start) names."""


def reloaded(current: Settings, fresh: Settings) -> tuple[Settings, list[str], list[str]]:
    """SIGHUP's settings: `fresh`, but for the `FIXED` keys, which keep their values.
    Also the keys kept and the keys changed, sorted."""
    kept = {key: getattr(current, key) for key in FIXED
            if getattr(fresh, key) != getattr(current, key)}
    changed = sorted(key for key in type(fresh).model_fields
                     if key not in kept and getattr(fresh, key) != getattr(current, key))
    return fresh.replace(**kept), sorted(kept), changed


def from_mapping(values: dict[str, Any], base: Settings | None = None,
                 where: Callable[[str], str] = lambda key: f"settings: {key}") -> Settings:
    """Apply a mapping of settings keys onto `base`, validated; every problem is one
    line, `where(key)` naming where the key was written. Unknown keys get a hint."""
    problems = [(key, unknown_key_reason(key)) for key in values
                if key not in Settings.model_fields]
    known = {k: v for k, v in values.items() if k in Settings.model_fields}
    try:
        settings = Settings.model_validate({**(base or Settings()).__dict__, **known})
    except ValidationError as exc:
        problems += [(str(e["loc"][0]), error_reason(e)) for e in exc.errors()]
    if problems:
        order = {key: i for i, key in enumerate(values)}  # as written: by line in a file
        problems.sort(key=lambda p: order.get(p[0], len(order)))
        raise SettingsError("\n".join(f"{where(key)}: {reason}" for key, reason in problems))
    return settings


def unknown_key_reason(key: str) -> str:
    close = difflib.get_close_matches(key, list(Settings.model_fields), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "see `controlplane settings --markdown`"
    return f"unknown setting {key!r}; {hint}"
