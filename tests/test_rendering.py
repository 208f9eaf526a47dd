"""Golden tests of rendering: the example sites give exactly the committed files.

Regenerate after an intended change with `UPDATE_GOLDEN=1 make test` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from controlplane.envoy import verifying
from controlplane.intake.checking import Checked, check_content
from controlplane.render import bootstraps, listeners, rendering, snapshot, tls
from controlplane.settings import Settings
from controlplane.values import Listen
from tests.test_features_e2e import make_certificate

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings(out_dir=Path("/srv/envoy/dynamic"), listen=Listen(host="0.0.0.0", port=8080))


def _render_examples(folder: str = "sites") -> dict[str, bytes]:
    resources, renames = [], {str(REPO / "config"): "/srv/config"}
    # The site files' pages lie beside them: their folder is the sites folder.
    settings = SETTINGS.model_copy(update={"sites_dir": REPO / "config" / folder})
    for path in sorted((REPO / "config" / folder).glob("[!_]*.yaml")):
        checked = check_content(path.stem, str(path), path.read_bytes(), settings)
        assert checked.resources is not None, checked.problems
        resources.append(checked.resources)
        renames.update(_portable_secret(checked))
    target = snapshot.snapshot(SETTINGS, resources)
    files = {**target.files(), "sds": tuple(target.secrets.values())}
    return {f"{kind}.json": rendering.discovery_response([_renamed(f, renames)
                                                          for f in fragments])[1]
            for kind, fragments in files.items()}


def _portable_secret(checked: Checked) -> dict[str, str]:
    """Relative file paths are anchored at this checkout's folder: the golden files name
    `/srv/config` instead, and the secret that the paths name, as it would be there."""
    if checked.site is None or checked.site.spec.tls is None:
        return {}
    spec = checked.site.spec.tls
    moved = spec.model_copy(update={k: _renamed(getattr(spec, k), {
        str(REPO / "config"): "/srv/config"}) for k in ("cert", "key")})
    return {tls.secret_name(spec): tls.secret_name(moved)}


def _renamed(text: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("folder", ["sites", "examples/features"])
@pytest.mark.parametrize("name", ["cds.json", "rds.json", "lds.json", "sds.json"])
def test_examples_render_to_the_golden_files(folder: str, name: str) -> None:
    """Rendering is deterministic and matches the reviewed output byte for byte
    (`config/sites` in `golden/`; every feature, from `config/examples/features`, in
    `golden/examples/`)."""
    rendered = _render_examples(folder)[name]
    golden = (GOLDEN if folder == "sites" else GOLDEN / "examples") / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_bytes(rendered)
    assert rendered == golden.read_bytes()


def test_files_are_discovery_responses_with_content_versions() -> None:
    """Each file is a DiscoveryResponse; its version is a hash of its resources."""
    files = _render_examples()
    for data in files.values():
        document = json.loads(data)
        assert set(document) == {"version_info", "resources"}
        assert all("@type" in r for r in document["resources"])
    cds = json.loads(files["cds.json"])
    assert [r["name"] for r in cds["resources"]] == sorted(r["name"] for r in cds["resources"])
    assert rendering.discovery_response(["a"])[0] != rendering.discovery_response(["b"])[0]


def test_listener_takes_routes_from_the_route_file() -> None:
    """The listener names rds.json by path, so site changes never modify the listener."""
    listener = listeners.listeners(SETTINGS, [])[0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert "route_config" not in hcm
    assert hcm["rds"]["config_source"]["path_config_source"]["path"] == (
        "/srv/envoy/dynamic/rds.json")


def test_bootstrap_watches_a_constant_number_of_files() -> None:
    """Envoy watches two files from the bootstrap, however many sites there are."""
    text = json.dumps(bootstraps.bootstrap(SETTINGS))
    assert text.count("path_config_source") == 2


def test_health_checks_send_the_sites_domain_as_host() -> None:
    """Without `host`, health checks send the site's first plain domain, not the cluster
    name (`site/upstream`, which nginx refuses with 400)."""
    text = (b"domains: ['*.w.example', w.example]\nupstreams:\n  web:\n    endpoints:"
            b" [{socket: /tmp/w.sock}]\n    health_check: {path: /up}\n"
            b"routes: [{prefix: /, upstream: web}]\n")
    checked = check_content("w", "w.yaml", text, SETTINGS)
    assert checked.resources is not None, checked.problems
    (_, cluster), = checked.resources.clusters
    assert cluster["health_checks"][0]["http_health_check"] == {"path": "/up",
                                                                "host": "w.example"}


def test_validated_and_served_connection_managers_carry_the_same_edge_limits() -> None:
    """The HCM that `envoy --mode validate` checks has the timeouts and HTTP/2 limits of the
    HCM that serves, and the served listener and clusters have the buffer limits."""
    settings = Settings(request_headers_timeout_s=2.5, request_timeout_s=0,
                        buffer_limit_bytes=4096)
    served = listeners.listener(settings)
    manager = served["filter_chains"][0]["filters"][0]["typed_config"]
    scratch = verifying.scratch_bootstrap(settings, [])["static_resources"]["listeners"][0]
    checked = scratch["filter_chains"][0]["filters"][0]["typed_config"]
    limits = listeners.edge_limits(settings)
    assert limits["request_headers_timeout"] == "2.500s" and "request_timeout" not in limits
    for key, value in limits.items():
        assert manager[key] == checked[key] == value
    assert served["per_connection_buffer_limit_bytes"] == 4096


def _delivery_free(listeners: list[dict]) -> list[dict]:
    """The listeners with what `Delivery` decides taken out: addresses, where the routes
    and secrets come from, and where access logs go."""
    def strip(node: object) -> object:
        if isinstance(node, list):
            return [strip(item) for item in node]
        if not isinstance(node, dict):
            return node
        dropped = {"address", "rds", "route_config", "sds_config", "path"}
        return {key: strip(value) for key, value in node.items() if key not in dropped}

    return [strip(listener) for listener in listeners]  # type: ignore[misc]


def test_validated_listeners_are_the_served_ones() -> None:
    """`envoy --mode validate` checks the listeners of the LDS file, built by the same
    builder: they differ only in addresses, in where routes and secrets come from, and
    in where access logs go; the inline routes are the route file's."""
    settings = Settings(out_dir=Path("/srv/envoy/dynamic"), proxy_protocol=True,
                        trusted_proxies=["10.0.0.0/8"], buffer_limit_bytes=4096)
    text = (b"domains: [t.example]\ntls: {cert: /c.pem, key: /k.pem}\n"
            b"access_log: {path: /var/log/t.log}\n"
            b"upstreams: {web: {endpoints: [{socket: /tmp/t.sock}]}}\n"
            b"routes: [{prefix: /, upstream: web}]\n")
    checked = check_content("t", "t.yaml", text, settings)
    assert checked.resources is not None, checked.problems
    sites = [checked.resources]
    served = listeners.listeners(settings, sites)
    scratch = verifying.scratch_bootstrap(settings, sites)["static_resources"]
    assert [item["name"] for item in served] == ["http", "https"]
    assert _delivery_free(scratch["listeners"]) == _delivery_free(served)
    managers = [chain["filters"][0]["typed_config"] for item in scratch["listeners"]
                for chain in item["filter_chains"]]
    assert all(m["access_log"][0]["typed_config"]["path"] == "/dev/null" for m in managers)
    routes = json.loads(snapshot.snapshot(settings, sites).routes)
    del routes["@type"]
    assert all(m["route_config"] == routes for m in managers)


