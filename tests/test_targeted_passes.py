"""Targeted passes against full ones: each case is one where a targeted pass once
answered otherwise than a full pass would (found in review). Real folders, no Envoy."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from controlplane.daemon.reconciling import Reconciler
from controlplane.daemon.watching import Signal
from controlplane.issuing import store
from controlplane.settings import Settings
from tests.test_features_e2e import make_certificate


def _site(domain: str, socket: str) -> str:
    return f"domains: [{domain}]\nupstream: {{socket: {socket}}}\n"


def _reconciler(tmp_path: Path, **extra: object) -> tuple[Path, Reconciler]:
    sites = tmp_path / "sites"
    sites.mkdir()
    (tmp_path / "out").mkdir()
    settings = Settings(sites_dir=sites, out_dir=tmp_path / "out", verify_with_envoy=False,
                        unconfirmed_gap_s=0, resync_s=3600, **extra)  # type: ignore[arg-type]
    return sites, Reconciler(settings, verifier=None, ask_envoy=False, stop=threading.Event())


def _swap_for_link(folder: Path, target: Path) -> None:
    """The folder as written now leads elsewhere (no event in any watched folder: the
    rename of a watched folder is IN_MOVE_SELF, which the watch does not ask for)."""
    folder.rename(folder.with_name(folder.name + ".old"))
    folder.symlink_to(target, target_is_directory=True)


def test_a_new_socket_path_is_judged_where_its_folder_leads_now(tmp_path: Path) -> None:
    """The site's own edit (a targeted pass) names a new socket in a folder the last
    full pass resolved; the folder is a symlink to outside socket_dirs by now. A full
    pass refuses it; the targeted pass resolves the folder from the Fence's memo."""
    socks, outside = tmp_path / "socks", tmp_path / "outside"
    (socks / "d").mkdir(parents=True)
    outside.mkdir()
    sites, reconciler = _reconciler(tmp_path, socket_dirs=[socks])
    (sites / "a.yaml").write_text(_site("a.example", f"{socks}/d/app.sock"))
    assert reconciler.run_pass().added == ["a"]
    _swap_for_link(socks / "d", outside)
    (sites / "a.yaml").write_text(_site("a.example", f"{socks}/d/new.sock"))
    outcome = reconciler.run_pass(touched=frozenset({"a.yaml"}))
    problems = [p.reason for p in outcome.problems.get("a", [])]
    assert any("outside the allowed socket folders" in p for p in problems), outcome


def test_a_new_access_log_is_judged_where_its_folder_leads_now(tmp_path: Path) -> None:
    """The same for an access log: Envoy creates and appends to the new file where the
    folder leads now (here outside log_dirs; as well the state or out folder)."""
    logs, outside = tmp_path / "logs", tmp_path / "outside"
    (logs / "d").mkdir(parents=True)
    outside.mkdir()
    sites, reconciler = _reconciler(tmp_path, log_dirs=[logs])
    body = _site("a.example", "/run/a.sock") + "access_log: {path: %s}\n"
    (sites / "a.yaml").write_text(body % f"{logs}/d/a.log")
    assert reconciler.run_pass().added == ["a"]
    _swap_for_link(logs / "d", outside)
    (sites / "a.yaml").write_text(body % f"{logs}/d/b.log")
    outcome = reconciler.run_pass(touched=frozenset({"a.yaml"}))
    problems = [p.reason for p in outcome.problems.get("a", [])]
    assert any("outside the allowed log folders" in p for p in problems), outcome


def test_a_new_file_still_being_written_does_not_sink_the_pass(tmp_path: Path) -> None:
    """A new file created (an event names it) and written, not closed yet (`unfinished`),
    beside an edit of b: the pass must apply b and leave the new file for its close. In
    the daemon a crash here loses the names taken: b's edit waits for the next full pass."""
    sites, reconciler = _reconciler(tmp_path)
    (sites / "b.yaml").write_text(_site("b.example", "/run/b.sock"))
    assert reconciler.run_pass().added == ["b"]
    (sites / "b.yaml").write_text(_site("b2.example", "/run/b.sock"))
    (sites / "d.yaml").write_text("domains: [d.exa")  # the writer has not closed it
    outcome = reconciler.run_pass(frozenset({"d.yaml"}), frozenset({"b.yaml", "d.yaml"}))
    assert outcome.changed == ["b"], outcome


