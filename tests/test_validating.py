"""Schema and cross-site validation: every problem names the file, the field and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.intake.checking import Checked, check_content, fence_of
from controlplane.intake.selecting import select
from controlplane.settings import Settings

SETTINGS = Settings()


def _problems(text: str, name: str = "site", settings: Settings = SETTINGS) -> list[str]:
    """The per-file checks, then the per-pass ones (where the paths lead, resolved now)."""
    checked = check_content(name, f"sites/{name}.yaml", text.encode(), settings)
    selection = select({name: checked}, {}, None, fence=fence_of(settings))
    return [str(p) for p in selection.problems.get(name, [])]


def _valid(text: str, name: str) -> Checked:
    checked = check_content(name, f"sites/{name}.yaml", text.encode(), SETTINGS)
    assert checked.problems == (), checked.problems
    return checked


def test_smallest_site_is_valid() -> None:
    """The contract's smallest site: one domain and one socket upstream."""
    assert _problems("domains: [blog.example.com]\nupstream:\n  socket: /dev/shm/blog.sock\n") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("domain: [a.example]\nupstream: {socket: /tmp/a.sock}\n",
     "sites/site.yaml:1: domain: unknown key; did you mean 'domains'?"),
    ("domains: [a.example]\nupstream: {socket: /tmp/a.sock}\nroutes:\n  - prefx: /\n",
     "sites/site.yaml:4: routes[1].prefx: unknown key; did you mean 'prefix'?"),
    ("domains: [a.example]\n", "sites/site.yaml:1: give exactly one of 'upstream' or 'upstreams'"),
    ("upstream: {socket: /tmp/a.sock}\n", "sites/site.yaml:1: domains: required"),
    ("domains: a.example\nupstream: {socket: /tmp/a.sock}\n",
     "sites/site.yaml:1: domains: Input should be a valid list, got str 'a.example'"),
    ("domains: [a.example:8080]\nupstream: {socket: /tmp/a.sock}\n",
     "domains[1]: 'a.example:8080': ports are not allowed in domains"),
    ("domains: ['https://a.example']\nupstream: {socket: /tmp/a.sock}\n",
     "without scheme or path"),
    ("domains: ['a b.example']\nupstream: {socket: /tmp/a.sock}\n", "is not a host name"),
    ("domains: ['a.*.example']\nupstream: {socket: /tmp/a.sock}\n", "is not a host name"),
    ("domains: [a.example, A.example]\nupstream: {socket: /tmp/a.sock}\n",
     "domains: a domain is listed twice"),
    ("domains: [a.example]\nupstream: {socket: tmp/a.sock}\n",
     "sites/site.yaml:2: upstream.socket: 'tmp/a.sock': the path must be absolute"),
    ("domains: [a.example]\nupstream: {socket: /tmp/../etc/a.sock}\n",
     "upstream.socket: '/tmp/../etc/a.sock': '..' is not allowed in the path"),
    ("domains: [a.example]\nupstream: {socket: /tmp/" + "a" * 103 + "}\n",
     "upstream.socket: path is 108 bytes; Envoy allows at most 107"),
    ("domains: [a.example]\nupstream: {socket: /srv/a.sock}\n",
     "upstream.socket: '/srv/a.sock' is outside the allowed socket folders"),
    ("domains: [a.example]\nupstream: [{socket: /tmp/a.sock}, {address: 'db:80'}]\n",
     "upstream[2].address: 'db:80': the host must be an IP address"),
    ("domains: [a.example]\nupstream: {address: '127.0.0.1:0'}\n", "the port must be 1-65535"),
    ("domains: [a.example]\nupstream: {socket: /tmp/a.sock, address: '127.0.0.1:80'}\n",
     "upstream: give exactly one of 'socket' or 'address'"),
    ("domains: [a.example]\nupstreams: {a: {socket: /tmp/a.sock}}\nroutes:\n  - prefix: /\n"
     "    upstream: b\n", "routes[1].upstream: 'b' is not defined; known: a"),
    ("domains: [a.example]\nupstream: {socket: /tmp/a.sock}\nroutes:\n  - regex: '(?=x)'\n",
     "routes[1].regex: '(?=x)' is not valid RE2 syntax"),
    ("domains: [a.example]\nupstream: {socket: /tmp/a.sock}\nroutes:\n  - path: /a\n"
     "    prefix: /b\n", "routes[1]: give exactly one of 'prefix', 'path' or 'regex'"),
    ("domains: [a.example]\nupstream: {socket: /tmp/a.sock}\nroutes:\n  - prefix: /\n"
     "    timeout: 30\n", "routes[1].timeout: 30 is not a duration; write a duration like 30s"),
    ("domains: [a.example]\nupstream: {socket: /tmp/a.sock}\nroutes:\n  - prefix: /\n"
     "    websocket: 'yes'\n", "routes[1].websocket: Input should be a valid boolean"),
    ("- a\n- b\n", "sites/site.yaml: a site file is a mapping of keys, not a list"),
])
def test_problems_name_file_field_and_reason(text: str, expected: str) -> None:
    """Each mistake is reported with the file, the field path and the reason."""
    problems = _problems(text)
    assert any(expected in p for p in problems), problems


