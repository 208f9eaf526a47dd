"""Names: generated names unique across sites, files the loader does not read reported
once (never skipped in silence), and at most 20 problems per file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from controlplane.cli import main
from controlplane.configuring import from_mapping
from controlplane.daemon.reconciling import Reconciler
from controlplane.intake.checking import Checked, check_content, fence_of
from controlplane.intake.selecting import select
from controlplane.settings import Settings

SETTINGS = Settings()


def _site(name: str, body: str) -> Checked:
    checked = check_content(name, f"sites/{name}.yaml", body.encode(), SETTINGS)
    assert checked.problems == (), checked.problems
    return checked


def test_a_stats_prefix_equal_to_another_sites_name_is_refused_naming_both_files() -> None:
    """`stats_prefix: blog` beside the site `blog`: both files named, the newcomer out."""
    blog = _site("blog", "domains: [blog.example]\nupstream: {socket: /tmp/blog.sock}\n")
    copy = _site("copy", "domains: [copy.example]\nupstream: {socket: /tmp/c.sock}\n"
                 "stats_prefix: blog\nrate_limit: {requests: 5}\n")
    fresh = select({"blog": blog, "copy": copy}, {}, None)
    assert set(fresh.serving) == set()
    assert "is also used by sites/copy.yaml" in str(fresh.problems["blog"][0])
    assert "sites/copy.yaml: stats_prefix: the cluster stats name 'blog' is also used by" \
           " sites/blog.yaml" in str(fresh.problems["copy"][0])
    established = select({"blog": blog, "copy": copy}, {"blog": blog}, None)
    assert set(established.serving) == {"blog"} and "copy" in established.problems


def test_an_upstream_of_one_site_is_refused_to_another_in_any_spelling() -> None:
    """With `exclusive_upstreams` (the default), another loopback address for the same port
    names the same upstream: the established site keeps it, the newcomer is refused naming
    the holder; a site may list one upstream twice. Set false, sites share upstreams."""
    owner = _site("owner", "domains: [owner.example]\nupstream: {address: '127.0.0.1:8000'}\n"
                  "access: {allow: [10.0.0.0/8]}\n")
    thief = _site("thief", "domains: [thief.example]\nupstreams: {a: {address: '[::1]:8000'},"
                  " b: {address: '[::1]:8000'}}\nroutes: [{prefix: /, upstream: a}]\n")
    fence = fence_of(SETTINGS.replace(exclusive_upstreams=True))
    chosen = select({"owner": owner, "thief": thief}, {"owner": owner}, None, fence=fence)
    assert set(chosen.serving) == {"owner"}
    assert "the upstream address 'loopback:8000' is also used by sites/owner.yaml" in str(
        chosen.problems["thief"][0])
    assert select({"thief": thief}, {}, None, fence=fence).problems == {}
    shared = select({"owner": owner, "thief": thief}, {}, None,
                    fence=fence_of(SETTINGS.replace(exclusive_upstreams=False)))
    assert set(shared.serving) == {"owner", "thief"}, "exclusive_upstreams: false shares"
    assert "thief" not in select({"owner": owner, "thief": thief}, {"owner": owner}, None,
                                 fence=fence_of(SETTINGS)).serving, "exclusive by default"


def test_a_tcp_upstream_on_envoys_stats_listener_is_refused() -> None:
    """The stats listener passes on Envoy's admin stats: no site may publish it."""
    settings = from_mapping({"stats_listen": "127.0.0.1:9901"})
    site = _site("peek", "domains: [peek.example]\nupstream: {address: '127.0.0.1:9901'}\n")
    chosen = select({"peek": site}, {}, None, fence=fence_of(settings))
    assert "is Envoy's stats listener" in str(chosen.problems["peek"][0])


def test_sites_sharing_a_certificate_share_its_secret_without_a_conflict(tmp_path: Path) -> None:
    """The same certificate and key files give one secret: shared, not a collision."""
    from tests.test_features_e2e import make_certificate

    make_certificate(tmp_path / "c.pem", tmp_path / "c.key", ["a.example", "b.example"])
    tls = f"tls: {{cert: {tmp_path}/c.pem, key: {tmp_path}/c.key}}\n"
    a = _site("a", "domains: [a.example]\nupstream: {socket: /tmp/a.sock}\n" + tls)
    b = _site("b", "domains: [b.example]\nupstream: {socket: /tmp/b.sock}\n" + tls)
    assert set(select({"a": a, "b": b}, {}, None).serving) == {"a", "b"}


def test_an_access_log_on_another_sites_certificate_is_refused(tmp_path: Path) -> None:
    """Envoy would append log lines (a format can write any line a client sends) to the
    other site's certificate: the writer is refused, the certificate's site serves."""
    from tests.test_features_e2e import make_certificate

    make_certificate(tmp_path / "c.pem", tmp_path / "c.key", ["a.example"])
    a = _site("a", "domains: [a.example]\nupstream: {socket: /tmp/a.sock}\n"
              f"tls: {{cert: {tmp_path}/c.pem, key: {tmp_path}/c.key}}\n")
    b = _site("b", "domains: [b.example]\nupstream: {socket: /tmp/b.sock}\naccess_log:"
              f" {{path: {tmp_path}/c.pem, format: '%REQ(X-LINE)%'}}\n")
    chosen = select({"a": a, "b": b}, {"a": a}, None, fence=fence_of(SETTINGS))
    assert set(chosen.serving) == {"a"}
    assert f"'{tmp_path}/c.pem' is the tls.cert of sites/a.yaml" in str(chosen.problems["b"])


