"""Settled steps against a real Envoy: once every file was confirmed, a change is
confirmed by the version readouts alone (no /stats counters read), and rejections and
restarts are still told apart from acceptance."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from controlplane.envoy.admin import AdminClient, Counters, stat_prefixes
from controlplane.envoy.publishing import Publisher
from controlplane.errors import EnvoyRejected, EnvoyTimeout
from controlplane.settings import Settings
from tests.parts import Envoy
from tests.test_publishing_e2e import apply, bad_cluster, files_of, settings_in

pytestmark = pytest.mark.e2e


@pytest.fixture
def settled(short_tmp: Path, envoy_factory: list[Envoy]
            ) -> tuple[Settings, Envoy, AdminClient, Publisher]:
    """Envoy started on the files of site `a`, and a Publisher that confirmed them."""
    settings = settings_in(short_tmp)
    settings.out_dir.mkdir()
    apply(Publisher(settings, None, threading.Event()), files_of(settings, "a"))
    envoy = Envoy.start(envoy_factory, short_tmp / "envoy", settings.out_dir)
    assert settings.admin_socket is not None
    admin = AdminClient(settings.admin_socket, settings)
    publisher = Publisher(settings, admin, threading.Event())
    assert apply(publisher, files_of(settings, "a")).confirmed
    return settings, envoy, admin, publisher


def _running(envoy: Envoy, settings: Settings, kind: str = "cds") -> str:
    """The version Envoy runs, read by the tests' own admin client."""
    name = f"{stat_prefixes(settings)[kind]}.version_text"
    return str(envoy.stats(name.replace(".", r"\."))[name])


def test_a_one_site_change_reads_no_counters(
        settled: tuple[Settings, Envoy, AdminClient, Publisher]) -> None:
    """Adding and removing a site once every file was confirmed: each file written is
    confirmed by its version readout alone, with no /stats counters request."""
    settings, envoy, admin, publisher = settled
    for names, written in ((("a", "b"), ["cds", "rds"]), (("a",), ["rds", "cds"])):
        admin.requests.clear()
        report = apply(publisher, files_of(settings, *names))
        assert report.confirmed and report.written == written
        assert admin.requests["counters"] == 0 and admin.requests["versions"] >= 2
        assert envoy.clusters() == set(names)
        assert _running(envoy, settings) == publisher.files["cds"].version
        assert _running(envoy, settings, "rds") == publisher.files["rds"].version


def test_a_settled_rejection_is_reported_and_the_last_good_file_re_installed(
        settled: tuple[Settings, Envoy, AdminClient, Publisher]) -> None:
    """A file Envoy rejects in a settled step: the readout does not move, the counters
    read then show the rejection, the last good file goes back under a new version; the
    next step reads the counters again before its write, the one after it does not."""
    settings, envoy, admin, publisher = settled
    good = publisher.files["cds"].version
    report = apply(publisher, files_of(settings, "a", "c"), extra=bad_cluster())
    assert report.rejected and "cds.json" in str(report.rejected[0]) and not report.errors
    assert envoy.clusters() == {"a"}
    assert _running(envoy, settings) == publisher.files["cds"].version != good
    for names, counters_read in ((("a", "b"), True), (("a",), False)):
        admin.requests.clear()
        assert apply(publisher, files_of(settings, *names)).confirmed
        assert (admin.requests["counters"] > 0) is counters_read
        assert envoy.clusters() == set(names)


def test_after_an_envoy_restart_a_change_is_confirmed_by_the_readout(
        settled: tuple[Settings, Envoy, AdminClient, Publisher]) -> None:
    """Envoy restarted between passes on the same files: the new Envoy shows the
    confirmed versions, so a new one in the readout is still its acceptance."""
    settings, envoy, admin, publisher = settled
    envoy.stop()
    envoy.launch()
    admin.requests.clear()
    report = apply(publisher, files_of(settings, "a", "b"))
    assert report.confirmed and admin.requests["counters"] == 0
    assert envoy.clusters() == {"a", "b"}
    assert _running(envoy, settings) == publisher.files["cds"].version


def test_a_restarted_envoy_with_fewer_counts_is_no_verdict(
        settled: tuple[Settings, Envoy, AdminClient, Publisher]) -> None:
    """Counters below the ones kept mean a new Envoy: its rejection count says nothing
    of the file written, so the step times out (unconfirmed, not rejected), and the
    next pass reads the counters first and reports the rejection."""
    settings, envoy, admin, publisher = settled
    for names in (("a", "b"), ("a",), ("a", "b")):
        assert apply(publisher, files_of(settings, *names)).confirmed
    fresh = Publisher(settings, admin, threading.Event())  # keeps counts of 4 updates
    assert apply(fresh, files_of(settings, "a", "b")).confirmed
    envoy.stop()
    envoy.launch()
    first = apply(fresh, files_of(settings, "a", "b", "c"), extra=bad_cluster())
    assert first.unconfirmed and not first.rejected, first
    second = apply(fresh, files_of(settings, "a", "b", "c"), extra=bad_cluster())
    assert second.rejected and "cds.json" in str(second.rejected[0]) and not second.errors
    assert envoy.clusters() == {"a", "b"}


def test_confirm_settled_tells_a_rejection_from_a_restart(
        settled: tuple[Settings, Envoy, AdminClient, Publisher]) -> None:
    """A settled confirmation with a rejection counted since `before`: a rejection when
    the other counts have not fallen below `before`, no verdict (a timeout) when they
    have, as a new Envoy's would."""
    settings, envoy, admin, publisher = settled
    kept = admin.counters()["cds"]
    apply(publisher, files_of(settings, "a", "c"), extra=bad_cluster())
    assert envoy.rejections()
    with pytest.raises(EnvoyRejected):
        admin.confirm("cds", kept, "never-written", 2.0, settled=True)
    before_restart = Counters(success=kept.success + 100, rejected=kept.rejected,
                              failure=kept.failure, version=kept.version)
    with pytest.raises(EnvoyTimeout):
        admin.confirm("cds", before_restart, "never-written", 0.5, settled=True)
