"""Targeted passes: between full passes, a pass started by site files' own events reads
only those files and keeps the path rules and the cross-site indexes; the resync, an
event it cannot place, and a new reconciler look at everything. Real folders, no Envoy."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from controlplane.daemon.reconciling import Reconciler
from controlplane.intake.checking import Checked, check_content
from controlplane.intake.indexes import Owners
from controlplane.settings import Settings


def _site(domain: str, socket: str = "/run/a.sock") -> str:
    return f"domains: [{domain}]\nupstream: {{socket: {socket}}}\n"


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Reconciler]:
    sites = tmp_path / "sites"
    sites.mkdir()
    (tmp_path / "out").mkdir()
    for name in ("a", "b", "c"):
        (sites / f"{name}.yaml").write_text(_site(f"{name}.example", f"/run/{name}.sock"))
    settings = Settings(sites_dir=sites, out_dir=tmp_path / "out", verify_with_envoy=False,
                        unconfirmed_gap_s=0, resync_s=3600)
    reconciler = Reconciler(settings, verifier=None, ask_envoy=False, stop=threading.Event())
    first = reconciler.run_pass()
    assert sorted(first.added) == ["a", "b", "c"] and not first.errors, first
    return sites, reconciler


def test_a_targeted_pass_reads_only_the_files_named(node: tuple[Path, Reconciler]) -> None:
    """Two files change; events named one: only that one is read, until a full pass."""
    sites, reconciler = node
    (sites / "a.yaml").write_text(_site("a2.example", "/run/a.sock"))
    (sites / "b.yaml").write_text(_site("b2.example", "/run/b.sock"))
    assert reconciler.run_pass(touched=frozenset({"a.yaml"})).changed == ["a"]
    assert reconciler.run_pass(touched=frozenset()).changed == []
    assert reconciler.run_pass(touched=None).changed == ["b"]


def test_new_and_removed_files_in_a_targeted_pass(node: tuple[Path, Reconciler]) -> None:
    sites, reconciler = node
    (sites / "d.yaml").write_text(_site("d.example", "/run/d.sock"))
    (sites / "c.yaml").unlink()
    outcome = reconciler.run_pass(touched=frozenset({"d.yaml", "c.yaml"}))
    assert (outcome.added, outcome.removed) == (["d"], ["c"])
    assert sorted(reconciler.status.sites) == ["a", "b", "d"]


@pytest.mark.parametrize("other", ["_defaults.yaml", "notes.txt", "a.yml"])
def test_names_that_may_change_more_make_the_pass_full(
        node: tuple[Path, Reconciler], other: str) -> None:
    """The defaults (every site), a name `check` reports as ignored, a second file of a
    site: the pass looks at everything, so the untouched change to b is seen too."""
    sites, reconciler = node
    (sites / "b.yaml").write_text(_site("b2.example", "/run/b.sock"))
    (sites / other).write_text("upstream_defaults: {}\n" if other.startswith("_") else "x\n")
    outcome = reconciler.run_pass(touched=frozenset({other}))
    assert "b" in outcome.changed or "b" in outcome.invalid, outcome


def test_editor_junk_alone_needs_no_full_pass(node: tuple[Path, Reconciler]) -> None:
    sites, reconciler = node
    (sites / "b.yaml").write_text(_site("b2.example", "/run/b.sock"))
    (sites / ".a.yaml.swp").write_text("x")
    assert reconciler.run_pass(touched=frozenset({".a.yaml.swp"})).changed == []


def test_the_resync_is_a_full_pass(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    (tmp_path / "out").mkdir()
    (sites / "a.yaml").write_text(_site("a.example"))
    settings = Settings(sites_dir=sites, out_dir=tmp_path / "out", verify_with_envoy=False,
                        unconfirmed_gap_s=0, resync_s=0.001)
    reconciler = Reconciler(settings, verifier=None, ask_envoy=False, stop=threading.Event())
    reconciler.run_pass()
    (sites / "a.yaml").write_text(_site("a2.example"))
    assert reconciler.run_pass(touched=frozenset()).changed == ["a"]


def test_a_conflict_made_in_a_targeted_pass_is_caught(node: tuple[Path, Reconciler]) -> None:
    """The kept indexes see a new claim: b takes a's domain, then a's socket; each time
    the established a keeps serving and b keeps its last good version."""
    sites, reconciler = node
    for text in (_site("a.example", "/run/b.sock"), _site("b.example", "/run/a.sock")):
        (sites / "b.yaml").write_text(text)
        outcome = reconciler.run_pass(touched=frozenset({"b.yaml"}))
        assert outcome.invalid == ["b"] and outcome.changed == [], outcome
        assert reconciler.status.sites["b"].state == "serving-last-good"
        assert reconciler.status.sites["a"].state == "serving"
    (sites / "b.yaml").write_text(_site("b3.example", "/run/b.sock"))
    outcome = reconciler.run_pass(touched=frozenset({"b.yaml"}))
    assert (outcome.invalid, outcome.changed) == ([], ["b"])


def _version(name: str, domains: list[str]) -> Checked:
    body = f"domains: {domains}\nupstream: {{socket: /run/{name}.sock}}\n"
    return check_content(name, f"sites/{name}.yaml", body.encode(), Settings())


def test_a_kept_index_says_what_one_built_anew_says() -> None:
    """400 random edits, removals and additions over 30 sites sharing 8 domains: after
    each, the contested keys of the kept index equal those of a fresh one."""
    rng = random.Random(7)
    kept: Owners[str, None] = Owners(lambda c: ((d, None) for d in c.domains))
    serving: dict[str, Checked] = {}
    pool = [f"d{i}.example" for i in range(8)]
    for _ in range(400):
        name = f"s{rng.randrange(30)}"
        if name in serving and rng.random() < 0.3:
            del serving[name]
        else:
            serving[name] = _version(name, rng.sample(pool, rng.randrange(1, 3)))
        kept.update(serving)
        fresh: Owners[str, None] = Owners(lambda c: ((d, None) for d in c.domains))
        fresh.update(serving)
        assert kept.contested() == fresh.contested()
    assert fresh.contested(), "the test must see conflicts"


def test_a_restart_takes_the_last_good_version_of_an_unchanged_file(
        node: tuple[Path, Reconciler]) -> None:
    """The last good versions are parsed from the state folder at start; a site file
    holding the same bytes takes that version instead of a second parse, validation and
    render. A file that changed while the daemon was down is checked anew."""
    sites, before = node
    (sites / "b.yaml").write_text(_site("b2.example", "/run/b.sock"))
    after = Reconciler(before._settings, verifier=None, ask_envoy=False,
                       stop=threading.Event())
    loaded = dict(after.last_good)
    outcome = after.run_pass()
    assert outcome.changed == ["b"] and not outcome.errors, outcome
    assert after.last_good["a"] is loaded["a"], "a was parsed a second time"
    assert after.last_good["b"] is not loaded["b"]
    assert after.last_good["b"].domains == ("b2.example",)


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_a_linked_site_file_makes_every_pass_full(tmp_path: Path, link: str) -> None:
    """`b.yaml` reaches `files/b.yaml` by a link: an edit there touches no name the
    events give, so with such a file in the folder a pass always looks at everything."""
    sites, files = tmp_path / "sites", tmp_path / "sites" / "_files"
    files.mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (sites / "a.yaml").write_text(_site("a.example", "/run/a.sock"))
    (files / "b.yaml").write_text(_site("b.example", "/run/b.sock"))
    if link == "symlink":
        (sites / "b.yaml").symlink_to(files / "b.yaml")
    else:
        (sites / "b.yaml").hardlink_to(files / "b.yaml")
    settings = Settings(sites_dir=sites, out_dir=tmp_path / "out", verify_with_envoy=False,
                        unconfirmed_gap_s=0, resync_s=3600)
    reconciler = Reconciler(settings, verifier=None, ask_envoy=False, stop=threading.Event())
    assert sorted(reconciler.run_pass().added) == ["a", "b"]
    with open(files / "b.yaml", "w") as edited:  # in place: the inode stays
        edited.write(_site("b2.example", "/run/b.sock"))
    assert reconciler.run_pass(touched=frozenset({"a.yaml"})).changed == ["b"]