def test_named_upstreams_under_equal_prefixes_collide() -> None:
    """`prefix.upstream` stats names of two sites with one prefix are refused."""
    body = ("upstreams: {api: {socket: /tmp/a.sock}}\nroutes: [{prefix: /, upstream: api}]\n"
            "stats_prefix: shared\n")
    one = _site("one", "domains: [one.example]\n" + body)
    two = _site("two", "domains: [two.example]\n" + body)
    selection = select({"one": one, "two": two}, {}, None)
    assert selection.serving == {}
    assert all("'shared" in str(selection.problems[n][0]) for n in ("one", "two"))


def test_check_reports_each_ignored_file_and_stays_silent_on_editor_junk(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`.YAML`, `.json`, other names and subfolders are warned about; junk is not."""
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "good.yaml").write_text("domains: [g.example]\nupstream: {socket: /tmp/g.sock}\n")
    for name in ("Blog.YAML", "shop.json", "notes.txt", "blog.yaml~", ".blog.yaml.swp", "4913"):
        (sites / name).write_text("domains: [x.example]\n")
    (sites / "old").mkdir()
    assert main(["check", "--no-envoy", str(sites)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {sites}/Blog.YAML: ignored: the suffix must be lower-case" in err
    assert f"warning: {sites}/shop.json: ignored: site files are YAML" in err
    assert f"warning: {sites}/notes.txt: ignored: not a site file" in err
    assert f"warning: {sites}/old: ignored: a folder" in err
    assert not any(junk in err for junk in ("yaml~", ".swp", "4913"))


def test_the_daemon_logs_an_ignored_file_once_not_every_pass(tmp_path: Path) -> None:
    """Two passes over `x.YML`: one `file.ignored` line; after it comes back, one more."""
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "x.YML").write_text("domains: [x.example]\n")
    settings = Settings(sites_dir=sites, out_dir=tmp_path / "out", verify_with_envoy=False,
                        unconfirmed_gap_s=0)
    reconciler = Reconciler(settings, verifier=None, ask_envoy=False, stop=threading.Event())
    with capture_logs() as logs:
        reconciler.run_pass()
        reconciler.run_pass()
        os.unlink(sites / "x.YML")
        reconciler.run_pass()
        (sites / "x.YML").write_text("domains: [x.example]\n")
        reconciler.run_pass()
    ignored = [e for e in logs if e["event"] == "file.ignored"]
    assert [e["file"] for e in ignored] == [str(sites / "x.YML")] * 2
    assert "lower-case" in ignored[0]["reason"]


def test_at_most_20_problems_are_reported_per_file_then_a_count() -> None:
    """A file with 45 unknown keys gives 20 lines and `and 25 more problems`."""
    body = "domains: [a.example]\nupstream: {socket: /tmp/a.sock}\n" + "".join(
        f"k{i}: 1\n" for i in range(45))
    checked = check_content("a", "sites/a.yaml", body.encode(), SETTINGS)
    assert len(checked.problems) == 21
    assert str(checked.problems[-1]) == "sites/a.yaml: and 25 more problems"
    selection = select({"a": checked}, {}, None)
    assert len(selection.problems["a"]) == 21


def _crowd(size: int, domain: str | None) -> dict[str, Checked]:
    """`size` sites on one upstream address; on one domain too, unless `domain` is None."""
    return {f"s{i:04d}": check_content(
        f"s{i:04d}", f"sites/s{i:04d}.yaml", f"domains: [{domain or f's{i}.example'}]\n"
        "upstream: {address: '127.0.0.1:8000'}\n".encode(), SETTINGS) for i in range(size)}


@pytest.mark.parametrize(("domain", "told"), [
    ("same.example", "'same.example' is also claimed by"),
    (None, "the upstream address 'loopback:8000' is also used by")])
def test_many_sites_on_one_upstream_or_domain_cost_one_short_problem_each(
        domain: str | None, told: str) -> None:
    """2,000 sites on one upstream (or domain): each is told three of the others and how
    many more, once, so a shared mistake cannot make millions of problems (it used to:
    one per pair, 4 s a pass at 1,000 sites, out of memory at 10,000)."""
    fence = fence_of(SETTINGS.replace(exclusive_upstreams=True))
    chosen = select(_crowd(2000, domain), {}, None, fence=fence)
    assert chosen.serving == {} and len(chosen.problems) == 2000
    reasons = [p.reason for p in chosen.problems["s0001"]]
    assert len(reasons) == 1 and reasons[0].startswith(
        f"{told} sites/s0000.yaml, sites/s0002.yaml, sites/s0003.yaml and 1,996 other"
        " files"), reasons
    assert all(len(ps) == 1 for ps in chosen.problems.values())
    pair = select(_crowd(2, domain), {}, None, fence=fence)
    assert [p.reason.split(";")[0] for p in pair.problems["s0000"]] == [
        f"{told} sites/s0001.yaml"]
