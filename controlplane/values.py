"""The value types of the settings: listen addresses, folder lists, CIDR blocks, names,
ports and log options, each parsed from a flag, an environment variable or the settings
file the same way.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)
from pydantic_settings import NoDecode

from controlplane.errors import SettingsError


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    """A HOST:PORT pair for a listener; IPv6 hosts are written `[::]:8080`."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        host, sep, port = text.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            ipaddress.ip_address(host)
            number = int(port)
        except ValueError:
            raise SettingsError(f"{text!r} is not HOST:PORT with an IP host,"
                                " like 127.0.0.1:8080 or [::]:8080") from None
        if not sep or not 0 < number < 65536:
            raise SettingsError(f"{text!r}: the port must be 1-65535")
        return cls(host=host, port=number)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _listen(value: Any) -> Listen:
    if isinstance(value, Listen):
        return value
    if not isinstance(value, str):
        raise ValueError(f"write HOST:PORT as a string, like 127.0.0.1:8080 (got {value!r})")
    try:
        return Listen.parse(value)
    except SettingsError as exc:
        raise ValueError(str(exc)) from None


def _folders(value: Any) -> Any:
    """A list of folders; one string is one folder, or several separated by `:` as in
    PATH (an environment variable may also hold a JSON list). Never characters."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [part for part in value.split(":") if part]
    return value


def _absolute(folders: tuple[Path, ...]) -> tuple[Path, ...]:
    relative = [str(f) for f in folders if not f.is_absolute()]
    if relative:
        raise ValueError(f"folders must be absolute paths: {', '.join(relative)}")
    return folders


def cidrs(values: Any) -> tuple[str, ...]:
    """CIDR blocks in their normal form (`10.0.0.1/8` -> `10.0.0.0/8`); one string may
    hold several, separated by commas. ValueError if one is not a block."""
    if isinstance(values, str):
        values = json.loads(values) if values.lstrip().startswith("[") else values.split(",")
    found = []
    for value in values:
        try:
            found.append(str(ipaddress.ip_network(str(value).strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR block") from None
    return tuple(found)


Cidrs = Annotated[tuple[str, ...], NoDecode, BeforeValidator(cidrs)]


ListenAddress = Annotated[
    Listen, NoDecode, PlainValidator(_listen), PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "format": "HOST:PORT"}),
]


Folders = Annotated[tuple[Path, ...], NoDecode, BeforeValidator(_folders),
                    AfterValidator(_absolute)]


Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")]


Port = Annotated[int, Field(ge=1, le=65535)]
AcmeUrl = Annotated[str, Field(pattern=r"^https://[^\s]+$", max_length=2000)]
AcmeEmail = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]


LogLevel = Literal["debug", "info", "warning", "error"]


LogFormat = Literal["auto", "json", "console"]


def error_reason(error: Any) -> str:
    """A pydantic error as the reason a user reads (our own messages carry the value)."""
    message = str(error["msg"])
    if message.startswith("Value error, "):  # ours: the value is in the message already
        return message.removeprefix("Value error, ")
    return f"{message} (got {error['input']!r})" if "input" in error else message
