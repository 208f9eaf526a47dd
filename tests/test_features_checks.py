"""Site features before Envoy runs them: schema errors with file and field, certificate
checks (errors and warnings), the escape hatch's merge rules and fence, the certificate
budget, and the feature examples accepted by the real Envoy binary."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.cli import main
from controlplane.envoy.verifying import Verifier
from controlplane.intake.checking import check_content, check_entry
from controlplane.intake.selecting import select
from controlplane.render import overrides
from controlplane.settings import Settings
from tests.test_features_e2e import make_certificate

REPO = Path(__file__).resolve().parent.parent
SETTINGS = Settings()
SITE = "domains: [a.example]\nupstream: {socket: /tmp/a.sock}\n"
NAMED = ("domains: [a.example]\nupstreams:\n  a: {socket: /tmp/a.sock}\n"
         "  b: {endpoints: [{socket: /tmp/b.sock}], lb_policy: random}\n")


def _problems(text: str) -> list[str]:
    checked = check_content("site", "sites/site.yaml", text.encode(), SETTINGS)
    return [str(p) for p in checked.problems]


@pytest.mark.parametrize(("text", "expected"), [
    (NAMED + "routes:\n  - prefix: /\n    split: [{upstream: a, weight: 1}, {upstream: c,"
     " weight: 1}]\n", "routes[1].split: 'c' is not defined; known: a, b"),
    (SITE + "routes:\n  - prefix: /\n    redirect: {code: 301}\n",
     "routes[1].redirect: give at least one of 'scheme'"),
    (SITE + "routes:\n  - prefix: /\n    respond: {status: 200}\n    timeout: 1s\n",
     "routes[1].timeout: only for routes that go to an upstream"),
    (SITE + "routes:\n  - prefix: /\n    respond: {status: 200}\n    redirect: {path: /}\n",
     "give one of 'upstream', 'split', 'redirect' or 'respond'"),
    (SITE + "routes:\n  - prefix: /\n    headers: [{name: x, exact: a, prefix: b}]\n",
     "routes[1].headers[1]: give exactly one of"),
    (SITE + "routes:\n  - prefix: /\n    query: [{name: q, regex: '(?=x)'}]\n",
     "routes[1].query[1].regex: '(?=x)' is not valid RE2 syntax"),
    (SITE + "routes:\n  - prefix: /\n    retries: {conditions: [sometimes]}\n",
     "routes[1].retries.conditions[1]"),
    (SITE + "routes:\n  - prefix: /\n    request_headers: {set: {host: x}}\n",
     "routes[1].request_headers.set: 'host': this header is managed by Envoy"),
    (SITE + "access: {allow: [10.0.0.300/8]}\n", "access.allow[1]: '10.0.0.300/8' is not an IP"),
    (SITE + "access: {}\n", "access: give 'allow', 'deny' or both"),
    (SITE + "tls: {cert: ../cert.pem, key: /k.pem}\n", "tls.cert: '../cert.pem': '..' and NUL are"),
    (SITE + "rate_limit: {requests: 0}\n", "rate_limit.requests: Input should be greater"),
    (SITE + "access_log: {path: /var/log/../x}\n", "access_log.path: '/var/log/../x': '..'"),
    ("domains: [a.example]\nupstream: {endpoints: [{sockt: /tmp/a.sock}]}\n",
     "upstream.endpoints[1].sockt: unknown key; did you mean 'socket'?"),
    ("domains: [a.example]\nupstream: {endpoints: [], http2: true}\n",
     "upstream.endpoints: List should have at least 1 item"),
    (NAMED + "routes: [{prefix: /, upstream: a}]\nenvoy: {clusters: {zz: {}}}\n",
     "envoy.clusters: zz: not a name under 'upstreams'"),
])
def test_feature_mistakes_name_file_field_and_reason(text: str, expected: str) -> None:
    """Each mistake in the new keys is reported with the file, the field and the reason."""
    problems = _problems(text)
    assert any(expected in p for p in problems), problems


def test_short_upstream_forms_keep_their_error_paths() -> None:
    """The endpoint and list forms still report `upstream.socket` and `upstream[2].address`."""
    assert any("upstream.sockt: unknown key" in p
               for p in _problems("domains: [a.example]\nupstream: {sockt: /tmp/a.sock}\n"))
    assert any("upstream[2].address: 'db:80'" in p for p in _problems(
        "domains: [a.example]\nupstream: [{socket: /tmp/a.sock}, {address: 'db:80'}]\n"))


def test_merge_rules() -> None:
    """Maps merge recursively, lists and scalars replace, null deletes, and a mapping of
    another `@type` replaces the generated one whole."""
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1, "t": {"@type": "X", "x": 1}}
    merged = overrides.merge(base, {"a": {"c": [3], "e": 2}, "d": None,
                                    "t": {"@type": "Y", "y": 2}})
    assert merged == {"a": {"b": 1, "c": [3], "e": 2}, "t": {"@type": "Y", "y": 2}}
    assert overrides.merge(base, {"t": {"z": 3}})["t"] == {"@type": "X", "x": 1, "z": 3}
    assert base["a"] == {"b": 1, "c": [1, 2]}  # the input is not changed


@pytest.mark.parametrize(("envoy", "expected"), [
    ("{cluster: {name: other}}", "envoy.cluster.name: fixed by the site file"),
    ("{cluster: {load_assignment: {cluster_name: a}}}", "envoy.cluster.load_assignment: fixed"),
    ("{virtual_host: {domains: ['*']}}", "envoy.virtual_host.domains: fixed"),
    ("{virtual_host: {routes: [{match: {prefix: /}, route: {cluster: blog}}]}}",
     "envoy.virtual_host.routes[1].route.cluster: 'blog' is not a cluster of this site"),
    ("{virtual_host: {routes: [{match: {prefix: /}, route: {cluster_header: x-c}}]}}",
     "envoy.virtual_host.routes[1].route.cluster_header: picks a cluster at request time"),
    ("{virtual_host: {request_mirror_policies: [{cluster: blog}]}}",
     "envoy.virtual_host.request_mirror_policies[1].cluster: 'blog' is not a cluster"),
    ("{cluster: {conect_timeout: 1s}}",
     'envoy.cluster: Message type "envoy.config.cluster.v3.Cluster" has no field named'
     ' "conect_timeout"'),
    ("{virtual_host: {include_attempt_count_in_response: maybe}}",
     "envoy.virtual_host: Failed to parse include_attempt_count_in_response"),
])
def test_overrides_stay_inside_the_site_and_name_the_envoy_field(envoy: str,
                                                                 expected: str) -> None:
    """A site cannot rename its resources, change its domains or endpoints, or route to
    another site's cluster; a wrong Envoy field is named."""
    problems = _problems(SITE + f"envoy: {envoy}\n")
    assert any(expected in p for p in problems), problems