def test_a_full_pass_forgets_the_folders_no_site_uses(tmp_path: Path) -> None:
    """Targeted passes append the folders of new versions; a full pass that finds
    nothing new to check keeps the list as it is: a folder no longer used stays watched
    (and, past 8, crowds out folders in use) until restart."""
    sites, reconciler = _reconciler(tmp_path)
    (sites / "a.yaml").write_text(_site("a.example", "/run/a.sock"))
    reconciler.run_pass()
    for i in range(12):
        (sites / "a.yaml").write_text(_site("a.example", f"/run/f{i}/a.sock"))
        reconciler.run_pass(touched=frozenset({"a.yaml"}))
    reconciler.run_pass(touched=None)
    assert [f for f in reconciler.socket_folders if f.startswith("/run/f")] == ["/run/f11"]


def test_the_watched_folders_follow_new_sites_in_order(tmp_path: Path) -> None:
    """Nine sites in nine folders, then a tenth in /run/a0 (sorted first): after a full
    pass its folder is among the first 8 that the watch takes."""
    edits = 3
    sites, reconciler = _reconciler(tmp_path)
    for i in range(9):
        (sites / f"s{i}.yaml").write_text(_site(f"s{i}.example", f"/run/z{i}/s.sock"))
    reconciler.run_pass()
    for i in range(edits):
        (sites / "new.yaml").write_text(_site("new.example", f"/run/a{i}/s.sock"))
        reconciler.run_pass(touched=frozenset({"new.yaml"}))
    reconciler.run_pass(touched=None)
    assert f"/run/a{edits - 1}" in reconciler.socket_folders[:8], reconciler.socket_folders


def test_a_pass_that_failed_loses_no_edit(tmp_path: Path) -> None:
    """The daemon takes the touched names before the pass (`Signal.take_touched`); a
    pass that raises (logged `pass.crashed`, retried) must leave the next pass to look
    at them, or at everything. The retry gets no names: b's edit waits for the resync."""
    sites, reconciler = _reconciler(tmp_path)
    (sites / "b.yaml").write_text(_site("b.example", "/run/b.sock"))
    reconciler.run_pass()
    (sites / "b.yaml").write_text(_site("b2.example", "/run/b.sock"))
    (sites / "d.yaml").write_text("domains: [d.exa")
    with contextlib.suppress(Exception):  # as the daemon's _pass does: logged, retried
        reconciler.run_pass(frozenset({"d.yaml"}), frozenset({"b.yaml", "d.yaml"}))
    reconciler.run_pass(frozenset({"d.yaml"}), frozenset())  # the retry: no new event
    assert reconciler.last_good["b"].domains == ("b2.example",)


def test_an_issued_certificate_is_taken_at_the_wake_that_follows(tmp_path: Path) -> None:
    """The ACME worker installs the certificate and wakes the loop (`Signal.wake`: no
    event, so no names): that pass must check the site again and serve HTTPS, as every
    pass did when all were full. A targeted pass with no names reads nothing."""
    sites, reconciler = _reconciler(tmp_path)
    (sites / "auto.yaml").write_text(
        "domains: [auto.test]\nupstream: {socket: /run/auto.sock}\ntls: {acme: true}\n")
    reconciler.run_pass()
    assert reconciler.last_good["auto"].resources.tls is None  # type: ignore[union-attr]
    settings = reconciler._settings
    folder = store.private_folder(settings, store.CERTS_DIR, "auto")
    make_certificate(folder / "c.pem", folder / "k.pem", ["auto.test"])
    store.install(settings, "auto", (folder / "c.pem").read_bytes(),
                  (folder / "k.pem").read_bytes())
    signal = Signal()  # the issuer's wake (`running`: wake(everything=True))
    signal.take_touched()
    signal.wake(everything=True)
    reconciler.run_pass(touched=signal.take_touched())
    assert reconciler.last_good["auto"].resources.tls is not None  # type: ignore[union-attr]