def test_a_render_envoy_accepted_skips_the_type_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart checks its last good versions again; those whose render digest Envoy
    accepted (the persisted verdicts) are not parsed into protobuf types a second time,
    and any other render is."""
    path = REPO / "config" / "sites" / "blog.yaml"
    settings = SETTINGS.model_copy(update={"sites_dir": path.parent})
    first = check_content("blog", str(path), path.read_bytes(), settings)
    assert first.resources is not None, first.problems
    checked: list[str] = []
    real = rendering.check_types
    monkeypatch.setattr(rendering, "check_types",
                        lambda resource, kind, *rest: checked.append(kind) or real(
                            resource, kind, *rest))
    again = check_content("blog", str(path), path.read_bytes(), settings,
                          trusted={first.resources.digest})
    assert checked == [] and again.resources == first.resources
    check_content("blog", str(path), path.read_bytes(), settings, trusted={"0" * 16})
    assert "virtual_host" in checked and rendering.CLUSTER in checked


def test_the_renders_of_the_daemons_own_making_are_left_to_envoys_verdict(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With Envoy's verdict to come (`envoy_judges`, the daemon with a validator), a site
    without `envoy:` overrides is not parsed into protobuf types in Python; a site with
    overrides still is, so that a mistake in them names its field; `check` (no verdict
    said to follow) checks everything."""
    settings = SETTINGS.model_copy(update={"sites_dir": REPO / "config" / "sites"})
    plain = "domains: [a.example.com]\nupstream: {socket: /run/a.sock}\n"
    overridden = plain + "envoy: {cluster: {connect_timeout: 2s}}\n"
    checked: list[str] = []
    real = rendering.check_types
    monkeypatch.setattr(rendering, "check_types",
                        lambda resource, kind, *rest: checked.append(kind) or real(
                            resource, kind, *rest))
    judged = check_content("a", "/s/a.yaml", plain.encode(), settings, envoy_judges=True)
    assert judged.resources is not None and checked == [], judged.problems
    unjudged = check_content("a", "/s/a.yaml", plain.encode(), settings)
    assert rendering.CLUSTER in checked and unjudged.resources == judged.resources
    checked.clear()
    check_content("a", "/s/a.yaml", overridden.encode(), settings, envoy_judges=True)
    assert rendering.CLUSTER in checked and "virtual_host" in checked
    checked.clear()
    in_route = plain + "routes: [{prefix: /, envoy: {route: {idle_timeout: 2s}}}]\n"
    check_content("a", "/s/a.yaml", in_route.encode(), settings, envoy_judges=True)
    assert rendering.CLUSTER in checked and "virtual_host" in checked
    bad = plain + "envoy: {cluster: {connect_timeout: soon}}\n"
    refused = check_content("a", "/s/a.yaml", bad.encode(), settings, envoy_judges=True)
    assert refused.resources is None and "envoy.cluster" in str(refused.problems[0])


def test_the_live_tls_context_is_type_checked_even_when_envoy_judges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No validator is given the TLS context as the live Envoy gets it (by SDS file), so
    a TLS site's secret and context are checked in Python even with Envoy's verdict to
    come; its cluster and virtual host are left to the verdict."""
    make_certificate(tmp_path / "a.pem", tmp_path / "a.key", ["a.example.com"])
    text = ("domains: [a.example.com]\nupstream: {socket: /run/a.sock}\n"
            f"tls: {{cert: {tmp_path}/a.pem, key: {tmp_path}/a.key}}\n")
    checked: list[str] = []
    real = rendering.check_types
    monkeypatch.setattr(rendering, "check_types",
                        lambda resource, kind, *rest: checked.append(kind) or real(
                            resource, kind, *rest))
    item = check_content("a", str(tmp_path / "a.yaml"), text.encode(),
                         SETTINGS.model_copy(update={"sites_dir": tmp_path}), envoy_judges=True)
    assert item.resources is not None and item.resources.tls is not None, item.problems
    assert checked == [rendering.SECRET, "tls_context"], checked