def test_route_override_lands_in_the_route() -> None:
    """`routes[].envoy` merges into that route's Envoy Route."""
    checked = check_content("site", "sites/site.yaml", (
        SITE + "routes:\n  - prefix: /\n    envoy: {route: {auto_host_rewrite: true},"
        " decorator: {operation: x}}\n").encode(), SETTINGS)
    assert checked.resources is not None, checked.problems
    route = checked.resources.virtual_host["routes"][0]
    assert route["route"] == {"cluster": "site", "auto_host_rewrite": True}
    assert route["decorator"] == {"operation": "x"}
    assert any("routes[1].envoy.route.cluster: 'b' is not a cluster of this site" in p
               for p in _problems(SITE + "routes: [{prefix: /, envoy: {route: {cluster: b}}}]\n"))


def _tls_site(folder: Path, name: str, cert: Path, key: Path, domains: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"domains: {domains}\nupstream: {{socket: /tmp/{name}.sock}}\n"
                    f"tls: {{cert: {cert}, key: {key}}}\n")
    return path


def test_check_refuses_unreadable_or_mismatched_keys_and_warns_on_coverage_and_expiry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A key that does not match its certificate, or a missing file, is an error; a
    certificate that does not cover a domain or expires within 14 days is a warning."""
    sites, certs = tmp_path / "sites", tmp_path / "certs"
    sites.mkdir()
    certs.mkdir()
    make_certificate(certs / "a.pem", certs / "a.key", ["a.example"], days=5)
    make_certificate(certs / "b.pem", certs / "b.key", ["*.b.example"])
    _tls_site(sites, "soon", certs / "a.pem", certs / "a.key", "[a.example, w.a.example]")
    _tls_site(sites, "wild", certs / "b.pem", certs / "b.key", "[x.b.example]")
    _tls_site(sites, "mixed", certs / "a.pem", certs / "b.key", "[m.example]")
    _tls_site(sites, "gone", certs / "none.pem", certs / "a.key", "[g.example]")
    assert main(["check", str(sites)]) == 1
    err = capsys.readouterr().err
    assert f"{sites}/mixed.yaml: tls.key: {certs}/b.key does not match the certificate" in err
    assert f"{sites}/gone.yaml: tls.cert: {certs}/none.pem: cannot read: No such file" in err
    assert (f"warning: {sites}/soon.yaml: tls.cert: the certificate does not cover"
            " w.a.example (it names a.example)") in err
    assert f"warning: {sites}/soon.yaml: tls.cert: {certs}/a.pem expires in 4 days" in err
    assert "wild.yaml: tls" not in err
    assert "4 sites: 2 valid, 2 invalid" in err


def test_distinct_certificates_are_bounded(tmp_path: Path) -> None:
    """Past `max_certificates` distinct certificates a site is refused; sharing is free."""
    make_certificate(tmp_path / "a.pem", tmp_path / "a.key", ["a.example", "c.example"])
    make_certificate(tmp_path / "b.pem", tmp_path / "b.key", ["b.example"])
    settings = Settings(sites_dir=tmp_path, max_certificates=1)
    paths = [_tls_site(tmp_path, "a", tmp_path / "a.pem", tmp_path / "a.key", "[a.example]"),
             _tls_site(tmp_path, "b", tmp_path / "b.pem", tmp_path / "b.key", "[b.example]"),
             _tls_site(tmp_path, "c", tmp_path / "a.pem", tmp_path / "a.key", "[c.example]")]
    from controlplane.intake import loading

    entries = {e.name: e for e in loading.scan(tmp_path)}
    checked = {p.stem: check_entry(entries[p.stem], settings) for p in paths}
    selection = select(checked, {}, None, settings.max_certificates)
    assert set(selection.serving) == {"a", "c"}
    assert "at most 1 distinct certificates" in str(selection.problems["b"][0])


@pytest.mark.parametrize("folder", ["config/sites", "config/examples",
                                    "config/examples/features"])
def test_every_shipped_example_passes_check(folder: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`controlplane check` on each shipped folder, as on a fresh machine (default
    settings, Envoy's verdict included): no error and no warning; the files the examples
    name ship beside them."""
    assert main(["check", str(REPO / folder)]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    # The machine's own state is no fault of a file: no upstream listens here yet.
    warnings = [line for line in err.splitlines() if line.startswith("warning:")
                and not line.endswith("/features: ignored: a folder; only NAME.yaml files"
                                      " directly in the sites folder are read")
                and ".socket: missing: no socket at " not in line]
    assert warnings == [] and " 0 invalid" in err, err


def test_feature_examples_pass_the_envoy_binary() -> None:
    """Every example in config/examples/features, with the files it ships, is accepted by
    `envoy --mode validate` (certificates loaded, access log opened)."""
    resources, sources = [], {}
    folder = REPO / "config" / "examples" / "features"
    settings = Settings(sites_dir=folder)  # its pages lie beside the site files
    for path in sorted(folder.glob("[!_]*.yaml")):
        checked = check_content(path.stem, str(path), path.read_bytes(), settings)
        assert checked.resources is not None, checked.problems
        resources.append(checked.resources)
        sources[path.stem] = str(path)
    assert Verifier(SETTINGS).verify(resources, sources) == {}