def test_all_problems_of_a_file_are_reported_at_once() -> None:
    """Three mistakes in one file give three lines, not one."""
    problems = _problems("domains: [a.example:1]\nupstream: {socket: rel.sock}\nextra: 1\n")
    assert len(problems) == 3, problems


def test_uppercase_domains_are_normalised() -> None:
    """Domains are lower-cased, so `Blog.Example.com` and `blog.example.com` collide."""
    a = _valid("domains: [Blog.Example.com]\nupstream: {socket: /tmp/a.sock}\n", "a")
    assert a.domains == ("blog.example.com",)


def test_a_domain_claimed_twice_makes_both_invalid() -> None:
    """Both sites are refused (as Contour does), each told who else claims the domain."""
    a = _valid("domains: [x.example, a.example]\nupstream: {socket: /tmp/a.sock}\n", "a")
    b = _valid("domains: [x.example]\nupstream: {socket: /tmp/b.sock}\n", "b")
    c = _valid("domains: [c.example]\nupstream: {socket: /tmp/c.sock}\n", "c")
    selection = select({"a": a, "b": b, "c": c}, {}, None)
    assert set(selection.serving) == {"c"}
    assert [str(p) for p in selection.problems["a"]] == [
        "sites/a.yaml: domains: 'x.example' is also claimed by sites/b.yaml"]


def test_an_established_site_keeps_its_domain_against_a_newcomer() -> None:
    """With last-good versions, the newcomer is left out and the serving site stays."""
    a = _valid("domains: [x.example]\nupstream: {socket: /tmp/a.sock}\n", "a")
    b = _valid("domains: [x.example]\nupstream: {socket: /tmp/b.sock}\n", "b")
    selection = select({"a": a, "b": b}, {"a": a}, None)
    assert set(selection.serving) == {"a"}
    assert "b" in selection.problems


def test_the_holder_of_a_domain_takes_its_edits_while_a_copy_claims_it() -> None:
    """The site that served a domain keeps it through its own edits; a copy claiming it
    is refused (the holder has no problem); an established site that newly claims a held
    domain is demoted to its last good version."""
    old = _valid("domains: [x.example]\nupstream: {socket: /tmp/a.sock}\n", "a")
    edited = _valid("domains: [x.example]\nupstream: {socket: /tmp/a2.sock}\n", "a")
    copy = _valid("domains: [x.example]\nupstream: {socket: /tmp/a.sock}\n", "copy")
    other = _valid("domains: [o.example]\nupstream: {socket: /tmp/o.sock}\n", "o")
    grabbing = _valid("domains: [o.example, x.example]\nupstream: {socket: /tmp/o.sock}\n", "o")
    selection = select({"a": edited, "copy": copy, "o": grabbing}, {"a": old, "o": other}, None)
    assert selection.serving == {"a": edited, "o": other}
    assert set(selection.problems) == {"copy", "o"}
    assert all("also claimed by sites/a.yaml" in str(p) for p in selection.problems["copy"])


