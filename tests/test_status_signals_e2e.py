"""`status` tells the truth about real daemon processes (alive, killed, stopped, stale),
SIGHUP reloads the settings of a real daemon, other signals are logged, and the state
folder is private whatever the umask. Real processes, real /proc, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from controlplane.daemon import liveness, statusfile
from controlplane.settings import Settings
from tests.parts import DaemonProcess, Node, free_port, upstream_kinds, wait_for

pytestmark = pytest.mark.e2e


def _status(*args: str) -> tuple[int, str, dict[str, Any]]:
    text = subprocess.run([sys.executable, "-m", "controlplane", "status", *args],
                          capture_output=True, text=True, timeout=30)
    document = subprocess.run([sys.executable, "-m", "controlplane", "status", "--json", *args],
                              capture_output=True, text=True, timeout=30)
    return text.returncode, text.stdout, json.loads(document.stdout)


def _site(socket_path: Path) -> str:
    return f"domains: [a.example.com]\nupstream:\n  socket: {socket_path}\n"


def test_status_of_a_live_then_killed_daemon(short_tmp: Path) -> None:
    """Alive: exit 0 with the pid; an invalid site: exit 1 naming it; SIGKILLed: "not
    running", exit 3, although the status file still says Envoy confirmed."""
    sites, out = short_tmp / "sites", short_tmp / "out"
    sites.mkdir()
    daemon = DaemonProcess(short_tmp, [str(sites), "--out", str(out), "--no-envoy",
                                       "--metrics", f"127.0.0.1:{free_port()}"])
    try:
        wait_for(lambda: (out / ".controlplane" / "status.json").exists(), 10, "a status")
        code, text, document = _status("--out", str(out))
        pid = daemon.process.pid
        assert (code, document["verdict"], document["daemon"]["pid"]) == (0, "ok", pid)
        assert text.startswith(f"daemon: running, pid {pid}, up since ")
        assert "; /healthz: 200 loop seen " in text.splitlines()[0]
        (sites / "bad.yaml").write_text("domains: [bad.example.com]\nupstrem: {}\n")
        wait_for(lambda: "bad" in _status("--out", str(out))[2].get("sites", {}), 10, "bad")
        code, text, document = _status("--out", str(out))
        assert code == 1 and "not served as written: bad" in text
        problem = document["sites"]["bad"]["problems"][0]
        assert (problem["line"], problem["field"]) == (2, "upstrem")
        assert document["last_pass"]["at"].endswith("Z")
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(timeout=10)
        code, text, document = _status("--out", str(out))
        assert code == 3 and text.startswith(
            f"daemon: not running (pid {pid} is gone; it did not stop cleanly)")
        assert document["daemon"]["running"] is False
        assert document["sites"]["bad"]["state"] == "invalid"  # its last word stays readable
    finally:
        daemon.stop()


def test_status_after_a_clean_stop_says_when(short_tmp: Path) -> None:
    """SIGTERM: the daemon records its stop; `status` says "not running (stopped at ...)"."""
    sites, out = short_tmp / "sites", short_tmp / "out"
    sites.mkdir()
    daemon = DaemonProcess(short_tmp, [str(sites), "--out", str(out), "--no-envoy"])
    try:
        wait_for(lambda: (out / ".controlplane" / "status.json").exists(), 10, "a status")
        assert daemon.stop() == 0
        code, text, _ = _status("--out", str(out))
        assert code == 3 and text.startswith("daemon: not running (stopped at 20")
    finally:
        daemon.stop()


def test_status_is_stale_when_no_pass_came_for_too_long(tmp_path: Path) -> None:
    """An alive process (this one) whose last pass is older than 2 x resync + slack."""
    settings = Settings(out_dir=tmp_path, resync_s=10)
    liveness.record_start(settings)
    old = time.time() - (2 * 10 + liveness.STALE_SLACK_S + 5)
    statusfile.write_status(settings.state, "{}", statusfile.PassStatus(
        at=old, added=[], changed=[], removed=[], invalid=[], written=[], confirmed=True,
        errors=[], versions={}))
    report = liveness.inspect(settings)
    assert report.verdict == liveness.STALE
    assert re.search(r"; STALE: last pass 5\ds ago, a pass is due every 10.0s$",
                     report.text.splitlines()[0])
    statusfile.write_status(settings.state, "{}", statusfile.PassStatus(
        at=time.time(), added=[], changed=[], removed=[], invalid=[], written=[],
        confirmed=True, errors=[], versions={}))
    assert liveness.inspect(settings).verdict == liveness.OK


def test_status_without_a_status_file_names_where_it_looked(tmp_path: Path) -> None:
    """No daemon wrote here: exit 3, the path looked at, and that --out must be the
    running daemon's."""
    code, text, document = _status("--out", str(tmp_path / "elsewhere"))
    assert code == 3 and document["verdict"] == "no status"
    assert f"no status at {tmp_path}/elsewhere/.controlplane/status.json" in text
    assert "give it those of the running daemon" in text


def _events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return daemon.events(name)


