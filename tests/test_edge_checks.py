"""Checks that keep one site's edge features (TCP listeners, passthrough names, error
pages, htpasswd files, the shared defaults) from reaching another site or the node's
files; pure: `controlplane check` on a temp sites folder, without Envoy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controlplane.cli import main
from controlplane.intake import checking, crossing, loading
from controlplane.intake.selecting import select
from controlplane.render import authz, challenges, filters, responses
from controlplane.settings import Settings
from tests.test_features_e2e import make_certificate


def _check(folder: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    assert main(["check", str(folder), "--no-envoy", *flags]) == 1
    return capsys.readouterr().err


def test_a_tcp_site_may_not_loop_into_its_own_listener(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its upstream on its own port, on loopback or on the address it binds, is refused
    at the upstream's line: each connection would open another."""
    (tmp_path / "loop.yaml").write_text("kind: tcp\nlisten: 0.0.0.0:7000\n"
                                        "upstream: {address: 127.0.0.1:7000}\n")
    (tmp_path / "mirror.yaml").write_text("kind: tcp\nlisten: 127.0.0.5:7005\n"
                                          "upstream: {address: 127.0.0.5:7005}\n")
    err = _check(tmp_path, capsys)
    assert ("loop.yaml:3: upstream.address: '127.0.0.1:7000' is this site's own listener"
            " (0.0.0.0:7000)") in err
    assert "mirror.yaml:3: upstream.address: '127.0.0.5:7005' is this site's own" in err


def test_no_site_routes_to_another_sites_listener(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An HTTP site's upstream on a TCP site's port is refused, and the TCP site is told
    whose upstream its port is: neither new site serves."""
    (tmp_path / "db.yaml").write_text("kind: tcp\nlisten: 127.0.0.1:7001\n"
                                      "upstream: {socket: /tmp/db.sock}\n")
    (tmp_path / "web.yaml").write_text("domains: [w.example]\n"
                                       "upstream: {address: 127.0.0.1:7001}\n")
    err = _check(tmp_path, capsys)
    assert (f"web.yaml:2: upstream.address: '127.0.0.1:7001' is the listen port of"
            f" {tmp_path}/db.yaml (127.0.0.1:7001)") in err
    assert f"db.yaml:2: listen: port 7001 is where {tmp_path}/web.yaml reaches" in err
    assert "2 sites: 0 valid, 2 invalid" in err


@pytest.mark.parametrize(("upstream", "listen", "reaches"), [
    ("127.0.0.1:7000", "0.0.0.0:7000", True), ("10.1.2.3:7000", "0.0.0.0:7000", True),
    ("127.0.0.2:7000", "127.0.0.1:7000", True), ("[::1]:7000", "[::]:7000", True),
    ("10.1.2.3:7000", "10.1.2.3:7000", True), ("10.1.2.3:7000", "127.0.0.1:7000", False),
    ("127.0.0.1:7001", "0.0.0.0:7000", False), ("10.1.2.4:7000", "10.1.2.3:7000", False),
])
def test_which_upstreams_reach_a_listener(upstream: str, listen: str, reaches: bool) -> None:
    """Same port, and the listener on every address, or the upstream on loopback, or
    both on one address."""
    assert crossing.reaches(upstream, listen) is reaches


def _checked(folder: Path, name: str, text: str) -> checking.Checked:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    entry = next(e for e in loading.scan(folder) if e.name == name)
    return checking.check_entry(entry, Settings(sites_dir=folder))


def test_the_established_holder_of_a_port_keeps_it(tmp_path: Path) -> None:
    """A TCP site that now listens on the port an established HTTP site reaches on
    loopback is refused, naming that site; the HTTP site keeps serving."""
    web = _checked(tmp_path, "web", "domains: [w.example]\n"
                   "upstream: {address: 127.0.0.1:7002}\n")
    db = _checked(tmp_path, "db", "kind: tcp\nlisten: 0.0.0.0:7002\n"
                  "upstream: {socket: /tmp/db.sock}\n")
    settings = Settings(sites_dir=tmp_path)
    selection = select({"web": web, "db": db}, {"web": web}, None,
                       fence=checking.fence_of(settings))
    assert list(selection.serving) == ["web"]
    assert list(selection.problems) == ["db"]
    assert f"where {tmp_path}/web.yaml reaches its upstream" in selection.problems["db"][0].reason


def test_a_passthrough_name_under_a_tls_wildcard_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`shop.example.com` passed through would take the name from the site holding the
    TLS wildcard `*.example.com`: a domain conflict naming that site."""
    cert, key = tmp_path / "_w.pem", tmp_path / "_w.key"
    make_certificate(cert, key, ["*.example.com"])
    (tmp_path / "wild.yaml").write_text(f"domains: ['*.example.com']\nupstream: {{socket:"
                                        f" /tmp/w.sock}}\ntls: {{cert: {cert}, key: {key}}}\n")
    (tmp_path / "shop.yaml").write_text("kind: tls-passthrough\ndomains: [shop.example.com]\n"
                                        "upstream: {socket: /tmp/s.sock}\n")
    err = _check(tmp_path, capsys)
    assert (f"shop.yaml: domains: 'shop.example.com' is under the TLS wildcard"
            f" '*.example.com' of {tmp_path}/wild.yaml") in err


def test_a_page_and_an_access_log_are_never_one_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A page that is a site's access log (a client's text served as HTML), and a log
    that is a site's page, are refused, each naming the other site."""
    sites, shared = tmp_path / "sites", tmp_path / "shared"
    sites.mkdir()
    shared.mkdir()
    log, page = shared / "log.html", shared / "page.html"
    log.write_text("<p>old lines</p>\n")
    page.write_text("<p>sorry</p>\n")
    for name, extra in (("writer", f"access_log: {{path: {log}}}"),
                        ("shows", f"error_pages: {{503: {log}}}"),
                        ("logs", f"access_log: {{path: {page}}}"),
                        ("pages", f"error_pages: {{404: {page}}}")):
        (sites / f"{name}.yaml").write_text(f"domains: [{name}.example]\nupstream: {{socket:"
                                            f" /tmp/{name}.sock}}\n{extra}\n")
    err = _check(sites, capsys, "--log-dirs", str(shared), "--page-dirs", str(shared))
    assert f"shows.yaml: error_pages.503: '{log}' is the access_log.path of" in err
    assert f"writer.yaml: access_log.path: '{log}' is the error_pages.503 of" in err
    assert f"logs.yaml: access_log.path: '{page}' is the error_pages.404 of" in err
    assert "Envoy would serve it to anyone as an error page" in err
    assert "4 sites: 0 valid, 4 invalid" in err


