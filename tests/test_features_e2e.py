"""Site features end to end, through the real Envoy: TLS by SNI with a certificate
renewal that leaves the listener alone, HTTP -> HTTPS redirects, websockets, retries,
site-wide filters, and the `envoy:` escape hatch.

Helpers first: self-signed certificates made on the spot, an HTTPS client that sends
SNI, and two tiny real servers on Unix sockets (a websocket echo, and an upstream whose
first request on each path fails). No mocks: each server is a real socket server,
stopped and its socket removed by `close()`."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.demo import servers
from tests.parts import Node, get, wait_for

pytestmark = pytest.mark.e2e

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def make_certificate(cert: Path, key: Path, names: list[str], days: int = 90) -> int:
    """Write a self-signed certificate for `names` and its key; return its serial."""
    private = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, names[0])])
    serial = x509.random_serial_number()
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(private.public_key()).serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                       critical=False)
        .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    os.chmod(key, 0o600)
    return serial


def https_get(port: int, sni: str, path: str = "/",
              alpn: list[str] | None = None) -> tuple[int, str, int, str | None]:
    """(status, body, serial of the presented certificate, ALPN chosen) over TLS with SNI."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = context.wrap_socket(raw, server_hostname=sni)
    try:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        serial = x509.load_der_x509_certificate(der).serial_number
        chosen = tls.selected_alpn_protocol()
        if chosen == "h2":
            return 0, "", serial, chosen
        connection = http.client.HTTPConnection(sni, port, timeout=5)
        connection.sock = tls
        connection.request("GET", path, headers={"Host": sni})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace"), serial, chosen
    finally:
        tls.close()


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class SocketServer:
    """A real threaded server on a Unix socket, served from a thread until `close()`."""

    def __init__(self, path: Path, handler: type[socketserver.BaseRequestHandler]) -> None:
        self.path = path
        self.server = _UnixServer(str(path), handler)
        os.chmod(path, 0o666)
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _read_head(stream: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = stream.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class WebsocketEcho(socketserver.BaseRequestHandler):
    """Answers a websocket upgrade (RFC 6455 handshake), then echoes text frames."""

    def handle(self) -> None:
        head = _read_head(self.request).decode(errors="replace")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head.split("\r\n")[1:]) if k}
        if headers.get("upgrade", "").lower() != "websocket":
            body = b"not an upgrade\n"
            self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
            return
        accept = base64.b64encode(hashlib.sha1(
            (headers["sec-websocket-key"] + WEBSOCKET_GUID).encode()).digest()).decode()
        self.request.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                              ).encode())
        while True:
            payload = read_frame(self.request)
            if payload is None:
                return
            self.request.sendall(frame(b"echo: " + payload, mask=False))


