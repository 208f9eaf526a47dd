"""Real parts for the tests: Envoy from the wheel, nginx (or the stand-in HTTP server)
on Unix sockets in short temp folders, the daemon as a real process. Every fixture
cleans up its processes, sockets and folders in `finally`, also on failure."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import leaks
from tests.parts import Envoy, Upstreams, upstream_kinds


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp folder with a short path: socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="cp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=upstream_kinds())
def upstreams(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[Upstreams]:
    """Starts named upstreams on Unix sockets: nginx, and the stand-in when CI has both."""
    started = Upstreams(short_tmp / "sockets", kind=request.param)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def envoy_factory(short_tmp: Path) -> Iterator[list[Envoy]]:
    """Envoys started by a test (`Envoy.start(...)` appends here); all stopped at the end."""
    started: list[Envoy] = []
    try:
        yield started
    finally:
        for envoy in started:
            envoy.stop()


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """A test that leaves a thread or a process running fails (after a grace period);
    what a long-lived helper owns is the module guard's to judge."""
    threads, processes = leaks.threads(), leaks.descendants(owned=False)
    yield
    left = leaks.leaked(threads, processes, owned=False)
    assert not left, f"the test left these running: {left}"


@pytest.fixture(scope="module", autouse=True)
def _no_leaks_in_module() -> Iterator[None]:
    """Once a module's fixtures are torn down, nothing it started runs on."""
    threads, processes = leaks.threads(), leaks.descendants()
    yield
    left = leaks.leaked(threads, processes)
    assert not left, f"the module left these running: {left}"


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not depend on the developer's shell."""
    for name in list(os.environ):
        if name.startswith("CONTROLPLANE_") and name != "CONTROLPLANE_REQUIRE_NGINX":
            monkeypatch.delenv(name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Where nginx is required (CI), a skipped test is a failure, not a pass."""
    if os.environ.get("CONTROLPLANE_REQUIRE_NGINX") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"{len(skipped)} tests were skipped; CI runs them all", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
