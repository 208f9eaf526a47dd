"""Messages that teach the fix: each mistake a new user makes often is answered in one
`FILE:LINE: FIELD: REASON` line that names the fix in the user's words. One case per
message; the whole line is pinned, so a message that stops teaching fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.cli import main
from controlplane.intake.checking import check_content, fence_of
from controlplane.intake.selecting import select
from controlplane.settings import Settings
from tests.test_features_e2e import make_certificate

SOCK = "upstream: {socket: /tmp/a.sock}\n"


def _lines(text: str) -> list[str]:
    """The problems of the per-file checks, then of the per-pass ones (paths)."""
    settings = Settings()
    checked = check_content("site", "sites/site.yaml", text.encode(), settings)
    selection = select({"site": checked}, {}, None, fence=fence_of(settings))
    return [str(p) for p in selection.problems.get("site", [])]


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("domains: [*.example.com]\n" + SOCK,
                 "sites/site.yaml:1: YAML: did not find expected alphabetic or numeric character;"
                 " a value starting with '*' is read as a YAML alias or anchor: quote it, as"
                 " '*.example.com'", id="unquoted-wildcard"),
    pytest.param("domains:\n  - *.example.com\n" + SOCK,
                 "sites/site.yaml:2: YAML: did not find expected alphabetic or numeric character;"
                 " a value starting with '*' is read as a YAML alias or anchor: quote it, as"
                 " '*.example.com'", id="unquoted-wildcard-block"),
    pytest.param("domains: [a.example]\nupstream: {endpoints: [{socket: /tmp/a.sock}],"
                 " connect_timeout: 30}\n",
                 "sites/site.yaml:2: upstream.connect_timeout: 30 is not a duration; write a"
                 " duration like 30s, 500ms, 5m (a number and a unit: ms, s, m or h)",
                 id="duration-without-unit"),
    pytest.param("domains: [a.example]\n" + SOCK + "routes:\n  - prefix: /\n    timeout: 30sec\n",
                 "sites/site.yaml:5: routes[1].timeout: '30sec' is not a duration; write a"
                 " duration like 30s, 500ms, 5m (a number and a unit: ms, s, m or h)",
                 id="duration-30sec"),
    pytest.param("domains: [a.example]\n" + SOCK + "routes:\n  - prefix: /\n"
                 "    timeout: 99999999999999h\n",
                 "sites/site.yaml:5: routes[1].timeout: '99999999999999h' is longer than Envoy"
                 " takes; write at most 315576000000s (10,000 years)", id="duration-too-long"),
    pytest.param("domains: [a.example]\n" + SOCK + "routes:\n  - prefix: /\n"
                 "    timeout: " + "9" * 400 + "s\n",
                 "sites/site.yaml:5: routes[1].timeout: '" + "9" * 400 + "s' is longer than"
                 " Envoy takes; write at most 315576000000s (10,000 years)",
                 id="duration-past-float"),
    pytest.param("domains: [a.example]\nupstream: http://127.0.0.1:8000\n",
                 "sites/site.yaml:2: upstream: 'http://127.0.0.1:8000' is not an endpoint;"
                 " write {address: 127.0.0.1:8000}", id="upstream-url"),
    pytest.param("domains: [a.example]\nupstream: http://localhost:8000/\n",
                 "sites/site.yaml:2: upstream: 'http://localhost:8000/' is not an endpoint;"
                 " write {address: 127.0.0.1:8000 (an IP address: clusters do not resolve"
                 " names)}", id="upstream-url-name"),
    pytest.param("domains: [a.example]\nupstream: {socket: /tmp/a.sock, connect_timeout: 1s}\n",
                 "sites/site.yaml:2: upstream.connect_timeout: options need the mapping form of"
                 " an upstream: {endpoints: [{socket: /tmp/a.sock}], connect_timeout: 1s}",
                 id="option-in-short-form"),
    pytest.param("domains: [a.example]\nupstream: {socket: /etc/a.sock}\n",
                 "sites/site.yaml:2: upstream.socket: '/etc/a.sock' is outside the allowed"
                 " socket folders (/dev/shm, /run, /tmp); put the socket in one, or"
                 " widen them with the socket_dirs setting", id="socket-outside"),
    pytest.param("domains: [a.example]\nupstream:\n  socket: /tmp/a.sock\n   http2: true\n",
                 "sites/site.yaml:4: YAML: mapping values are not allowed in this context; this"
                 " line is indented more than the line above, so it reads as part of that"
                 " value: indent 'http2' like 'socket'", id="indented-too-far"),
    pytest.param("domains: [a.example]\n upstream: {socket: /tmp/a.sock}\n",
                 "sites/site.yaml:2: YAML: did not find expected key; check the indentation:"
                 " this line starts after 1 space, and the keys of one mapping must start in"
                 " the same column", id="indented-unevenly"),
    pytest.param("domains: [a.example]\nupstream:\n\tsocket: /tmp/a.sock\n",
                 "sites/site.yaml:3: YAML: found character that cannot start any token; YAML"
                 " is indented with spaces, not tabs", id="tab"),
    pytest.param("domains: [a.example]\n" + SOCK + "routes:\n  - prefix: /\n    respond:\n"
                 "      status: 200\n      body: hello: world\n",
                 "sites/site.yaml:7: YAML: mapping values are not allowed in this context; a"
                 " ': ' inside a plain value starts a mapping: quote the value, as body:"
                 " 'hello: world'", id="colon-in-value"),
    pytest.param("domains: [a.example]\n" + SOCK + "routes: [{prefix: /, respond: {status: 200,"
                 " body: a: b}}]\n",
                 "sites/site.yaml:3: YAML: did not find expected ',' or '}'; inside [ ] or { },"
                 " quote a value that holds ': ', ',', '[' or '{', e.g. {body: 'a: b'}",
                 id="colon-in-flow"),
    pytest.param("domains: [a.example]\n" + SOCK + "routes:\n  - prefix: /\n  - prefix: /b\n"
                 "    timeout: 5x\n",
                 "sites/site.yaml:6: routes[2].timeout: '5x' is not a duration; write a duration"
                 " like 30s, 500ms, 5m (a number and a unit: ms, s, m or h)",
                 id="routes-count-from-one"),
    pytest.param("domains: [a.example]\n" + SOCK + "routes:\n  - prefix: /\n  - prefix: /b\n"
                 "    envoy:\n      route: {cluster: other}\n",
                 "sites/site.yaml:7: routes[2].envoy.route.cluster: 'other' is not a cluster of"
                 " this site (its own: site)", id="hatch-route-count-and-line"),
])
def test_message_names_the_fix(text: str, expected: str) -> None:
    """The mistake gets exactly this line."""
    assert expected in _lines(text)


def test_swapped_certificate_and_key_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A `tls.cert` naming the key file and a `tls.key` naming the certificate: say so."""
    sites = tmp_path / "sites"
    sites.mkdir()
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    make_certificate(cert, key, ["a.example"])
    for name, pair in (("a", f"{{cert: {key}, key: {cert}}}"),
                       ("b", f"{{cert: {key}, key: {key}}}")):
        (sites / f"{name}.yaml").write_text(f"domains: [{name}.example]\n{SOCK}tls: {pair}\n")
    assert main(["check", str(sites)]) == 1
    err = capsys.readouterr().err
    assert (f"{sites}/a.yaml: tls: cert and key are swapped: {key} holds a private key and"
            f" {cert} a certificate; exchange the two paths") in err
    assert (f"{sites}/b.yaml: tls.cert: {key} holds a private key, not a certificate;"
            " tls.cert names the certificate chain (fullchain.pem)") in err
