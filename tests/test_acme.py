"""ACME without an ACME server, on real files and real sockets: the site key's rules,
the challenge routes, the certificate folder's swap, the renewal time, and the backoff
after a server that is down or answers 429 with Retry-After (a real HTTPS server on
loopback)."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from controlplane.errors import SiteError
from controlplane.intake import checking, loading, validating
from controlplane.issuing import issuer, schedule, store
from controlplane.render import challenges, rendering
from controlplane.settings import Settings
from controlplane.site.spec import Site
from tests.acmeserver import _self_signed
from tests.parts import free_port, wait_for
from tests.test_features_e2e import make_certificate


def _site(text: str, name: str = "auto") -> Site:
    document = loading.parse(text.encode(), f"{name}.yaml")
    return validating.validate(name, f"{name}.yaml", "digest", document)


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(out_dir=tmp_path / "out", sites_dir=tmp_path / "sites").replace(**values)


ACME_SITE = "domains: [auto.test]\nupstream: {socket: /run/auto.sock}\ntls: {acme: true}\n"


def test_a_wildcard_is_refused_with_the_reason() -> None:
    """DNS-01 is not supported, so a wildcard domain of an ACME site names the fix."""
    with pytest.raises(SiteError) as raised:
        _site("domains: ['*.auto.test']\nupstream: {socket: /run/a.sock}\ntls: {acme: true}\n")
    text = str(raised.value)
    assert "tls.acme" in text and "DNS-01" in text and "'*.auto.test'" in text


def test_acme_and_files_exclude_each_other() -> None:
    """`acme: true` with `cert`, or neither, is an error that says what to write."""
    with pytest.raises(SiteError, match="not both"):
        _site("domains: [a.test]\nupstream: {socket: /run/a.sock}\n"
              "tls: {acme: true, cert: /etc/a.pem}\n")
    with pytest.raises(SiteError, match=r"acme: true"):
        _site("domains: [a.test]\nupstream: {socket: /run/a.sock}\ntls: {key: /etc/a.pem}\n")


def test_a_site_waiting_for_its_certificate_renders_as_plain_http(tmp_path: Path) -> None:
    """No certificate yet: no secret, no HTTPS chain, no redirect; once the files are in
    its folder, the site names them and redirects."""
    settings = _settings(tmp_path)
    waiting = checking.check_content("auto", "auto.yaml", ACME_SITE.encode(), settings)
    assert waiting.acme and not waiting.problems
    assert waiting.resources is not None and waiting.resources.tls is None
    assert "redirect" not in json.dumps(waiting.resources.virtual_host)
    folder = store.private_folder(settings, store.CERTS_DIR, "auto")
    make_certificate(folder / "c.pem", folder / "k.pem", ["auto.test"])
    store.install(settings, "auto", (folder / "c.pem").read_bytes(),
                  (folder / "k.pem").read_bytes())
    issued = checking.check_content("auto", "auto.yaml", ACME_SITE.encode(), settings)
    assert issued.resources is not None and issued.resources.tls is not None
    cert, key = store.files(settings, "auto")
    files = issued.resources.tls.secret["tls_certificate"]
    assert (files["certificate_chain"]["filename"], files["private_key"]["filename"]) == (
        cert, key)
    assert files["watched_directory"]["path"] == str(store.site_folder(settings, "auto"))
    assert issued.resources.virtual_host["routes"][0]["redirect"]["https_redirect"] is True


def test_challenge_routes_come_first_and_switch_every_filter_off() -> None:
    """Before the HTTPS redirect, basic auth, the auth service and the access list: the
    exact token path, answered with the key authorization; Envoy's types accept the
    result."""
    site = _site("domains: [auto.test]\nupstream: {socket: /run/auto.sock}\n"
                 "tls: {cert: /etc/c.pem, key: /etc/k.pem}\naccess: {allow: [10.0.0.0/8]}\n")
    rendered = rendering.render_site(site)
    answered = challenges.with_answers(rendered, {"tok-EN_1": "tok-EN_1.thumb_PRINT"})
    first, second = answered.virtual_host["routes"][:2]
    assert first["match"] == {"path": "/.well-known/acme-challenge/tok-EN_1"}
    assert first["direct_response"]["body"]["inline_string"] == "tok-EN_1.thumb_PRINT"
    assert {name for name, c in first["typed_per_filter_config"].items() if c["disabled"]} == {
        "envoy.filters.http.rbac", "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.cors", "envoy.filters.http.basic_auth",
        "envoy.filters.http.compressor", "envoy.filters.http.ext_authz",
        "envoy.filters.http.custom_response"}
    assert second["redirect"]["https_redirect"] is True
    assert json.loads(answered.virtual_host_json) == answered.virtual_host
    rendering.check_types(answered.virtual_host, "virtual_host", "auto.yaml", "vh")
    assert challenges.with_answers(rendered, {}) is rendered


@pytest.mark.parametrize("token", ["../x", "a b", "a\r\nx: y", "%ENVIRONMENT(HOME)%", ""])
def test_a_token_that_is_not_base64url_never_becomes_a_route(token: str) -> None:
    """A server's token reaches Envoy only as base64url: no path tricks, no CR/LF."""
    with pytest.raises(ValueError):
        challenges.route(token, "abc.def")
    with pytest.raises(ValueError):
        challenges.route("abc", f"{token}.def" if token else "")