def frame(payload: bytes, mask: bool) -> bytes:
    """One final text frame (payload under 126 bytes), masked as clients must."""
    assert len(payload) < 126
    if not mask:
        return bytes([0x81, len(payload)]) + payload
    key = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + key + bytes(
        b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(stream: socket.socket) -> bytes | None:
    """The payload of one small frame, unmasked; None at the end of the stream."""
    head = _recv_exactly(stream, 2)
    if head is None or head[0] & 0x0F == 0x8:
        return None
    size, masked = head[1] & 0x7F, head[1] & 0x80
    key = _recv_exactly(stream, 4) if masked else b"\x00" * 4
    body = _recv_exactly(stream, size)
    if key is None or body is None:
        return None
    return bytes(b ^ key[i % 4] for i, b in enumerate(body))


def _recv_exactly(stream: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class FailsFirst(socketserver.BaseRequestHandler):
    """HTTP/1.1 upstream: the first request on each path gets 503, later ones 200."""

    seen: ClassVar[set[str]] = set()
    lock: ClassVar[threading.Lock] = threading.Lock()

    def handle(self) -> None:
        while True:
            head = _read_head(self.request)
            if not head:
                return
            path = head.split(b" ", 2)[1].decode()
            with self.lock:
                first = path not in self.seen
                self.seen.add(path)
            status, body = ("503 Service Unavailable", b"first\n") if first else (
                "200 OK", f"ok {path}\n".encode())
            self.request.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n"
                                 .encode() + body)



def request(port: int, host: str, path: str = "/", headers: dict[str, str] | None = None,
            source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one plain HTTP request through Envoy."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                            source_address=(source, 0))
    try:
        connection.request("GET", path, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        found = {k.lower(): v for k, v in response.getheaders()}
        return response.status, found, response.read()
    finally:
        connection.close()


def upgrade(port: int, host: str) -> tuple[str, socket.socket]:
    """Send a websocket upgrade through Envoy; (response head, the open socket)."""
    key = base64.b64encode(os.urandom(16)).decode()
    stream = socket.create_connection(("127.0.0.1", port), timeout=5)
    stream.sendall((f"GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = _read_head(stream).decode(errors="replace")
    expected = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())
    if head.startswith("HTTP/1.1 101"):
        assert f"sec-websocket-accept: {expected.decode()}".lower() in head.lower()
    return head, stream


@pytest.fixture
def node(short_tmp: Path) -> Iterator[Node]:
    """The daemon, Envoy and stand-in upstreams, with an HTTPS listener on a free port."""
    from tests.parts import free_port

    tls_port = free_port()
    started = Node(short_tmp, servers.STANDIN,
                   extra_args=("--listen-tls", f"127.0.0.1:{tls_port}"), shared_upstreams=True)
    started.tls_port = tls_port  # type: ignore[attr-defined]
    try:
        yield started
    finally:
        started.close()


def _tls_site(node: Node, name: str, certs: Path) -> Path:
    folder = certs / name
    folder.mkdir(parents=True)
    make_certificate(folder / "cert.pem", folder / "key.pem", [f"{name}.test"])
    sock = node.upstreams.start(name)
    node.put(name, f"""
domains: [{name}.test]
upstream: {{socket: {sock}}}
tls: {{cert: {folder}/cert.pem, key: {folder}/key.pem}}
routes:
  - {{prefix: /.well-known/, https_redirect: false}}
  - {{prefix: /}}
""")
    return folder


def _listener_counters(node: Node) -> dict[str, int]:
    stats = node.envoy.stats(r"^listener_manager\.(listener_modified|lds\.update_success)$")
    return {k: int(v) for k, v in stats.items()}


def test_tls_sites_by_sni_with_redirects_and_a_renewal_that_keeps_the_listener(
    node: Node, short_tmp: Path,
) -> None:
    """Two TLS sites are served by SNI with their own certificates; plain HTTP answers
    301 to HTTPS except on an opted-out route; renaming new certificate files into place
    (as certbot does) is served without any listener change."""
    port = node.tls_port  # type: ignore[attr-defined]
    certs = short_tmp / "certs"
    folder = _tls_site(node, "alpha", certs)
    _tls_site(node, "beta", certs)
    node.start()
    wait_for(lambda: https_get(port, "alpha.test")[:2] == (200, "alpha /\n"), 20,
             "alpha over HTTPS")
    assert https_get(port, "beta.test", "/b")[:2] == (200, "beta /b\n")
    alpha_serial = https_get(port, "alpha.test")[2]
    assert alpha_serial != https_get(port, "beta.test")[2]
    assert https_get(port, "alpha.test", alpn=["h2", "http/1.1"])[3] == "h2"

    status, headers, _ = request(node.port, "alpha.test", "/x?y=1")
    assert (status, headers["location"]) == (301, f"https://alpha.test:{port}/x?y=1")
    assert get(node.port, "alpha.test", "/.well-known/t") == (200, "alpha /.well-known/t\n")

    before = _listener_counters(node)
    new_serial = make_certificate(folder / ".cert.new", folder / ".key.new", ["alpha.test"])
    os.replace(folder / ".key.new", folder / "key.pem")
    os.replace(folder / ".cert.new", folder / "cert.pem")
    wait_for(lambda: https_get(port, "alpha.test")[2] == new_serial, 10, "the new certificate")
    assert https_get(port, "alpha.test")[:2] == (200, "alpha /\n")
    assert _listener_counters(node) == before
    assert node.envoy.rejections() == {}
    inotify = sum(1 for fd in os.listdir(f"/proc/{node.envoy.process.pid}/fd")  # type: ignore
                  if os.readlink(f"/proc/{node.envoy.process.pid}/fd/{fd}")  # type: ignore
                  == "anon_inode:inotify")
    assert inotify == 3 + 2 * 2  # cds, lds, rds; two per certificate


def test_websocket_retries_filters_and_overrides_through_envoy(
    node: Node, short_tmp: Path,
) -> None:
    """A websocket upgrade reaches a socket upstream and echoes; a retried route survives
    a failing first attempt; site-wide filters act per site; an envoy: override reaches
    Envoy, and a wrong one is refused naming the site and the field."""
    sockets = node.upstreams.folder
    echo = SocketServer(sockets / "echo.sock", WebsocketEcho)
    flaky = SocketServer(sockets / "flaky.sock", FailsFirst)
    plain = node.upstreams.start("feat")
    log = short_tmp / "feat.log"
    try:
        node.put("ws", f"domains: [ws.test]\nupstream: {{socket: {echo.path}}}\n"
                 "routes: [{prefix: /, websocket: true}]\n")
        node.put("nows", f"domains: [nows.test]\nupstream: {{socket: {echo.path}}}\n")
        node.put("flaky", f"domains: [flaky.test]\nupstream: {{socket: {flaky.path}}}\n"
                 "routes:\n  - {prefix: /retry, retries: {attempts: 1, conditions: [5xx]}}\n"
                 "  - {prefix: /}\n")
        node.put("feat", f"""
domains: [feat.test]
upstream: {{socket: {plain}}}
compression: true
cors: {{origins: ["https://app.test"]}}
rate_limit: {{requests: 20, per: 60s}}
access_log: {{path: {log}, format: "%REQ(:AUTHORITY)% %RESPONSE_CODE% %REQ(:PATH)%"}}
response_headers: {{set: {{x-site: feat}}}}
envoy:
  cluster: {{per_connection_buffer_limit_bytes: 12345}}
""")
        node.put("hc", f"domains: [hc.test]\nupstream:\n  endpoints: [{{socket: {plain}}}]\n"
                 "  lb_policy: least_request\n  circuit_breaker: {max_requests: 5}\n"
                 "  health_check: {path: /healthz, interval: 1s, timeout: 1s}\n")
        node.put("denied", f"domains: [denied.test]\nupstream: {{socket: {plain}}}\n"
                 "access: {deny: [127.0.0.0/8]}\n")
        node.start()
        wait_for(lambda: node.status_code("feat.test") == 200, 20, "feat served")
        _websocket(node)
        _retries(node)
        _filters(node, log)
        _overrides(node)
        wait_for(lambda: node.envoy.stats(r"^cluster\.hc\.health_check\.success$").get(
            "cluster.hc.health_check.success", 0) >= 2, 10,
            f"health checks over the socket {node.status()['sites'].get('hc')}"
            f" {node.envoy.stats('health_check')}")
        assert node.envoy.rejections() == {}
    finally:
        echo.close()
        flaky.close()


def _websocket(node: Node) -> None:
    head, stream = upgrade(node.port, "ws.test")
    with stream:
        assert head.startswith("HTTP/1.1 101"), head
        stream.sendall(frame(b"hello", mask=True))
        assert read_frame(stream) == b"echo: hello"
    head, stream = upgrade(node.port, "nows.test")
    stream.close()
    assert not head.startswith("HTTP/1.1 101"), head


def _retries(node: Node) -> None:
    assert get(node.port, "flaky.test", "/retry/1") == (200, "ok /retry/1\n")
    assert get(node.port, "flaky.test", "/plain/1")[0] == 503


def _filters(node: Node, log: Path) -> None:
    long_path = "/" + "a" * 200
    status, headers, _ = request(node.port, "feat.test", long_path,
                                 {"Accept-Encoding": "gzip", "Origin": "https://app.test"})
    assert (status, headers.get("content-encoding")) == (200, "gzip"), headers
    assert headers.get("access-control-allow-origin") == "https://app.test", headers
    assert headers.get("x-site") == "feat"
    status, headers, _ = request(node.port, "denied.test", long_path, {"Accept-Encoding": "gzip"})
    assert status == 403 and "content-encoding" not in headers
    wait_for(lambda: log.exists() and f"feat.test 200 {long_path}" in log.read_text(), 10,
             "the access log line")
    assert "denied.test" not in log.read_text()
    statuses = [request(node.port, "feat.test")[0] for _ in range(25)]
    assert 429 in statuses and 200 in statuses


def _overrides(node: Node) -> None:
    dump = json.loads(node.envoy.admin("/config_dump?resource=dynamic_active_clusters"))
    feat = [c["cluster"] for c in dump["configs"] if c["cluster"]["name"] == "feat"]
    assert feat and feat[0]["per_connection_buffer_limit_bytes"] == 12345
    site = node.sites / "feat.yaml"
    good = site.read_text()
    for wrong, named in (("per_connection_buffer_limt_bytes: 1",
                          "per_connection_buffer_limt_bytes"),
                         ("connect_timeout: 0s", "ConnectTimeout")):
        node.put("feat", good.replace("per_connection_buffer_limit_bytes: 12345", wrong))
        wait_for(lambda named=named: any(
            named in p["message"] for p in node.status().get("sites", {}).get("feat", {}).get(
                "problems", [])), 20, f"the problem naming {named}")
        problems = node.status()["sites"]["feat"]["problems"]
        assert all(str(site) in p["message"] for p in problems), problems
        assert node.status()["sites"]["feat"]["state"] == "serving-last-good"
        assert node.status_code("feat.test") in (200, 429)
