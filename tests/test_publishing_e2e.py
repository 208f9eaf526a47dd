"""The ordered, confirmed apply against a real Envoy: confirmation, rejection, timeout."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path

import pytest

from controlplane.envoy.admin import AdminClient, Counters
from controlplane.envoy.files import Confirmation, Report
from controlplane.envoy.publishing import Publisher
from controlplane.intake.checking import check_content
from controlplane.render.rendering import CLUSTER, fragment
from controlplane.render.snapshot import Snapshot, snapshot
from controlplane.settings import Settings
from controlplane.values import Listen
from tests.parts import Envoy, free_port, wait_for

pytestmark = pytest.mark.e2e


def settings_in(short_tmp: Path, **changes: object) -> Settings:
    return Settings(out_dir=short_tmp / "out", listen=Listen(host="127.0.0.1", port=free_port()),
                    admin_socket=short_tmp / "envoy" / "admin.sock", confirm_timeout_s=3.0,
                    **changes)


def files_of(settings: Settings, *names: str) -> Snapshot:
    resources = []
    for name in names:
        text = f"domains: [{name}.example]\nupstream: {{socket: /tmp/{name}.sock}}\n"
        checked = check_content(name, f"{name}.yaml", text.encode(), settings)
        assert checked.resources is not None
        resources.append(checked.resources)
    return snapshot(settings, resources)


def apply(publisher: Publisher, target: Snapshot, extra: dict[str, str] | None = None) -> Report:
    clusters = {**target.clusters, **(extra or {})}
    return publisher.apply(dataclasses.replace(target, clusters=clusters), secrets=False)


@pytest.fixture
def envoy_with_files(short_tmp: Path, envoy_factory: list[Envoy]) -> tuple[Settings, Envoy]:
    settings = settings_in(short_tmp)
    settings.out_dir.mkdir()
    first = Publisher(settings, None, threading.Event())
    apply(first, files_of(settings, "a"))
    return settings, Envoy.start(envoy_factory, short_tmp / "envoy", settings.out_dir)


def test_each_step_is_confirmed_by_envoy(envoy_with_files: tuple[Settings, Envoy]) -> None:
    """Adding and removing sites: every file written is confirmed, versions match."""
    settings, envoy = envoy_with_files
    assert settings.admin_socket is not None
    publisher = Publisher(settings, AdminClient(settings.admin_socket, settings), threading.Event())
    report = apply(publisher, files_of(settings, "a", "b"))
    assert report.confirmed and report.written == ["cds", "rds"]
    assert envoy.clusters() == {"a", "b"}
    report = apply(publisher, files_of(settings, "b"))
    assert report.confirmed and report.written == ["rds", "cds"]
    assert envoy.clusters() == {"b"}
    stats = envoy.stats(r"cluster_manager\.cds\.version_text")
    assert stats["cluster_manager.cds.version_text"] == publisher.files["cds"].version
    assert envoy.rejections() == {}


def test_a_write_before_a_restart_is_confirmed_when_the_counters_come_back_level(
        envoy_with_files: tuple[Settings, Envoy]) -> None:
    """Counters read from an Envoy that then died, as high as the new Envoy's are after
    it loaded the written file at its start: the version it runs confirms the file (it
    was not left waiting for `update_success` to pass the old Envoy's count)."""
    settings, _ = envoy_with_files
    assert settings.admin_socket is not None
    admin = AdminClient(settings.admin_socket, settings)
    publisher = Publisher(settings, admin, threading.Event())
    now = admin.counters()["cds"]
    assert now.version == publisher.files["cds"].version  # Envoy started on the file
    publisher.files["cds"].before = Counters(success=now.success, version="older")
    report = apply(publisher, files_of(settings, "a"))
    assert report.confirmed, report
    assert publisher.files["cds"].confirmed is Confirmation.CONFIRMED


def test_rejection_reinstalls_the_last_good_file(envoy_with_files: tuple[Settings, Envoy]) -> None:
    """A file Envoy rejects (partly applied) is replaced by the last confirmed one under
    a new version, and the rejection is reported."""
    settings, envoy = envoy_with_files
    assert settings.admin_socket is not None
    publisher = Publisher(settings, AdminClient(settings.admin_socket, settings), threading.Event())
    assert apply(publisher, files_of(settings, "a")).confirmed
    good_version = publisher.files["cds"].version
    report = apply(publisher, files_of(settings, "a", "c"), extra=bad_cluster())
    assert report.rejected and "cds" in str(report.rejected[0])
    assert envoy.clusters() == {"a"}
    now = envoy.stats(r"cluster_manager\.cds\.version_text")["cluster_manager.cds.version_text"]
    assert now == publisher.files["cds"].version != good_version
    assert publisher.files["cds"].confirmed


def test_no_envoy_is_a_timeout_not_a_hang(short_tmp: Path) -> None:
    """With the admin socket missing, the step is reported unconfirmed, files stay."""
    settings = settings_in(short_tmp)
    settings.out_dir.mkdir()
    assert settings.admin_socket is not None
    publisher = Publisher(settings, AdminClient(settings.admin_socket, settings), threading.Event())
    report = apply(publisher, files_of(settings, "a"))
    assert not report.confirmed
    assert {p.name for p in settings.out_dir.iterdir()} == {"cds.json", "rds.json", "lds.json"}
    report = apply(publisher, files_of(settings, "a", "b"))
    assert report.unconfirmed and "cds.json" in str(report.unconfirmed[0])


def bad_cluster() -> dict[str, str]:
    bad = {"name": "bad", "type": "STATIC", "connect_timeout": "5s", "load_assignment": {
        "cluster_name": "bad", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "pipe": {"path": "/tmp/" + "x" * 120}}}}]}]}}
    return {"bad": fragment(bad, CLUSTER)}