def test_a_new_certificate_is_swapped_in_by_one_rename_and_can_be_put_back(
        tmp_path: Path) -> None:
    """Both files change together through `..data`; the names Envoy reads stay; folders
    0700 and files 0600; the previous version is kept for a swap back."""
    settings = _settings(tmp_path)
    serials = []
    for i in range(2):
        make_certificate(tmp_path / f"c{i}", tmp_path / f"k{i}", ["auto.test"])
        serials.append(format(x509.load_pem_x509_certificate(
            (tmp_path / f"c{i}").read_bytes()).serial_number, "x"))
    assert store.install(settings, "auto", (tmp_path / "c0").read_bytes(),
                         (tmp_path / "k0").read_bytes()) is None
    previous = store.install(settings, "auto", (tmp_path / "c1").read_bytes(),
                             (tmp_path / "k1").read_bytes())
    current = store.current(settings, "auto")
    assert current is not None and current.serial == serials[1]
    cert, key = store.files(settings, "auto")
    assert Path(key).read_bytes() == (tmp_path / "k1").read_bytes()
    assert os.readlink(cert) == f"{store.DATA_LINK}/{store.CERT_FILE}"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    for folder in (store.root(settings), store.site_folder(settings, "auto")):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert previous is not None
    store.restore(settings, "auto", previous)
    restored = store.current(settings, "auto")
    assert restored is not None and restored.serial == serials[0]
    assert Path(key).read_bytes() == (tmp_path / "k0").read_bytes()


def test_renewal_is_due_with_a_third_of_the_lifetime_left(tmp_path: Path) -> None:
    """Between a third and a third plus the jitter before expiry, the same for the same
    certificate; the server's renewal info wins when it gave one."""
    settings = _settings(tmp_path)
    make_certificate(tmp_path / "c", tmp_path / "k", ["auto.test"], days=90)
    store.install(settings, "auto", (tmp_path / "c").read_bytes(), (tmp_path / "k").read_bytes())
    current = store.current(settings, "auto")
    assert current is not None
    lifetime = current.not_after - current.not_before
    at = schedule.renewal_at(current, None)
    assert current.not_after - lifetime * (1 / 3 + schedule.JITTER) <= at
    assert at <= current.not_after - lifetime / 3
    assert schedule.renewal_at(current, None) == at
    assert schedule.renewal_at(current, 12345.0) == 12345.0


