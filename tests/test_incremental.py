"""What a pass keeps between passes against the same pass worked out from nothing.

At 10,000 sites a one-site change must not look at 10,000 sites: the path checks, the
cross-site indexes, the statuses, the status file and the followed upstreams are kept
and only the sites whose versions changed are worked on again. Each step below is an
edit followed by the daemon's targeted pass; after each, a second reconciler on a copy
of the state folder taken before the pass (so on the same last good versions) works
the folder out with no memory, and the two must say the same of every site. Real
folders and files, no Envoy.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane.daemon.reconciling import Reconciler
from controlplane.daemon.statusfile import SiteStatus, StatusFile
from controlplane.intake.indexes import replaced
from controlplane.settings import Settings
from tests.test_features_e2e import make_certificate


def test_replaced_names_every_entry_that_is_not_the_same_object() -> None:
    one, two, three = object(), object(), object()
    old = {"a": one, "b": two, "c": three}
    assert replaced(old, old) == set()
    assert replaced(dict(old), old) == set()
    assert replaced({**old, "b": object()}, old) == {"b"}
    assert replaced({"a": one, "b": two}, old) == {"c"}
    assert replaced({**old, "d": one}, old) == {"d"}
    assert replaced({"a": one, "b": two, "d": three}, old) == {"c", "d"}


def _settings(root: Path, state: Path) -> Settings:
    return Settings(sites_dir=root / "sites", out_dir=root / "out", state_dir=state,
                    verify_with_envoy=False, unconfirmed_gap_s=0, resync_s=3600,
                    max_certificates=2, log_dirs=[root / "logs"],
                    page_dirs=[root / "pages"], exclusive_upstreams=True)


def _reconciler(settings: Settings) -> Reconciler:
    return Reconciler(settings, verifier=None, ask_envoy=False, stop=threading.Event())


def _said(reconciler: Reconciler) -> dict[str, Any]:
    """What the status file says of each site, but when (the two learnt it apart)."""
    sites = json.loads((reconciler._settings.state / "status.json").read_text())["sites"]
    for site in sites.values():
        del site["changed_at"]
        for endpoint in (site["upstream"] or {}).get("endpoints", {}).values():
            del endpoint["since"]
    return sites


def _site(domain: str, socket: str, extra: str = "") -> str:
    return f"domains: [{domain}]\nupstream: {{socket: {socket}}}\n{extra}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for folder in ("sites", "out", "logs", "pages", "files", "open"):
        (tmp_path / folder).mkdir()
    (tmp_path / "open").chmod(0o777)
    for name in ("a", "b", "c"):
        make_certificate(tmp_path / "files" / f"{name}.pem", tmp_path / "files" / f"{name}.key",
                         [f"{name}.test"])
    (tmp_path / "files" / "b.htpasswd").write_text("staff:{SHA}w0mcJylzCn+AfvuGdqkty2+KP48=\n")
    (tmp_path / "pages" / "503.html").write_text("<p>down</p>\n")
    return tmp_path


def _tls(root: Path, name: str) -> str:
    return f"tls: {{cert: {root}/files/{name}.pem, key: {root}/files/{name}.key}}\n"


Step = Callable[[Path], frozenset[str] | None]
"""An edit; the names its events give the pass (None: a full pass, as a resync)."""


def _edit(name: str, text: Callable[[Path], str]) -> Step:
    def step(root: Path) -> frozenset[str]:
        (root / "sites" / f"{name}.yaml").write_text(text(root))
        return frozenset({f"{name}.yaml"})
    return step


def _remove(name: str) -> Step:
    def step(root: Path) -> frozenset[str]:
        (root / "sites" / f"{name}.yaml").unlink()
        return frozenset({f"{name}.yaml"})
    return step


def _close_folder(root: Path) -> None:
    """The world-writable socket folder is made private; only a full pass looks."""
    (root / "open").chmod(0o755)


STEPS: list[tuple[str, Step]] = [
    ("a newcomer claims an established domain",
     _edit("d", lambda r: _site("a.test", "/run/d.sock"))),
    ("the established site lets it go",
     _edit("a", lambda r: _site("a2.test", "/run/a.sock"))),
    ("a newcomer claims the domain the established site took in the last pass",
     _edit("i", lambda r: _site("a2.test", "/run/i.sock"))),
    ("a socket in a folder anyone can write",
     _edit("j", lambda r: _site("j.test", f"{r}/open/j.sock"))),
    ("the folder is closed, and a resync looks", lambda r: _close_folder(r)),
    ("a log on another site's htpasswd file",
     _edit("e", lambda r: _site("e.test", "/run/e.sock",
                                f"access_log: {{path: {r}/files/b.htpasswd}}\n"))),
    ("a page that is another site's access log",
     _edit("f", lambda r: _site("f.test", "/run/f.sock",
                                f"error_pages: {{503: {r}/logs/b.log}}\n"))),
    ("the log moves away from the htpasswd file",
     _edit("e", lambda r: _site("e.test", "/run/e.sock",
                                f"access_log: {{path: {r}/logs/e.log}}\n"))),
    ("a site file breaks", _edit("c", lambda r: "domains: [c.test\n")),
    ("a second certificate, then a third past max_certificates",
     _edit("g", lambda r: _site("g.test", "/run/g.sock", _tls(r, "c")))),
    ("a second site on one upstream socket", _edit("h", lambda r: _site("h.test", "/run/a.sock"))),
    ("the broken file is fixed", _edit("c", lambda r: _site("c.test", "/run/c.sock"))),
    ("the domain's newcomer leaves", _remove("d")),
    ("the page's site leaves", _remove("f")),
    ("the site on the shared socket takes its own", _edit("h", lambda r: _site(
        "h.test", "/run/h.sock"))),
    ("a TLS site drops its certificate", _edit("b", lambda r: _site(
        "b.test", "/run/b.sock", f"access_log: {{path: {r}/logs/b.log}}\n"
        f"basic_auth: {{htpasswd: {r}/files/b.htpasswd}}\n"))),
]


def test_targeted_passes_say_what_passes_with_no_memory_say(root: Path) -> None:
    (root / "sites" / "a.yaml").write_text(_site("a.test", "/run/a.sock", _tls(root, "a")))
    (root / "sites" / "b.yaml").write_text(_site("b.test", "/run/b.sock", _tls(root, "b") + (
        f"access_log: {{path: {root}/logs/b.log}}\n"
        f"basic_auth: {{htpasswd: {root}/files/b.htpasswd}}\n")))
    (root / "sites" / "c.yaml").write_text(_site("c.test", "/run/c.sock"))
    kept = _reconciler(_settings(root, root / "state"))
    assert sorted(kept.run_pass().added) == ["a", "b", "c"]
    states = set()
    for number, (what, step) in enumerate(STEPS):
        touched = step(root)
        copy = root / f"state-{number}"  # the last good versions this pass starts from
        shutil.copytree(root / "state", copy)
        outcome = kept.run_pass(touched=touched)
        fresh = _reconciler(_settings(root, copy))
        fresh.run_pass()
        assert _said(kept) == _said(fresh), what
        assert sorted(kept._serving) == sorted(fresh._serving), what
        states |= {site["state"] for site in _said(kept).values()}
        states |= {"problems" for site in _said(kept).values() if site["problems"]}
        states |= {"warnings" for site in _said(kept).values() if site["warnings"]}
        assert outcome.durations_ms, what
    # The steps reached every branch they were written for.
    assert {"serving", "serving-last-good", "invalid", "problems", "warnings"} <= states, states


def test_a_pass_that_fails_to_record_leaves_the_next_one_to_record_everything(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the recorder keeps is what the status file holds: a pass that breaks off
    while recording (here the status file's update raises) must not leave the changed
    site's old line standing through the passes after it."""
    (root / "sites" / "a.yaml").write_text(_site("a.test", "/run/a.sock"))
    (root / "sites" / "b.yaml").write_text(_site("b.test", "/run/b.sock"))
    kept = _reconciler(_settings(root, root / "state"))
    kept.run_pass()
    touched = _edit("b", lambda r: _site("b2.test", "/run/b.sock"))(root)
    copy = root / "state-before"
    shutil.copytree(root / "state", copy)
    update = StatusFile.update

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("the disk went away")

    monkeypatch.setattr(StatusFile, "update", broken)
    with pytest.raises(OSError, match="went away"):
        kept.run_pass(touched=touched)
    monkeypatch.setattr(StatusFile, "update", update)
    kept.run_pass(touched=frozenset())  # an event that changed nothing
    fresh = _reconciler(_settings(root, copy))
    fresh.run_pass()
    assert _said(kept) == _said(fresh)