class _PausingAdmin(AdminClient):
    """The real admin client; right after one read it freezes the real Envoy (SIGSTOP),
    so the file written next is seen only once Envoy is thawed, after the timeout."""

    def __init__(self, path: Path, settings: Settings, pid: int) -> None:
        super().__init__(path, settings)
        self.pid, self.pause_next = pid, False

    def counters(self) -> dict[str, Counters]:
        result = super().counters()
        if self.pause_next:
            self.pause_next = False
            os.kill(self.pid, signal.SIGSTOP)
        return result


@pytest.mark.parametrize("settled", [False, True], ids=["counters-first", "settled"])
def test_a_rejection_after_a_timeout_is_seen_on_the_next_pass(
        envoy_with_files: tuple[Settings, Envoy], settled: bool) -> None:
    """Envoy rejects a file only after the confirmation gave up: the next apply still
    sees the rejection (the counters from before the write are kept: read just before
    it, or, in a settled step, kept from an earlier read) and re-installs."""
    settings, envoy = envoy_with_files
    assert settings.admin_socket is not None and envoy.process is not None
    admin = _PausingAdmin(settings.admin_socket, settings, envoy.process.pid)
    publisher = Publisher(settings, admin, threading.Event())
    if settled:
        assert apply(publisher, files_of(settings, "a")).confirmed
        os.kill(envoy.process.pid, signal.SIGSTOP)  # a settled step reads nothing first
    else:
        admin.pause_next = True  # frozen right after the read before the write
    admin.requests.clear()
    try:
        first = apply(publisher, files_of(settings, "a", "c"), extra=bad_cluster())
    finally:
        os.kill(envoy.process.pid, signal.SIGCONT)
    assert first.unconfirmed and not first.rejected
    assert admin.requests["counters"] == (0 if settled else 1)
    wait_for(lambda: envoy.rejections(), 5, "Envoy's late rejection")
    second = apply(publisher, files_of(settings, "a", "c"), extra=bad_cluster())
    assert second.rejected and "cds.json" in str(second.rejected[0])
    assert envoy.clusters() == {"a"}


def test_after_a_restart_the_running_file_is_the_one_re_installed(
        envoy_with_files: tuple[Settings, Envoy]) -> None:
    """A new publisher adopts the files Envoy runs, so a rejection right after a restart
    still has a last good file to put back."""
    settings, envoy = envoy_with_files
    assert settings.admin_socket is not None
    admin = AdminClient(settings.admin_socket, settings)
    assert apply(Publisher(settings, admin, threading.Event()), files_of(settings, "a")).confirmed
    restarted = Publisher(settings, admin, threading.Event())
    report = apply(restarted, files_of(settings, "a", "c"), extra=bad_cluster())
    assert report.rejected and not report.errors
    assert envoy.clusters() == {"a"}
    version = envoy.stats(r"cluster_manager\.cds\.version_text")
    assert restarted.files["cds"].version in version.values()