def test_a_broken_site_serves_its_last_good_version() -> None:
    """A site whose new file is invalid keeps its last good version; others go ahead."""
    good = _valid("domains: [a.example]\nupstream: {socket: /tmp/a.sock}\n", "a")
    broken = check_content("a", "sites/a.yaml", b"domains: [a.example]\n", SETTINGS)
    new = _valid("domains: [n.example]\nupstream: {socket: /tmp/n.sock}\n", "n")
    selection = select({"a": broken, "n": new}, {"a": good}, None)
    assert selection.serving == {"a": good, "n": new}
    assert "a" in selection.problems


def test_upstream_names_are_dns_labels_and_typos_inside_named_upstreams_get_hints() -> None:
    """Upstream names are anchored DNS labels; a typo under a named upstream is hinted."""
    text = ("domains: [a.example]\nupstreams:\n  Bad_Name: {socket: /tmp/a.sock}\n"
            "  ok: {sockt: /tmp/b.sock}\nroutes:\n  - {prefix: /, upstream: ok}\n")
    problems = _problems(text)
    assert any("upstreams.Bad_Name" in p for p in problems), problems
    assert any("upstreams.ok.sockt: unknown key; did you mean 'socket'?" in p
               for p in problems), problems


def test_envoys_own_admin_socket_cannot_be_an_upstream() -> None:
    """A site pointing at Envoy's admin socket would publish the admin interface."""
    settings = Settings(admin_socket=Path("/run/envoy/admin.sock"))
    text = "domains: [a.example]\nupstream: {socket: /run/envoy/admin.sock}\n"
    problems = _problems(text, "a", settings)
    assert len(problems) == 1 and "upstream.socket: " in problems[0], problems
    assert "is Envoy's admin socket" in problems[0]


def test_a_new_tls_site_cannot_push_an_established_one_past_the_certificate_limit() -> None:
    """At the certificate limit, the established site keeps its slot, whatever the names."""
    from controlplane.render.tls import certificate_overflow

    secrets = {"a": ("a.yaml", "tls-a"), "z": ("z.yaml", "tls-z")}
    assert set(certificate_overflow(secrets, 1, {"z"})) == {"a"}
    assert set(certificate_overflow(secrets, 1)) == {"z"}


@pytest.mark.parametrize(("check", "expected"), [
    ("{interval: 1ms}", "health_check.interval: '1ms' is under 1s"),
    ("{interval: 5s, timeout: 1ms}", "health_check.timeout: '1ms' is under 100ms"),
])
def test_health_checks_cannot_flood_envoy(check: str, expected: str) -> None:
    """Checks every millisecond over many endpoints would take Envoy's cores from every
    site: the interval is at least 1s and the timeout at least 100ms."""
    text = (f"domains: [h.example.com]\nupstream: {{endpoints: [{{socket: /dev/shm/h.sock}}],"
            f" health_check: {check}}}\n")
    assert any(expected in p for p in _problems(text, "h"))


def test_endpoints_and_upstreams_are_bounded_per_site() -> None:
    """Each endpoint is probed and reported: a file with thousands would cost the loop
    for every site, so 64 per upstream and 16 upstreams, with the fix in the message."""
    fine = "".join(f"\n  - {{socket: /tmp/x/s{i}.sock}}" for i in range(64))
    assert _problems(f"domains: [a.example]\nupstream:{fine}\n") == []
    many = fine + "\n  - {socket: /tmp/x/extra.sock}"
    assert _problems(f"domains: [a.example]\nupstream:{many}\n") == [
        "sites/site.yaml:2: upstream: at most 64 entries here; give fewer (or split the site"
        " in two files)"]
    named = "".join(f"\n  u{i}: {{socket: /tmp/u{i}.sock}}" for i in range(17))
    problems = _problems(f"domains: [a.example]\nupstreams:{named}\n"
                         "routes: [{prefix: /, upstream: u0}]\n")
    assert problems and "upstreams: at most 16 entries" in problems[0]