def _issuer(settings: Settings) -> tuple[issuer.Issuer, list[str], threading.Event]:
    results: list[str] = []
    woken = threading.Event()
    return issuer.Issuer(settings, wake=woken.set, counted=results.append), results, woken


def test_a_server_that_is_down_backs_off_and_a_restart_keeps_the_backoff(
        tmp_path: Path) -> None:
    """A refused connection: the note says so and when the next attempt is; a new issuer
    (a restarted daemon) waits the same, rather than asking again at once."""
    settings = _settings(tmp_path, acme_directory=f"https://127.0.0.1:{free_port()}/dir",
                         acme_agree_terms=True)
    first, results, woken = _issuer(settings)
    first.want({"auto": ("auto.test",)})
    first.tick()
    wait_for(lambda: results, 20, "the failed order")
    wait_for(woken.is_set, 5, "the loop woken")
    first.close()
    assert results == ["unreachable"]
    note = first.notes()["auto"]
    assert note.startswith("waiting for certificate: ") and "cannot reach" in note, note
    again, _, _ = _issuer(settings)
    again.want({"auto": ("auto.test",)})
    due = again.due_in()
    assert due is not None and schedule.RETRY_S - 5 < due <= schedule.RETRY_S
    assert again.notes()["auto"] == note
    # Editing the domains (reordered, or new ones) does not buy an order sooner: the
    # backoff holds against a site that would order every minute on the shared account.
    again.want({"auto": ("www.auto.test", "auto.test")})
    edited = again.due_in()
    assert edited is not None and schedule.RETRY_S - 5 < edited <= schedule.RETRY_S


@pytest.fixture
def rate_limited(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTPS server with an ACME directory and nonces, that answers every POST
    (a new account, an order) 429 with Retry-After: 7200."""
    cert, key = tmp_path / "ca.pem", tmp_path / "ca.key"
    _self_signed(cert, key)

    class Limited(http.server.BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, object], kind: str, **headers: str) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": kind, "Replay-Nonce": "bm9uY2U",
                                "Content-Length": str(len(data)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:
            base = f"https://127.0.0.1:{self.server.server_address[1]}"
            if self.path.startswith("/ari/"):  # renewal info: the window closed an hour ago
                now = time.time()
                self._send(200, {"suggestedWindow": {"start": _rfc3339(now - 7200),
                                                     "end": _rfc3339(now - 3600)}},
                           "application/json", **{"Retry-After": "21600"})
                return
            self._send(200, {"newNonce": f"{base}/nonce", "newAccount": f"{base}/account",
                             "renewalInfo": f"{base}/ari",
                             "newOrder": f"{base}/order", "revokeCert": f"{base}/revoke",
                             "keyChange": f"{base}/key", "meta": {
                                 "termsOfService": f"{base}/terms.pdf"}}, "application/json")

        do_HEAD = do_GET

        def do_POST(self) -> None:
            self._send(429, {"type": "urn:ietf:params:acme:error:rateLimited",
                             "detail": "too many new orders recently"},
                       "application/problem+json", **{"Retry-After": "7200"})

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Limited)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/dir", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_retry_after_is_honoured(tmp_path: Path, rate_limited: tuple[str, Path]) -> None:
    """A 429 with Retry-After: 7200 puts the next attempt two hours out, past the
    one-minute backoff, in the state folder too; the note quotes the server."""
    url, ca = rate_limited
    settings = _settings(tmp_path, acme_directory=url, acme_directory_ca=ca,
                         acme_agree_terms=True)
    issuing, results, _ = _issuer(settings)
    issuing.want({"auto": ("auto.test",)})
    issuing.tick()
    wait_for(lambda: results, 20, "the refused order")
    issuing.close()
    assert results == ["rate_limited"]
    assert "too many new orders recently" in issuing.notes()["auto"]
    due = issuing.due_in()
    assert due is not None and 7100 < due <= 7200
    saved = json.loads((store.root(settings) / store.SCHEDULE_FILE).read_text())
    assert saved["auto"]["next_attempt"] > time.time() + 7100


def test_terms_not_agreed_stop_the_order_with_the_fix(tmp_path: Path,
                                                      rate_limited: tuple[str, Path]) -> None:
    """Without acme_agree_terms nothing is ordered (no POST reaches the server); the
    note names the terms and the setting."""
    url, ca = rate_limited
    settings = _settings(tmp_path, acme_directory=url, acme_directory_ca=ca)
    issuing, results, _ = _issuer(settings)
    issuing.want({"auto": ("auto.test",)})
    issuing.tick()
    wait_for(lambda: results, 20, "the order")
    issuing.close()
    assert results == ["terms"]
    note = issuing.notes()["auto"]
    assert "terms.pdf" in note and "acme_agree_terms: true" in note, note


def test_a_site_may_not_name_the_daemons_own_certificate_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another site's ACME key in the state folder, named as a site's own `tls.key`, is
    refused by `check` (resolved paths: a symlink to it too)."""
    from controlplane.cli import main

    settings = _settings(tmp_path)
    make_certificate(tmp_path / "c", tmp_path / "k", ["victim.test"])
    store.install(settings, "victim", (tmp_path / "c").read_bytes(),
                  (tmp_path / "k").read_bytes())
    cert, key = store.files(settings, "victim")
    (tmp_path / "link.pem").symlink_to(key)
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "thief.yaml").write_text(
        f"domains: [thief.test]\nupstream: {{socket: /run/thief.sock}}\n"
        f"tls: {{cert: {cert}, key: {tmp_path / 'link.pem'}}}\n")
    assert main(["check", str(sites), "--out", str(tmp_path / "out"), "--no-envoy"]) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "tls.cert" in out and "tls.key" in out and "is in the state folder" in out, out


