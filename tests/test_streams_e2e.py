"""TCP sites and TLS passthrough on the real Envoy: a TCP site's own port carries bytes
both ways to an upstream socket; passthrough sites on the HTTPS port send each TLS
connection, by SNI and undecrypted, to their own TLS backend (each presents its own
certificate), beside an HTTP site that still serves; hostile listen addresses and
claimed domains are refused."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.cli import main
from tests.parts import Node, free_port, temporary_node, wait_for
from tests.test_features_e2e import make_certificate
from tests.unixserve import handling

pytestmark = pytest.mark.e2e


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(b"echo:" + data)


def _tls_backend(cert: Path, key: Path, name: str) -> type[socketserver.BaseRequestHandler]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Backend(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with context.wrap_socket(self.request, server_side=True) as tls:
                tls.sendall(f"backend {name}: {tls.recv(100).decode()}".encode())

    return Backend


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Node, int, int, dict[str, bytes]]]:
    tcp_port, tls_port = free_port(), free_port()
    with temporary_node("cp-streams-", extra_args=(
            "--listen-tls", f"127.0.0.1:{tls_port}")) as running:
        folder = running.upstreams.folder
        certs = {}
        with contextlib.ExitStack() as stack:
            stack.enter_context(handling(folder / "db.sock", _Echo))
            for name in ("a", "b"):
                cert, key = running.folder / f"{name}.pem", running.folder / f"{name}.key"
                make_certificate(cert, key, [f"{name}.pass.example"])
                certs[name] = ssl.PEM_cert_to_DER_cert(cert.read_text())
                stack.enter_context(handling(folder / f"tls-{name}.sock",
                                             _tls_backend(cert, key, name)))
                running.put(f"pass-{name}", f"kind: tls-passthrough\ndomains:"
                            f" [{name}.pass.example]\nupstream: {{socket:"
                            f" {folder}/tls-{name}.sock}}\n")
            running.put("db", f"kind: tcp\nlisten: 127.0.0.1:{tcp_port}\n"
                        f"upstream: {{socket: {folder}/db.sock}}\n")
            running.put("web", running.site("web", ["web.example"],
                                            running.upstreams.start("web")))
            running.start()
            wait_for(lambda: running.serves("web.example", "web /"), 20, "web.example")
            wait_for(lambda: _tcp(tcp_port, b"ping") == b"echo:ping", 20, "the TCP site")
            yield running, tcp_port, tls_port, certs


def _tcp(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(data)
        return connection.recv(65536)


def _tls(port: int, sni: str) -> tuple[bytes, str]:
    """(the certificate presented, what the backend said) over TLS with `sni`."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(b"hello")
        return tls.getpeercert(binary_form=True) or b"", tls.recv(100).decode()


def test_a_tcp_site_carries_bytes_both_ways(node: tuple[Node, int, int, dict[str, bytes]]
                                            ) -> None:
    """Bytes sent to the TCP site's port reach the upstream socket and come back."""
    _, tcp_port, _, _ = node
    payload = bytes(range(256)) * 8
    assert _tcp(tcp_port, payload[:1000]) == b"echo:" + payload[:1000]


def test_passthrough_routes_by_sni_to_each_backend(node: tuple[Node, int, int,
                                                                dict[str, bytes]]) -> None:
    """Each SNI name reaches its own backend, which terminates TLS with its own
    certificate: Envoy decrypts nothing."""
    _, _, tls_port, certs = node
    for name in ("a", "b"):
        cert, said = _tls(tls_port, f"{name}.pass.example")
        assert cert == certs[name]
        assert said == f"backend {name}: hello"


def test_an_unknown_name_is_refused_and_http_still_serves(
        node: tuple[Node, int, int, dict[str, bytes]]) -> None:
    """A name no site passes through gets no backend; HTTP sites serve as before."""
    running, _, tls_port, _ = node
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _tls(tls_port, "c.pass.example")
    assert running.serves("web.example", "web /")
    wait_for(lambda: running.status()["sites"]["db"]["state"] == "serving", 30,
             "the TCP site confirmed as serving")