def test_sighup_reloads_settings_and_keeps_what_cannot_change(short_tmp: Path) -> None:
    """SIGHUP re-reads the settings file: a wider socket_dirs makes a refused site serve;
    a changed listen address is reported as needing a restart; a broken file is reported
    and the old settings stay; SIGUSR1 is logged; the daemon lives through all of it."""
    sites, out, sockets = short_tmp / "sites", short_tmp / "out", short_tmp / "sockets"
    sites.mkdir()
    config = short_tmp / "controlplane.yaml"
    config.write_text("socket_dirs: /dev/shm\nlisten: 127.0.0.1:18080\n")
    (sites / "a.yaml").write_text(_site(sockets / "a.sock"))
    (sites / "b.yaml").write_text(_site(Path("/dev/shm/b.sock")).replace("a.example", "b.example"))
    daemon = DaemonProcess(short_tmp, ["--config", str(config), str(sites), "--out", str(out),
                                       "--no-envoy"])

    def state() -> str | None:
        return _status("--out", str(out))[2].get("sites", {}).get("a", {}).get("state")

    try:
        wait_for(lambda: state() == "invalid", 10, "a refused: its socket is outside")
        b_since = _status("--out", str(out))[2]["sites"]["b"]["changed_at"]
        config.write_text(f"socket_dirs: /dev/shm:{sockets}\nlisten: 127.0.0.1:18081\n")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: state() == "serving", 10, "a served after the reload")
        assert [e["signal"] for e in _events(daemon, "signal.received")] == ["SIGHUP"]
        assert _events(daemon, "settings.reload.needs_restart")[0]["keys"] == ["listen"]
        assert _events(daemon, "settings.reloaded")[0]["changed"] == ["socket_dirs"]
        assert [e["site"] for e in _events(daemon, "site.valid_again")] == ["a"]
        assert _status("--out", str(out))[2]["sites"]["b"]["changed_at"] == b_since
        listener = json.loads((out / "lds.json").read_text())["resources"][0]
        assert listener["address"]["socket_address"]["port_value"] == 18080  # kept
        config.write_text("socket_dirs: [relative]\n")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: _events(daemon, "settings.reload.failed"), 10, "the refusal")
        assert "socket_dirs: folders must be absolute" in _events(
            daemon, "settings.reload.failed")[0]["error"]
        daemon.process.send_signal(signal.SIGUSR1)
        wait_for(lambda: len(_events(daemon, "signal.received")) == 3, 10, "SIGUSR1 logged")
        assert _events(daemon, "signal.received")[2]["effect"] == "ignored"
        assert daemon.process.poll() is None and state() == "serving"
    finally:
        assert daemon.stop() == 0
    assert [e["signal"] for e in _events(daemon, "signal.received")][-1] == "SIGTERM"


def test_state_folder_is_private_and_out_folder_readable_under_umask_077(
        short_tmp: Path) -> None:
    """With umask 077 the out folder is still 0755 and its files 0644 (Envoy reads them);
    a state folder that existed 0755 is narrowed to 0700."""
    sites, out, state = short_tmp / "sites", short_tmp / "out", short_tmp / "state"
    sites.mkdir()
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    log = short_tmp / "daemon.log"
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "run", str(sites), "--out", str(out),
             "--state", str(state), "--no-envoy"], stdout=handle, stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.umask(0o077))
    try:
        wait_for(lambda: (state / "status.json").exists(), 10, "the first pass")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "lds.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "daemon.json").stat().st_mode) == 0o600
    assert '"event": "state.narrowed"' in log.read_text()


def test_recoveries_are_logged_at_info(short_tmp: Path) -> None:
    """Envoy down during a change, then back: `envoy.confirming_again` at info once the
    daemon's retry is confirmed; the site it carried serves."""
    node = Node(short_tmp, upstream_kinds()[0], extra_args=("--confirm-timeout-s", "1"))
    try:
        sock = node.upstreams.start("r")
        node.start()
        wait_for(lambda: node.status().get("last_pass", {}).get("confirmed") is True, 10)
        node.envoy.stop()
        node.put("late", node.site("late", ["late.example.com"], sock))
        wait_for(lambda: node.status().get("last_pass", {}).get("confirmed") is False, 15,
                 "a pass Envoy could not confirm")
        code, text, _ = _status("--out", str(node.out))
        assert code == 1 and ("the last pass is not confirmed by Envoy" in text
                              or "not served as written: late" in text), text
        node.envoy.launch()
        assert node.daemon is not None
        events = wait_for(lambda: node.daemon.events("envoy.confirming_again"), 20,
                          "the recovery logged")
        assert events[0]["level"] == "info"
        wait_for(lambda: node.serves("late.example.com", "r /"), 10, "late served")
    finally:
        node.close()


def test_a_taken_metrics_port_is_named_with_the_fix(short_tmp: Path) -> None:
    """--metrics on a port in use: exit 3, the address, the reason and what to do."""
    (short_tmp / "sites").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        ran = subprocess.run([sys.executable, "-m", "controlplane", "run",
                              str(short_tmp / "sites"), "--out", str(short_tmp / "out"),
                              "--no-envoy", "--metrics", address],
                             capture_output=True, text=True, timeout=60)
    assert ran.returncode == 3
    assert (f"controlplane: --metrics {address}: cannot listen there: Address already in use;"
            " choose a free address and port") in ran.stderr