def _rfc3339(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _issued_by_a_ca(cert: Path, key: Path, names: list[str]) -> None:
    """A certificate with the Authority Key Identifier that ARI names it by."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca, leaf = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test CA")])
    built = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, names[0])]))
             .issuer_name(issuer_name).public_key(leaf.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=90))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                            critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 ca.public_key()), critical=False)
             .sign(ca, hashes.SHA256()))
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(leaf.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def test_renewal_info_from_the_server_makes_a_young_certificate_due(
        tmp_path: Path, rate_limited: tuple[str, Path]) -> None:
    """A certificate with 90 days left is not due by its lifetime; the server's renewal
    info (ARI) says its window has passed, so the issuer asks for it and is due at once."""
    url, ca = rate_limited
    settings = _settings(tmp_path, acme_directory=url, acme_directory_ca=ca,
                         acme_agree_terms=True)
    _issued_by_a_ca(tmp_path / "c", tmp_path / "k", ["auto.test"])
    store.install(settings, "auto", (tmp_path / "c").read_bytes(), (tmp_path / "k").read_bytes())
    current = store.current(settings, "auto")
    assert current is not None and schedule.renewal_at(current, None) > time.time() + 86400
    issuing, results, woken = _issuer(settings)
    issuing.want({"auto": ("auto.test",)})
    issuing.tick()  # the first round asks the server's renewal info, and orders nothing
    wait_for(lambda: store.load_json(settings, store.SCHEDULE_FILE).get("auto", {}).get(
        "ari_at"), 20, "the renewal info saved")
    wait_for(woken.is_set, 5, "the loop woken")
    saved = store.load_json(settings, store.SCHEDULE_FILE)["auto"]
    assert time.time() - 7300 < saved["ari_at"] < time.time() - 3500
    assert saved["ari_check_after"] > time.time() + 21000  # the server's Retry-After
    assert results == []
    wait_for(lambda: issuing.due_in() == 0.0, 5, "the renewal due now")
    issuing.close()
