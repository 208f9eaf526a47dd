"""One daemon per output folder (its lock file), no scratch or temp file outliving a
killed daemon, and a validate that ends on stop: real daemon processes, a real Envoy,
real files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controlplane.envoy.verifying import Verifier
from controlplane.errors import FolderBusy, Stopping
from controlplane.intake.checking import check_content
from controlplane.settings import Settings
from controlplane.writing import LOCK_FILE, TEMP_PREFIX, hold_lock
from tests.parts import DaemonProcess, Node, upstream_kinds, wait_for

pytestmark = pytest.mark.e2e


def _snapshot(*folders: Path) -> dict[str, bytes]:
    """Every regular file under the folders, by path (the lock file excepted)."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != LOCK_FILE and path.name != "status.json":
                found[str(path)] = path.read_bytes()
    return found


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    """A second holder of the same folder's lock is refused with the first one's pid."""
    with (hold_lock(tmp_path, "run"), pytest.raises(FolderBusy, match=f"{os.getpid()} run"),
          hold_lock(tmp_path, "x")):
        pass
    with hold_lock(tmp_path, "render"):  # released on exit: taken again
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()} render\n"


def test_second_daemon_and_render_are_refused_and_the_first_keeps_serving(
        short_tmp: Path) -> None:
    """A second `run` on the same out folder (with its own --state) exits at once with
    exit code 3 and a clear error; `render` into the folder is refused; the first
    daemon's files and last-good state are untouched and it keeps applying changes."""
    state = short_tmp / "state"
    node = Node(short_tmp, upstream_kinds()[0], extra_args=("--state", str(state)))
    try:
        sock = node.upstreams.start("o")
        node.put("o", node.site("o", ["o1.example.com"], sock))
        node.start()
        wait_for(lambda: node.serves("o1.example.com", "o /"), 10, "first daemon serving")
        wait_for(lambda: node.status().get("last_pass", {}).get("confirmed") is True, 10)
        before = _snapshot(node.out, state)
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "controlplane", "run", str(node.sites), "--out",
             str(node.out), "--state", str(short_tmp / "state2"), "--no-envoy"],
            capture_output=True, text=True, timeout=30)
        assert second.returncode == 3, second.stderr
        assert "another controlplane owns this folder" in second.stderr
        assert node.daemon is not None and f"{node.daemon.process.pid} run" in second.stderr
        assert time.monotonic() - started < 10
        render = subprocess.run(
            [sys.executable, "-m", "controlplane", "render", str(node.sites), "--out",
             str(node.out), "--no-envoy"], capture_output=True, text=True, timeout=30)
        assert render.returncode == 3 and "owns this folder" in render.stderr
        assert _snapshot(node.out, state) == before
        assert not (short_tmp / "state2").exists()
        node.put("o", node.site("o", ["o2.example.com"], sock))
        wait_for(lambda: node.serves("o2.example.com", "o /"), 10, "first daemon applies")
        assert node.envoy.rejections() == {}
    finally:
        node.close()


def test_render_works_again_once_the_daemon_is_gone(short_tmp: Path) -> None:
    """The lock dies with its daemon: after it stops, `render` writes the folder."""
    sites, out = short_tmp / "sites", short_tmp / "out"
    sites.mkdir()
    daemon = DaemonProcess(short_tmp, [str(sites), "--out", str(out), "--no-envoy"])
    wait_for(lambda: (out / "lds.json").exists(), 10, "the first pass")
    daemon.process.kill()
    daemon.process.wait(timeout=10)
    render = subprocess.run([sys.executable, "-m", "controlplane", "render", str(sites),
                             "--out", str(out), "--no-envoy"], capture_output=True, text=True)
    assert render.returncode == 0, render.stderr


def _leftovers(out: Path, state: Path) -> list[str]:
    found = [str(p) for folder in (out, state) for p in folder.rglob(f"{TEMP_PREFIX}*")]
    scratch = state / "scratch"
    return found + ([str(p) for p in scratch.iterdir()] if scratch.is_dir() else [])


def test_killed_during_validate_leaves_nothing_after_the_next_start(short_tmp: Path) -> None:
    """SIGKILL while `envoy --mode validate` runs: its scratch folder is under the state
    folder (not /tmp), and the next start sweeps it and every stale temp file (output,
    SDS, state and last-good folders)."""
    sites, out = short_tmp / "sites", short_tmp / "out"
    state = out / ".controlplane"
    sites.mkdir()
    args = [str(sites), "--out", str(out), "--validator", "process"]  # a process per change
    daemon = DaemonProcess(short_tmp, args)
    try:
        wait_for(lambda: (out / "lds.json").exists(), 20, "the first pass")
        scratch = state / "scratch"

        def validating() -> bool:
            (sites / ".k.tmp").write_text(f"domains: [k{time.monotonic_ns()}.example.com]\n"
                                          "upstream: {socket: /tmp/k.sock}\n")
            os.replace(sites / ".k.tmp", sites / "k.yaml")
            return any(scratch.iterdir()) if scratch.is_dir() else False

        wait_for(validating, 20, "a validate scratch folder under the state folder")
        daemon.process.kill()
        daemon.process.wait(timeout=10)
        (out / "sds").mkdir(exist_ok=True)
        for folder in (out, out / "sds", state, state / "sites"):
            folder.mkdir(exist_ok=True)
            (folder / f"{TEMP_PREFIX}cds.json.x1").write_bytes(b"half")
        assert _leftovers(out, state)
        daemon = DaemonProcess(short_tmp, args)
        wait_for(lambda: not _leftovers(out, state), 20, "the sweep at start")
        wait_for(lambda: b'"k"' in (out / "cds.json").read_bytes(), 20, "k applied")
    finally:
        assert daemon.stop() == 0
    assert not _leftovers(out, state)


def test_a_hung_validate_ends_at_once_on_stop(short_tmp: Path) -> None:
    """The real `envoy --mode validate` blocked reading a FIFO certificate (the pre-checks
    bypassed): a stop ends the run within a second with Stopping, the child killed and
    reaped, and its scratch folder removed."""
    cert, key = short_tmp / "cert.pem", short_tmp / "key.pem"
    os.mkfifo(cert)
    os.mkfifo(key)
    settings = Settings()
    text = (f"domains: [h.example.com]\nupstream: {{socket: /tmp/h.sock}}\n"
            f"tls: {{cert: {cert}, key: {key}}}\n")
    item = check_content("h", "h.yaml", text.encode(), settings)
    assert item.resources is not None, item.problems
    stop, scratch = threading.Event(), short_tmp / "scratch"
    verifier = Verifier(settings, scratch=scratch, stop=stop)
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopping):
        verifier.verify([item.resources], {"h": "h.yaml"})
    assert time.monotonic() - started < 1.5
    assert list(scratch.iterdir()) == []