@pytest.mark.parametrize(("text", "expected"), [
    ("kind: tcp\nlisten: 0.0.0.0:8080\nupstream: {socket: /tmp/x.sock}\n",
     "x.yaml:2: listen: port 8080 is Envoy's own HTTP listener"),
    ("kind: tcp\nlisten: 127.0.0.1:10250\nupstream: {socket: /tmp/x.sock}\n",
     "x.yaml:2: listen: port 10250 is the kubelet's API"),
    ("kind: tcp\nlisten: 0.0.0.0:22\nupstream: {socket: /tmp/x.sock}\n",
     "x.yaml:2: listen: port 22 is below 1024"),
    ("kind: tcp\nlisten: 0.0.0.0:6000\nupstream: {address: 169.254.169.254:80}\n",
     "x.yaml:3: upstream.address: '169.254.169.254:80' is link-local"),
    ("kind: tcp\nlisten: 0.0.0.0:7000\nupstream: {socket: /tmp/x.sock}\n",
     "the listen port '7000' is also used by"),
    ("kind: tls-passthrough\ndomains: [taken.example]\nupstream: {socket: /tmp/x.sock}\n",
     "'taken.example' is also claimed by"),
    ("kind: tcp\ndomains: [a.example]\nupstream: {socket: /tmp/x.sock}\n",
     "a tcp site has 'listen: HOST:PORT' and no 'domains'"),
    ("kind: tls-passthrough\ndomains: ['*']\nupstream: {socket: /tmp/x.sock}\n",
     "SNI cannot match '*'"),
])
def test_hostile_or_wrong_stream_sites_are_refused(tmp_path: Path, text: str, expected: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A TCP site cannot take Envoy's, the daemon's, a control-plane or a privileged port
    or another site's; its upstream is fenced like any; a passthrough domain cannot be an
    HTTP site's too."""
    (tmp_path / "other.yaml").write_text("kind: tcp\nlisten: 127.0.0.1:7000\n"
                                         "upstream: {socket: /tmp/other.sock}\n")
    (tmp_path / "web.yaml").write_text("domains: [taken.example]\n"
                                       "upstream: {socket: /tmp/web.sock}\n")
    (tmp_path / "x.yaml").write_text(text)
    assert main(["check", str(tmp_path), "--no-envoy"]) == 1
    err = capsys.readouterr().err
    assert expected in err, err


def test_explain_leaves_stream_sites_out(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`explain` answers for HTTP sites beside TCP and passthrough sites, and a
    passthrough domain is no HTTP site's (Envoy's 404 on plain HTTP)."""
    (tmp_path / "db.yaml").write_text("kind: tcp\nlisten: 127.0.0.1:7001\n"
                                      "upstream: {socket: /tmp/db.sock}\n")
    (tmp_path / "vault.yaml").write_text("kind: tls-passthrough\ndomains: [v.example]\n"
                                         "upstream: {socket: /tmp/v.sock}\n")
    (tmp_path / "web.yaml").write_text("domains: [w.example]\nupstream: {socket: /tmp/w.sock}\n")
    assert main(["explain", str(tmp_path), "http://w.example/", "--no-envoy"]) == 0
    assert "site: web" in capsys.readouterr().out
    assert main(["explain", str(tmp_path), "http://v.example/", "--no-envoy"]) == 1
    assert "404: no site serves the host 'v.example'" in capsys.readouterr().out


def _state(running: Node, name: str) -> str | None:
    site = running.status().get("sites", {}).get(name)
    return site["state"] if site is not None else None


def test_no_listener_loops_or_takes_another_sites_upstream_port(
        node: tuple[Node, int, int, dict[str, bytes]]) -> None:
    """On the real Envoy: a TCP site whose upstream is its own port, and one listening on
    the port an established HTTP site reaches on loopback, get no listener (the port stays
    free, the HTTP site's requests never reach the newcomer's upstream); both are told
    why, and the other sites serve on."""
    running, tcp_port, _, _ = node
    folder = running.upstreams.folder
    taken, looped = free_port(), free_port()
    running.put("api", f"domains: [api.example]\nupstream: {{address: 127.0.0.1:{taken}}}\n")
    wait_for(lambda: _state(running, "api") == "serving", 30, "api serving")
    running.put("thief", f"kind: tcp\nlisten: 0.0.0.0:{taken}\n"
                f"upstream: {{socket: {folder}/db.sock}}\n")
    running.put("loop", f"kind: tcp\nlisten: 127.0.0.1:{looped}\n"
                f"upstream: {{address: 127.0.0.1:{looped}}}\n")
    try:
        wait_for(lambda: (_state(running, "thief"), _state(running, "loop")) == (
            "invalid", "invalid"), 30, "both refused")
        sites = running.status()["sites"]
        assert "reaches its upstream (127.0.0.1:" in sites["thief"]["problems"][0]["message"]
        assert "api.yaml" in sites["thief"]["problems"][0]["message"]
        assert "this site's own listener" in sites["loop"]["problems"][0]["message"]
        assert _state(running, "api") == "serving"
        listeners = (running.out / "lds.json").read_text()
        assert "tcp-thief" not in listeners and "tcp-loop" not in listeners
        for port in (taken, looped):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert running.status_code("api.example") == 503  # its upstream is down, not taken
        assert _tcp(tcp_port, b"ping") == b"echo:ping"
        assert running.envoy.rejections() == {}
    finally:
        for name in ("api", "thief", "loop"):
            (running.sites / f"{name}.yaml").unlink()
        wait_for(lambda: not {"api", "thief", "loop"} & set(running.status()["sites"]), 30,
                 "the test's sites gone")
