"""systemd: the shipped units pass `systemd-analyze verify`, and the daemon speaks the
notify protocol to a real datagram socket (READY after the first confirmed pass,
watchdog beats, RELOADING on SIGHUP, STOPPING at the end)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.daemon.notify import Notifier
from controlplane.envoy.verifying import envoy_binary
from controlplane.settings import Settings
from tests.parts import Node, free_port, get, upstream_kinds, wait_for

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "deploy" / "systemd"


def _installed_copy(unit: str, folder: Path) -> Path:
    """The unit with its binaries pointed at this checkout's (verify checks they exist)."""
    text = (UNITS / unit).read_text()
    text = text.replace("/usr/local/bin/controlplane", str(Path(sys.executable).parent /
                                                           "controlplane"))
    text = text.replace("/usr/local/bin/envoy", str(envoy_binary(Settings())))
    copy = folder / unit
    copy.write_text(text)
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("unit", ["controlplane.service", "envoy.service"])
def test_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts each unit with no warning at all."""
    copy = _installed_copy(unit, tmp_path)
    if unit == "envoy.service":
        _installed_copy("controlplane.service", tmp_path)  # the unit it wants, beside it
    checked = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                             text=True, timeout=60)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_the_daemon_unit_is_notify_watched_reloadable_and_hardened() -> None:
    """The directives the README promises are in the unit."""
    lines = set((UNITS / "controlplane.service").read_text().splitlines())
    assert {"Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict",
            "NoNewPrivileges=yes", "PrivateTmp=yes", "ReadWritePaths=/var/lib/controlplane",
            "CapabilityBoundingSet="} <= lines
    assert any(line.startswith("WatchdogSec=") for line in lines)


class Listener:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.received: list[str] = []

    def next_with(self, field: str, timeout: float = 15.0) -> str:
        """The next datagram holding `field` as one of its lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.received.append(message)
            if field in message.splitlines():
                return message
        raise AssertionError(f"no {field} within {timeout}s; got {self.received[-5:]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_env(short_tmp: Path) -> Iterator[tuple[Listener, dict[str, str]]]:
    listener = Listener(str(short_tmp / "notify.sock"))
    try:
        yield listener, {**os.environ, "NOTIFY_SOCKET": str(short_tmp / "notify.sock")}
    finally:
        listener.close()


def _daemon(short_tmp: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    sites = short_tmp / "sites"
    sites.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "controlplane", "run", str(sites), "--out",
                             str(short_tmp / "out"), "--no-envoy"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def test_notify_ready_watchdog_reload_stop(short_tmp: Path,
                                          notify_env: tuple[Listener, dict[str, str]]) -> None:
    """A real daemon: READY=1 after its first pass, WATCHDOG=1 beats, RELOADING=1 then
    READY=1 on SIGHUP, STOPPING=1 on SIGTERM."""
    listener, env = notify_env
    process = _daemon(short_tmp, {**env, "WATCHDOG_USEC": "300000"})
    try:
        assert "STATUS=0 invalid; last pass confirmed" in listener.next_with("READY=1")
        listener.next_with("WATCHDOG=1")
        listener.next_with("WATCHDOG=1")
        process.send_signal(signal.SIGHUP)
        reloading = listener.next_with("RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.splitlines())
        listener.next_with("READY=1")
        process.send_signal(signal.SIGTERM)
        listener.next_with("STOPPING=1")
        assert process.wait(timeout=10) == 0
    finally:
        _end(process)


def test_notify_to_an_abstract_socket(short_tmp: Path) -> None:
    """`NOTIFY_SOCKET=@name` is an abstract socket, as systemd may hand out."""
    name = f"controlplane-test-{os.getpid()}-{short_tmp.name}"
    listener = Listener("\0" + name)
    process = _daemon(short_tmp, {**os.environ, "NOTIFY_SOCKET": "@" + name})
    try:
        listener.next_with("READY=1")
    finally:
        _end(process)
        listener.close()


def test_ready_waits_for_envoy_and_waiting_is_not_a_failed_pass(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an admin socket and no Envoy yet: the files are written, the daemon says once
    that it waits, no pass fails and READY=1 comes only once Envoy has confirmed."""
    listener = Listener(str(short_tmp / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmp / "notify.sock"))
    metrics = free_port()
    node = Node(short_tmp / "node", upstream_kinds()[0],
                extra_args=("--metrics", f"127.0.0.1:{metrics}"))
    try:
        node.start_daemon()
        first = listener.next_with("STATUS=0 invalid; last pass waiting for Envoy")
        assert "READY=1" not in first.splitlines()
        assert (node.out / "lds.json").exists() and not node.envoy.admin_socket.exists()
        code, why = get(metrics, "localhost", "/readyz")
        assert code == 503 and "waiting for Envoy's admin socket" in why
        node.envoy.launch()
        listener.next_with("READY=1")
        wait_for(lambda: get(metrics, "localhost", "/readyz")[0] == 200, 10, "/readyz 200")
        assert 'controlplane_passes_total{result="failed"}' not in get(
            metrics, "localhost", "/metrics")[1]
        assert node.daemon is not None
        wait_for(lambda: node.status().get("last_pass", {}).get("confirmed") is True, 10)
        assert len(node.daemon.events("envoy.admin.waiting")) == 1
        assert len(node.daemon.events("envoy.admin.found")) == 1
        assert node.daemon.events("pass.failed") == []
        assert [e for e in node.daemon.events("pass") if e["errors"]] == []
        assert not [m for m in listener.received[:listener.received.index(first)]
                    if "READY=1" in m.splitlines()]
    finally:
        node.close()
        listener.close()


def test_watchdog_only_for_our_pid() -> None:
    """WATCHDOG_USEC for another pid (WATCHDOG_PID) means no beats; ours: half the period."""
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    mine = Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_s == 2.0
    assert Notifier({}).enabled is False and Notifier({}).send("READY=1") is False


def test_a_vanished_notify_socket_is_reported_not_raised(short_tmp: Path) -> None:
    """A send to a socket that is gone returns False with the reason; nothing raises."""
    notifier = Notifier({"NOTIFY_SOCKET": str(short_tmp / "gone.sock")})
    assert notifier.send("READY=1") is False
    assert notifier.error is not None and "gone.sock" in notifier.error


def test_a_manager_that_stops_reading_never_blocks_a_send(short_tmp: Path) -> None:
    """A notify socket nobody reads fills up; further sends fail at once with the reason
    (a blocked send would hold the loop, and its stop on SIGTERM, for good)."""
    path = short_tmp / "full.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unread:
        unread.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        started = time.monotonic()
        sent = [notifier.send("WATCHDOG=1") for _ in range(5000)]
        assert time.monotonic() - started < 10
        assert sent[0] is True and sent[-1] is False
        assert notifier.error is not None and "full.sock" in notifier.error


def test_the_two_units_agree_on_paths() -> None:
    """The out folder is inside the daemon's writable paths and is where Envoy's unit waits;
    the admin socket lies in Envoy's runtime directory."""
    daemon = (UNITS / "controlplane.service").read_text().splitlines()
    envoy = (UNITS / "envoy.service").read_text()
    env = dict(line.removeprefix("Environment=").split("=", 1) for line in daemon
               if line.startswith("Environment=CONTROLPLANE_"))
    writable = next(line.split("=", 1)[1] for line in daemon
                    if line.startswith("ReadWritePaths="))
    assert env["CONTROLPLANE_OUT_DIR"].startswith(writable + "/")
    assert f"cd {env['CONTROLPLANE_OUT_DIR']} &&" in envoy
    assert Path(env["CONTROLPLANE_ADMIN_SOCKET"]).parent == Path("/run") / next(
        line.split("=", 1)[1] for line in envoy.splitlines()
        if line.startswith("RuntimeDirectory="))


def test_waiting_for_envoy_writes_once_and_does_not_spin(
        short_tmp: Path, notify_env: tuple[Listener, dict[str, str]]) -> None:
    """An admin socket that never appears: the files are written once, the wait is said
    once, a site added meanwhile waits (nothing rewritten), and the loop idles: its
    watchdog beats, one a loop round, keep their pace."""
    listener, env = notify_env
    sites, out = short_tmp / "sites", short_tmp / "out"
    sites.mkdir()
    log = short_tmp / "daemon.log"
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "run", str(sites), "--out", str(out),
             "--no-envoy", "--admin-socket", str(short_tmp / "never.sock"), "--resync-s", "0.2"],
            env={**env, "WATCHDOG_USEC": "400000"}, stdout=handle, stderr=subprocess.STDOUT)
    try:
        listener.next_with("STATUS=0 invalid; last pass waiting for Envoy")
        first = (out / "cds.json").read_bytes()
        (sites / "a.yaml").write_text("domains: [a.example.com]\nupstream: {socket: /tmp/a.sock}\n")
        started = time.monotonic()
        for _ in range(5):
            listener.next_with("WATCHDOG=1")
        assert time.monotonic() - started > 0.5  # a spinning loop beats at once
        told = subprocess.run([sys.executable, "-m", "controlplane", "status", "--out", str(out)],
                              capture_output=True, text=True, timeout=30)
        assert told.returncode == 1 and "waiting for Envoy to start" in told.stdout
        assert (out / "cds.json").read_bytes() == first
        events = log.read_text()
        assert events.count('"event": "envoy.admin.waiting"') == 1
        assert events.count('"event": "pass"') == 1 and '"pass.failed"' not in events
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