def test_files_outside_the_fence_are_never_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A page outside the page folders and a kernel file as htpasswd are refused by where
    they lie, before they are opened: nothing is told of what they hold."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "key.html").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n")
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "page.yaml").write_text(f"domains: [p.example]\nupstream: {{socket: /tmp/p.sock}}"
                                     f"\nerror_pages: {{503: {elsewhere}/key.html}}\n")
    (sites / "auth.yaml").write_text("domains: [a.example]\nupstream: {socket: /tmp/a.sock}\n"
                                     "basic_auth: {htpasswd: /proc/self/status}\n")
    err = _check(sites, capsys)
    assert f"page.yaml:3: error_pages.503: '{elsewhere}/key.html' is outside" in err
    assert "PEM" not in err
    assert "auth.yaml:3: basic_auth.htpasswd: '/proc/self/status'" in err
    assert "is a kernel file" in err and "user:{SHA}" not in err


def test_one_sites_pages_are_bounded_together(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pages under the per-page limit that together pass the per-site one are refused."""
    for status in (500, 502, 503):
        (tmp_path / f"_{status}.html").write_text("x" * 60_000)
    pages = ", ".join(f"{status}: _{status}.html" for status in (500, 502, 503))
    (tmp_path / "big.yaml").write_text("domains: [b.example]\nupstream: {socket: /tmp/b.sock}"
                                       f"\nerror_pages: {{{pages}}}\n")
    err = _check(tmp_path, capsys)
    assert "big.yaml:3: error_pages: the pages are 180000 bytes together" in err
    assert "at most 131072" in err


@pytest.mark.parametrize(("mode", "owner"), [(0o666, None), (0o620, None), (0o644, 4242)],
                         ids=["world-writable", "group-writable", "another-owner"])
def test_defaults_others_may_change_are_not_used(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int,
        owner: int | None) -> None:
    """A defaults file writable by group or others, or owned by another user, changes no
    site: each is told the file, its owner and its mode."""
    shared = tmp_path / "_defaults.yaml"
    shared.write_text("compression: true\n")
    os.chmod(shared, mode)
    if owner is not None:
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(shared, owner, -1)
    (tmp_path / "a.yaml").write_text("domains: [a.example]\nupstream: {socket: /tmp/a.sock}\n")
    err = _check(tmp_path, capsys)
    shown = owner if owner is not None else os.geteuid()
    assert (f"{shared}: owned by uid {shown} with mode {mode:04o}; the defaults change"
            " every site") in err
    assert "1 sites: 0 valid, 1 invalid" in err


def test_a_route_can_bypass_every_optional_filter() -> None:
    """`bypass_all` switches off each filter the listener installs disabled (ext_authz
    and the error pages included), and only those; the header mutation that strips
    forged vouched headers stays on."""
    bypass = filters.bypass_all()
    optional = {f["name"] for f in filters.HTTP_FILTERS if f.get("disabled")}
    assert set(bypass) == optional - {authz.HEADER_MUTATION}
    assert {authz.EXT_AUTHZ, responses.CUSTOM_RESPONSE, filters.BASIC_AUTH, filters.RBAC,
            filters.RATE_LIMIT, filters.CORS, filters.COMPRESSOR} <= set(bypass)
    assert all(c == {"@type": filters.FILTER_CONFIG, "disabled": True} for c in bypass.values())


def test_an_acme_challenge_route_bypasses_the_auth_service_too() -> None:
    """A site with forward_auth still answers the ACME server's validators: the
    challenge route switches ext_authz off with the other filters."""
    route = challenges.route("tok", "tok.thumb")
    assert route["typed_per_filter_config"] == filters.bypass_all()
    assert authz.EXT_AUTHZ in route["typed_per_filter_config"]
