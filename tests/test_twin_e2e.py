"""The validation twin beside a real live Envoy: nothing the live Envoy refuses passes
it (nor `envoy --mode validate`); it binds no port and probes no upstream; it forgets
what it held after a rejection; it is restarted when it dies or grows; it dies with the
daemon, SIGKILL included."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.envoy import twinning
from controlplane.envoy.admin import AdminClient
from controlplane.envoy.publishing import Publisher
from controlplane.envoy.twinning import Twin, TwinVerifier
from controlplane.envoy.verifying import Verifier
from controlplane.intake.checking import check_content
from controlplane.render.rendering import SiteResources
from controlplane.render.snapshot import snapshot
from controlplane.settings import Settings
from controlplane.values import Listen
from tests.envoy_rejections import ACCEPTED, HATCH, MISTAKES, broken, site_text
from tests.parts import DaemonProcess, Envoy, free_port, wait_for

pytestmark = pytest.mark.e2e


def _settings(short_tmp: Path, port: int | None = None) -> Settings:
    return Settings(out_dir=short_tmp / "out", socket_dirs=(), confirm_timeout_s=5.0,
                    listen=Listen(host="127.0.0.1", port=port or free_port()),
                    listen_tls=Listen(host="127.0.0.1", port=free_port()),
                    admin_socket=short_tmp / "envoy" / "admin.sock")


def _site(settings: Settings, name: str, body: str = "", sock: Path | None = None) -> SiteResources:
    text = site_text(name, body)
    if sock is not None:
        text = text.replace(f"/tmp/{name}.sock", str(sock))
    item = check_content(name, f"{name}.yaml", text.encode(), settings)
    assert item.resources is not None and not item.problems, item.problems
    return item.resources


@pytest.fixture
def twin(short_tmp: Path) -> Iterator[tuple[Settings, Twin]]:
    settings = _settings(short_tmp)
    started = Twin(settings, threading.Event())
    try:
        assert started.wait_ready(settings, 20), started.process.log_since(0)
        yield settings, started
    finally:
        started.stop()


def _live_refuses(publisher: Publisher, settings: Settings, sites: list[SiteResources]) -> bool:
    return bool(publisher.apply(snapshot(settings, sites)).rejected)


def test_nothing_the_live_envoy_refuses_passes_the_twin_or_validate(
        short_tmp: Path, envoy_factory: list[Envoy]) -> None:
    """Each corpus entry beside a serving site, on the live Envoy (make-before-break, as
    the daemon publishes), the twin and `--mode validate`: the live Envoy refuses every
    entry, and so do both validators; all three take the controls."""
    settings = _settings(short_tmp)
    settings.out_dir.mkdir()
    base = [_site(settings, "base")]
    assert not _live_refuses(Publisher(settings, None, threading.Event()), settings, base)
    Envoy.start(envoy_factory, short_tmp / "envoy", settings.out_dir)
    assert settings.admin_socket is not None
    publisher = Publisher(settings, AdminClient(settings.admin_socket, settings),
                          threading.Event())
    assert not _live_refuses(publisher, settings, base)
    twin = Twin(settings, threading.Event())
    try:
        assert twin.wait_ready(settings, 20)
        process = Verifier(settings)
        verdicts = {}
        for name, body in {**HATCH, **ACCEPTED}.items():
            item = _site(settings, name, body)
            live = _live_refuses(publisher, settings, [*base, item])
            assert not _live_refuses(publisher, settings, base), name  # back to serving
            verdicts[name] = (live, twin.check(settings, [item]) is not None,
                              bool(process.verify([item], {name: f"{name}.yaml"})))
    finally:
        twin.stop()
    assert {n for n, (live, _, _) in verdicts.items() if live} == set(HATCH)
    assert [n for n, (live, by_twin, _) in verdicts.items() if live and not by_twin] == []
    assert [n for n, (live, _, by_process) in verdicts.items() if live and not by_process] == []
    assert [n for n in ACCEPTED if any(verdicts[n])] == []


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_twin_refuses_what_the_skipped_type_checks_would_have(
        twin: tuple[Settings, Twin], mistake: dict[str, str]) -> None:
    """A render of the daemon's own making is not type-checked in Python when Envoy's
    verdict follows: a type error in it (a renderer's bug) is the twin's to refuse."""
    settings, started = twin
    good = _site(settings, "good")
    assert started.check(settings, [good]) is None
    reason = started.check(settings, [broken(good, mistake)])
    assert reason is not None and next(iter(mistake)) in reason, reason


def test_after_a_rejection_the_same_files_are_refused_again(twin: tuple[Settings, Twin]) -> None:
    """What the twin holds after a rejection is unknown: checking the same bad group again
    is refused again (not taken for what the twin already holds), with Envoy's reason."""
    settings, started = twin
    good, bad = _site(settings, "good"), _site(settings, "ringsize", HATCH["ringsize"])
    assert started.check(settings, [good]) is None
    first = started.check(settings, [bad])
    assert first is not None and "minimum_ring_size (10) > maximum_ring_size (5)" in first
    assert started.check(settings, [bad]) == first
    assert started.check(settings, [good]) is None
    routes = _site(settings, "pseudo", HATCH["pseudo"])
    first = started.check(settings, [routes])
    assert first is not None and ":-prefixed or host headers may not be modified" in first
    assert started.check(settings, [routes]) == first
    assert started.check(settings, [good]) is None


def _twin_clusters(settings: Settings, started: Twin) -> set[str]:
    """The clusters the twin holds, read by the test's own admin client."""
    found = json.loads(AdminClient(started.process.admin_socket, settings).get(
        "/clusters?format=json"))
    return {c["name"] for c in found.get("cluster_statuses", ())}


def test_a_settled_check_reads_no_counters(twin: tuple[Settings, Twin]) -> None:
    """Once a check read the twin's counters, a one-site change (its cluster and its
    routes) is confirmed by the version readouts alone, with no /stats counters request,
    and the twin holds the new site."""
    settings, started = twin
    assert started.check(settings, [_site(settings, "a")]) is None
    for name in ("b", "c"):
        started.requests.clear()
        assert started.check(settings, [_site(settings, name)]) is None
        assert started.requests["counters"] == 0 and started.requests["versions"] >= 2
        assert _twin_clusters(settings, started) == {name}


def test_a_rejection_right_after_a_settled_accept_is_caught(
        twin: tuple[Settings, Twin]) -> None:
    """A cluster and a route rejection, each checked right after an accept made on the
    readouts alone: refused with Envoy's reason; the check after it reads the counters
    afresh (none are kept after a rejection) and takes a good site; the one after that
    is settled again."""
    settings, started = twin
    assert started.check(settings, [_site(settings, "warm")]) is None
    for bad in ("ringsize", "pseudo"):
        started.requests.clear()
        assert started.check(settings, [_site(settings, f"ok{bad}")]) is None
        assert started.requests["counters"] == 0
        reason = started.check(settings, [_site(settings, bad, HATCH[bad])])
        assert reason is not None and ("ring_size" in reason or ":-prefixed" in reason)
        for name, fresh in ((f"after{bad}", True), (f"then{bad}", False)):
            started.requests.clear()
            assert started.check(settings, [_site(settings, name)]) is None
            assert (started.requests["counters"] > 0) is fresh
            assert _twin_clusters(settings, started) == {name}


def test_the_twin_binds_nothing_and_never_probes_an_upstream(short_tmp: Path) -> None:
    """The listen port held by someone else, and a health-checked site on a real socket:
    the twin takes the site, its health check fails (aimed elsewhere), and the upstream
    socket never sees a connection."""
    with socket.socket() as held, socket.socket(socket.AF_UNIX) as upstream:
        held.bind(("127.0.0.1", 0))
        held.listen()
        sock = short_tmp / "up.sock"
        upstream.bind(str(sock))
        upstream.listen()
        upstream.setblocking(False)
        settings = _settings(short_tmp, port=held.getsockname()[1])
        twin = Twin(settings, threading.Event())
        try:
            assert twin.wait_ready(settings, 20)
            item = _site(settings, "checked", ACCEPTED["checked"], sock)
            assert twin.check(settings, [item]) is None, twin.process.log_since(0)
            admin = AdminClient(twin.process.admin_socket, settings)
            wait_for(lambda: b"failed_active_health_check" in admin.get("/clusters?format=json"),
                     15, "the twin's health check failing")
        finally:
            twin.stop()
        with pytest.raises(BlockingIOError):
            upstream.accept()


def test_a_dead_twin_is_replaced_and_validate_stands_in(twin: tuple[Settings, Twin]) -> None:
    """SIGKILL to the twin: the next verdict comes from `--mode validate`, the twin is
    started again, and later verdicts are the new twin's."""
    settings, started = twin
    verifier = TwinVerifier(settings, started)
    old = started.process.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not started.process.alive(), 10, "the twin gone")
    bad = _site(settings, "panic", HATCH["panic"])
    assert "PercentValidationError" in str(verifier.verify([bad], {"panic": "p.yaml"}))
    assert verifier.twin_runs == 0
    assert started.wait_ready(settings, 20) and started.process.pid != old
    other = _site(settings, "hedge", HATCH["hedge"])
    assert "InitialRequests" in str(verifier.verify([other], {"hedge": "h.yaml"}))
    assert verifier.twin_runs == 1