def _status(state: str, serving: str | None = "d1") -> SiteStatus:
    return SiteStatus(state=state, file="/s/x.yaml", serving=serving, changed_at=1.0)


def test_the_status_file_kept_line_by_line_reads_as_one_written_whole(tmp_path: Path) -> None:
    """`StatusFile.update` told which sites moved (`among`) writes what a full update
    writes: sites changed, added and removed, in name order."""
    kept, whole = StatusFile(tmp_path / "kept"), StatusFile(tmp_path / "whole")
    first = {name: _status("serving") for name in ("b", "d", "f")}
    kept.update(dict(first))
    whole.update(dict(first))
    steps: list[tuple[dict[str, SiteStatus], set[str]]] = []
    sites = dict(first)
    sites = {**sites, "d": _status("invalid", None)}
    steps.append((dict(sites), {"d"}))
    sites = {**sites, "a": _status("pending")}
    steps.append((dict(sites), {"a"}))
    del sites["f"]
    steps.append((dict(sites), {"f"}))
    steps.append((dict(sites), set()))
    for found, among in steps:
        kept.update({n: kept.sites.get(n, s) if n not in among else s
                     for n, s in found.items()}, among=among)
        whole.update(dict(found))
        assert kept._json == whole._json, among
        assert list(json.loads(kept._json)) == sorted(found)
