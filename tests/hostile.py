"""The hostile-input corpus: site files a typo, a tool or an attacker could leave in the
folder. Each case makes one entry in a folder and names the reason it must be refused
with. `tests/test_hostile.py` runs them through `controlplane check`, and
`tests/test_hostile_e2e.py` through the running daemon beside a real Envoy."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GOOD = "domains: [{name}.example.com]\nupstream:\n  socket: {sock}\n"


@dataclass(frozen=True)
class Case:
    name: str
    """The site name; the file is NAME.yaml unless `filename` says otherwise."""
    expected: str
    """A part of the problem line that says why."""
    content: bytes | None = None
    make: Callable[[Path, Path], None] | None = None
    """Builds a special entry: make(folder, path)."""
    filename: str | None = None
    keeps_name: bool = True
    """The entry names a valid site (so a daemon keeps its last good version)."""

    @property
    def file(self) -> str:
        return self.filename or f"{self.name}.yaml"

    def create(self, folder: Path) -> None:
        path = folder / self.file
        if self.make is not None:
            self.make(folder, path)
        else:
            assert self.content is not None
            path.write_bytes(self.content)


def _site(name: str, body: str) -> bytes:
    return f"domains: [{name}.example.com]\n{body}".encode()


def _fifo(folder: Path, path: Path) -> None:
    os.mkfifo(path)


def _directory(folder: Path, path: Path) -> None:
    path.mkdir()


def _socket_file(folder: Path, path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))  # the file stays after close


def _outside_link(folder: Path, path: Path) -> None:
    target = folder.parent / "outside-secret.yaml"
    target.write_text("domains: [secret.example.com]\nupstream: {socket: /tmp/s.sock}\n")
    os.symlink(target, path)


def _dangling_link(folder: Path, path: Path) -> None:
    os.symlink(folder / "no-such-target.yaml", path)


def _unreadable(folder: Path, path: Path) -> None:
    path.write_bytes(b"\xff\xfe garbage that is not YAML")
    os.chmod(path, 0)


def _log_fifo(folder: Path, path: Path) -> None:
    fifo = folder.parent / "log.fifo"
    os.mkfifo(fifo)
    path.write_text(f"domains: [logfifo.example.com]\nupstream: {{socket: /tmp/l.sock}}\n"
                    f"access_log: {{path: {fifo}}}\n")


def _link_site(name: str, socket_path: Path, body: str = "") -> str:
    return f"domains: [{name}.example.com]\nupstream: {{socket: {socket_path}}}\n{body}"


def _socket_link(target: str) -> Callable[[Path, Path], None]:
    """A socket path in an allowed folder that is a symlink to `target`."""
    def make(folder: Path, path: Path) -> None:
        link = folder.parent / f"hx-{path.stem}.sock"
        os.symlink(target, link)
        path.write_text(_link_site(path.stem, link))
    return make


def _folder_link(folder: Path, path: Path) -> None:
    os.symlink("/etc", folder.parent / "hx-etc")
    path.write_text(_link_site(path.stem, folder.parent / "hx-etc" / "x.sock"))


def _log_link(folder: Path, path: Path) -> None:
    """An access log that is a symlink to a site file."""
    os.symlink(folder / "loglink.yaml", folder.parent / "hx-loglink.log")
    path.write_text(_link_site(path.stem, Path("/tmp/l.sock"),
                               f"access_log: {{path: {folder.parent}/hx-loglink.log}}\n"))


def _log_in_sites(folder: Path, path: Path) -> None:
    path.write_text(_link_site(path.stem, Path("/tmp/l.sock"),
                               f"access_log: {{path: {folder}/written.log}}\n"))


def _log_hard_link(folder: Path, path: Path) -> None:
    target = folder.parent / "hx-hard.log"
    target.write_text("")
    os.link(target, folder.parent / "hx-hard2.log")
    path.write_text(_link_site(path.stem, Path("/tmp/l.sock"),
                               f"access_log: {{path: {target}}}\n"))


def _cert_fifo(folder: Path, path: Path) -> None:
    os.mkfifo(folder.parent / "hx-cert.pem")
    path.write_text(_link_site(path.stem, Path("/tmp/l.sock"),
                               f"tls: {{cert: {folder.parent}/hx-cert.pem,"
                               f" key: {folder.parent}/hx-cert.pem}}\n"))


def _stats_clash(folder: Path, path: Path) -> None:
    """A stats prefix equal to the name of another site: made here when the folder does not
    hold it yet; where it already serves (the daemon's test), it is the established one."""
    if not (folder / "statsmate.yaml").exists():
        (folder / "statsmate.yaml").write_text(_link_site("statsmate", Path("/tmp/m.sock")))
    path.write_text(_link_site(path.stem, Path("/tmp/s.sock"), "stats_prefix: statsmate\n"))


def _billion_laughs() -> bytes:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return ("\n".join(lines) + "\n").encode()


UP = "upstream:\n  socket: /tmp/cp-hostile.sock\n"

CASES: list[Case] = [
    # YAML itself
    Case("malformed", "YAML: ", b"domains: [a.example.com\nupstream: {socket: /tmp/x.sock}\n"),
    Case("tabs", "YAML: ", b"domains:\n\t- tabs.example.com\n"),
    Case("empty", "the file is empty", b""),
    Case("comments", "the file is empty", b"# nothing here\n"),
    Case("toobig", "the limit is 1048576", b"#" * (1024 * 1024 + 1)),
    Case("bomb", "anchors and aliases are not allowed", _billion_laughs()),
    Case("deep", "nested deeper than 32", b"x: " + b"[" * 200_000 + b"]" * 200_000 + b"\n"),
    Case("dashes", "nested deeper than 32", b"- " * 300_000 + b"x\n"),
    Case("latin1", "not UTF-8", _site("latin1", UP).replace(b".example", b".caf\xe9")),
    Case("binary", "NUL byte", bytes(range(256)) * 4),
    Case("nul", "NUL byte", _site("nul", UP) + b"\x00\n"),
    Case("utf16", "NUL byte", "domains: [utf16.example.com]\n".encode("utf-16")),
    Case("dupkey", "duplicate key", _site("dupkey", UP + UP)),
    Case("pyobject", "is not allowed", b"domains: !!python/object/apply:os.system [id]\n"),
    Case("pyname", "is not allowed", b"x: !!python/name:os.system\n"),
    Case("binarytag", "is not allowed", b"x: !!binary aGVsbG8=\n"),
    Case("customtag", "is not allowed", b"x: !vault secret\n"),
    Case("mergekey", "not allowed", b"a: &b {socket: /tmp/x.sock}\nupstream:\n  <<: *b\n"),
    Case("multidoc", "YAML: ", _site("multidoc", UP) + b"---\n" + _site("multidoc", UP)),
    Case("listdoc", "a mapping of keys, not a list", b"- domains: [x.example.com]\n"),
    Case("scalardoc", "a mapping of keys, not a str", b"just words\n"),
    Case("intkey", "1: keys must be plain strings", _site("intkey", UP) + b"1: one\n"),
    # The schema
    Case("typo", "did you mean 'upstream'", _site("typo", UP.replace("upstream", "upstrem"))),
    Case("domainsstr", "domains: Input should be a valid list",
         b"domains: x.example.com\n" + UP.encode()),
    Case("domainsint", "domains[1]: Input should be a valid string",
         b"domains: [42]\n" + UP.encode()),
    Case("upstreamstr", "upstream: '/tmp/x' is not an endpoint; write {socket: /tmp/x}",
         _site("upstreamstr", "upstream: /tmp/x\n")),
    Case("socketint", "upstream.socket: Input should be a valid string",
         _site("socketint", "upstream: {socket: 5}\n")),
    Case("routesmap", "routes: Input should be a valid list",
         _site("routesmap", UP + "routes: {prefix: /}\n")),
    Case("prefixbool", "routes[1].prefix: Input should be a valid string",
         _site("prefixbool", UP + "routes: [{prefix: true}]\n")),
    Case("websocketstr", "routes[1].websocket: Input should be a valid boolean",
         _site("websocketstr", UP + "routes: [{prefix: /, websocket: 'on'}]\n")),
    Case("bothupstreams", "give exactly one of 'upstream' or 'upstreams'",
         _site("bothupstreams", UP + "upstreams: {a: {socket: /tmp/a.sock}}\n")),
    Case("undefined", "routes[1].upstream: 'nope' is not defined",
         _site("undefined", "upstreams: {a: {socket: /tmp/a.sock}}\n"
                            "routes: [{prefix: /, upstream: nope}]\n")),
    Case("hostname", "the host must be an IP address",
         _site("hostname", "upstream: {address: 'db.internal:5432'}\n")),
    # Names
    Case("Upper", "must be a DNS label", _site("upper", UP), keeps_name=False),
    Case("under_score", "must be a DNS label", _site("underscore", UP), keeps_name=False),
    Case("-dash", "must be a DNS label", _site("dash", UP), keeps_name=False),
    Case("a" * 64, "must be a DNS label", _site("long", UP), keeps_name=False),
    Case("twice", "two files define the site 'twice'", _site("twice", UP),
         filename="twice.yml"),
    # Sockets
    Case("relsock", "the path must be absolute", _site("relsock", "upstream: {socket: a.sock}\n")),
    Case("dotdot", "'..' is not allowed", _site("dotdot", "upstream: {socket: /tmp/../a.sock}\n")),
    Case("longsock", "path is 108 bytes",
         _site("longsock", f"upstream: {{socket: /tmp/{'s' * 103}}}\n")),
    Case("outside", "outside the allowed socket folders",
         _site("outside", "upstream: {socket: /etc/passwd}\n")),
    Case("docker", "is a control socket",
         _site("docker", "upstream: {socket: /var/run/docker.sock}\n")),
    Case("logfile", "outside the allowed log folders",
         _site("logfile", UP + "access_log: {path: /etc/cron.d/evil}\n")),
    Case("adminslash", "write the path plainly",
         _site("adminslash", "upstream: {socket: /run//envoy/admin.sock}\n")),
    Case("admindot", "write the path plainly",
         _site("admindot", "upstream: {socket: /run/envoy/./admin.sock}\n")),
    # The escape hatch
    Case("hatchtype", "@type: must be a type URL", _site("hatchtype", UP + (
        "envoy: {virtual_host: {typed_per_filter_config: {x: {'@type': 5}}}}\n"))),
    Case("hatchlist", "set the generated one to null", _site("hatchlist", UP + (
        "routes:\n  - prefix: /\n    envoy: {route: {weighted_clusters: {clusters: 5}}}\n"))),
    Case("hatchnan", "per_connection_buffer_limit_bytes", _site("hatchnan", UP + (
        "envoy: {cluster: {per_connection_buffer_limit_bytes: .nan}}\n"))),
    Case("hatchread", "body.filename: makes Envoy open a file", _site("hatchread", UP + (
        "routes: [{prefix: /, respond: {status: 200}, envoy: {direct_response: "
        "{body: {filename: /etc/passwd}}}}]\n"))),
    Case("hatchwrite", "event_log_path: makes Envoy open a file", _site("hatchwrite", UP + (
        "envoy: {cluster: {health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1,"
        " healthy_threshold: 1, http_health_check: {path: /}, event_log_path: /etc/x}]}}\n"))),
    Case("logfifo", "exists and is not a regular file", make=_log_fifo),
    # The hatch judged on Envoy's parsed form, not on the spelling
    Case("hatchcamel", "route.clusterHeader: picks a cluster at request time", _site(
        "hatchcamel", UP + "routes: [{prefix: /, envoy: {route: {cluster: null,"
        " clusterHeader: x-to}}}]\n")),
    Case("hatchweight", "weightedClusters.clusters[1].name: 'stable' is not a cluster", _site(
        "hatchweight", UP + "routes: [{prefix: /, envoy: {route: {cluster: null,"
        " weightedClusters: {clusters: [{name: stable, weight: 1}]}}}}]\n")),
    Case("hatchenv", "header.value: the command %ENVIRONMENT% is not allowed", _site(
        "hatchenv", UP + "envoy: {virtual_host: {responseHeadersToAdd: [{header: {key: x-e,"
        " value: '%ENVIRONMENT(PATH)%'}}]}}\n")),
    Case("hatchstruct", "TypedStruct is refused", _site("hatchstruct", UP + (
        "envoy: {virtual_host: {typed_per_filter_config: {envoy.filters.http.cors: {'@type':"
        " type.googleapis.com/udpa.type.v1.TypedStruct, type_url: x}}}}\n"))),
    Case("hatchformat", "direct_response.body_format: not on the escape hatch's allow-list",
         _site("hatchformat", UP + "routes: [{prefix: /, respond: {status: 200}, envoy:"
               " {direct_response: {body_format: {text_format: '%ENVIRONMENT(HOME)%'}}}}]\n")),
    # Strings that reach Envoy
    Case("crlfheader", "response_headers.set.x-a: 'a\\r\\nset-cookie: s=1' holds carriage",
         _site("crlfheader", UP + 'response_headers: {set: {x-a: "a\\r\\nset-cookie: s=1"}}'
               '\n')),
    Case("crlfcors", "cors.origins[1]: 'https://a\\r\\nx: y' holds carriage return",
         _site("crlfcors", UP + 'cors: {origins: ["https://a\\r\\nx: y"]}\n')),
    Case("crlfredirect", "routes[1].redirect.path: '/a\\nb' holds line feed",
         _site("crlfredirect", UP + 'routes: [{prefix: /, redirect: {path: "/a\\nb"}}]\n')),
    Case("nulbody", "routes[1].respond.body: 'a\\x00b' holds NUL", _site(
        "nulbody", UP + 'routes: [{prefix: /, respond: {status: 200, body: "a\\0b"}}]\n')),
    Case("envlog", "access_log.format: '%ENVIRONMENT(HOME)%': the command %ENVIRONMENT%",
         _site("envlog", UP + "access_log: {path: /tmp/envlog.log,"
               " format: '%ENVIRONMENT(HOME)%'}\n")),
    # Domains
    Case("space", "is not a host name", b"domains: ['a b.example.com']\n" + UP.encode()),
    Case("port", "ports are not allowed", b"domains: [port.example.com:8080]\n" + UP.encode()),
    Case("scheme", "without scheme or path", b"domains: ['https://s.example.com']\n" + UP.encode()),
    Case("midwild", "is not a host name", b"domains: ['a.*.example.com']\n" + UP.encode()),
    Case("claimer", "is also claimed by", b"domains: [claimed.example.com]\n" + UP.encode()),
    # Regexes Python's re accepts and RE2 refuses
    Case("lookahead", "is not valid RE2 syntax",
         _site("lookahead", UP + "routes: [{regex: '(?=a)b'}]\n")),
    Case("backref", "is not valid RE2 syntax",
         _site("backref", UP + r"routes: [{regex: '(a)\1'}]" + "\n")),
    Case("bigregex", "Envoy allows at most 100",
         _site("bigregex", UP + "routes: [{regex: '/[a-z]{1000}'}]\n")),
    # Not regular files, links, permissions
    Case("outlink", "symlink to outside the sites folder", make=_outside_link),
    Case("dangling", "cannot open", make=_dangling_link),
    Case("unreadable", "Permission denied" if os.geteuid() != 0 else "not UTF-8",
         make=_unreadable),
    Case("fifo", "not a regular file", make=_fifo),
    Case("folder", "not a regular file", make=_directory),
    Case("sock", "cannot open", make=_socket_file),
    # Paths judged by what they resolve to
    Case("linkdocker", "control socket", make=_socket_link("/run/docker.sock")),
    Case("linksystemd", "control socket", make=_socket_link("/run/systemd/private")),
    Case("linkbus", "control socket", make=_socket_link("/var/run/dbus/system_bus_socket")),
    Case("linkfolder", "resolves to '/etc/x.sock') is outside the allowed socket folders",
         make=_folder_link),
    Case("loglink", "is a symlink to", make=_log_link),
    Case("loginsites", "is inside the sites folder", make=_log_in_sites),
    Case("loghardlink", "has 2 hard links", make=_log_hard_link),
    Case("logdevice", "outside the allowed log folders",
         _site("logdevice", UP + "access_log: {path: /dev/null}\n")),
    Case("certfifo", "not a regular file (a FIFO)", make=_cert_fifo),
    Case("metadata", "is link-local",
         _site("metadata", "upstream: {address: '169.254.169.254:80'}\n")),
    Case("ownport", "Envoy's own HTTPS listener",
         _site("ownport", "upstream: {address: '127.0.0.1:8443'}\n")),
    # Names
    Case("statsclash", "the cluster stats name 'statsmate' is also used by",
         make=_stats_clash),
    Case("manyerrors", "and 10 more problems",
         _site("manyerrors", UP + "".join(f"k{i}: 1\n" for i in range(30)))),
]
"""`claimer` claims the domain of the site `claimed`, which the tests create first."""