def test_a_grown_twin_is_restarted_and_big_groups_go_to_validate(
        twin: tuple[Settings, Twin], monkeypatch: pytest.MonkeyPatch) -> None:
    """A twin above its memory bound after a check starts afresh; a group above the
    twin's size goes to `--mode validate`."""
    settings, started = twin
    monkeypatch.setattr(twinning, "MAX_TWIN_RSS", 1)
    assert started.check(settings, [_site(settings, "a")]) is None
    assert started.process.starts == 2
    monkeypatch.setattr(twinning, "MAX_TWIN_GROUP", 1)
    verifier = TwinVerifier(settings, started)
    assert verifier.verify([_site(settings, "b"), _site(settings, "c")],
                           {"b": "b.yaml", "c": "c.yaml"}) == {}
    assert (verifier.runs, verifier.twin_runs) == (1, 0)


def _twins(bootstrap: Path) -> list[int]:
    """Processes running on this twin bootstrap."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if str(bootstrap).encode() in cmdline.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_the_twin_dies_with_the_daemon_even_on_sigkill(short_tmp: Path) -> None:
    """A daemon killed with SIGKILL leaves no twin behind (no orphan holding inotify
    instances); one stopped cleanly stops its twin and removes its socket."""
    sites, out = short_tmp / "sites", short_tmp / "out"
    sites.mkdir()
    (sites / "a.yaml").write_text(site_text("a", ""))
    bootstrap = out / ".controlplane" / "twin" / "bootstrap.json"
    for kill in (True, False):
        daemon = DaemonProcess(short_tmp, [str(sites), "--out", str(out)])
        try:
            wait_for(lambda: _twins(bootstrap), 20, "the twin started")
            if kill:
                daemon.process.kill()
                daemon.process.wait(timeout=10)
            else:
                assert daemon.stop() == 0
                assert not (bootstrap.parent / "admin.sock").exists()
            wait_for(lambda: not _twins(bootstrap), 10, "the twin gone with the daemon")
        finally:
            if daemon.process.poll() is None:
                daemon.stop()
