"""Faults: a full or read-only output folder, a hanging admin socket, no inotify, and
SIGKILL at random points. Nothing may leave a torn file or take a serving site down,
and the daemon recovers by itself."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.envoy.admin import AdminClient
from controlplane.errors import EnvoyUnavailable
from controlplane.settings import Settings
from tests.parts import DaemonProcess, Node, upstream_kinds, wait_for

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """A small real tmpfs at `path` (root only: mount is how a disk gets full here, and
    chmod does not stop root); skipped, saying why, where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root is needed): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _parseable(out: Path) -> bool:
    for name in ("cds.json", "rds.json", "lds.json"):
        document = json.loads((out / name).read_bytes())
        assert document["version_info"] and isinstance(document["resources"], list)
    return True


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_output_fault_keeps_old_files_and_recovers(short_tmp: Path, fault: str) -> None:
    """ENOSPC or EROFS: the error is reported, the old files stay whole and served, the
    changed site is pending (not serving) meanwhile, and the change goes through by
    itself once space or permission returns."""
    node = Node(short_tmp, upstream_kinds()[0], extra_args=("--state", str(short_tmp / "st")))
    node.config = short_tmp / "settings.yaml"
    node.config.write_text("retry_s: 0.5\nretry_max_s: 1\n")  # the backoff, shortened
    with _tmpfs(node.out):
        try:
            sock = node.upstreams.start("f")
            node.put("f", node.site("f", ["f1.example.com"], sock))
            node.start()
            wait_for(lambda: node.serves("f1.example.com", "f /"), 10, "first version")
            before = (node.out / "cds.json").read_bytes()
            filler = node.out / "filler"
            if fault == "full":
                with contextlib.suppress(OSError), open(filler, "wb") as handle:
                    handle.write(b"\0" * (1 << 20))
            else:
                subprocess.run(["mount", "-o", "remount,ro", str(node.out)], check=True)
            node.put("f", node.site("f", ["f2.example.com"], sock))
            expected = "no space left" if fault == "full" else "not writable"
            wait_for(lambda: any(expected in e for e in
                                 node.status().get("last_pass", {}).get("errors", [])),
                     10, f"the {fault} error in the status")
            assert (node.out / "cds.json").read_bytes() == before and _parseable(node.out)
            assert not [p for p in os.listdir(node.out) if p.startswith(".tmp-")]
            assert node.serves("f1.example.com", "f /")
            assert node.status()["sites"]["f"]["state"] == "pending"  # the new version waits
            if fault == "full":
                filler.unlink()
            else:
                subprocess.run(["mount", "-o", "remount,rw", str(node.out)], check=True)
            wait_for(lambda: node.serves("f2.example.com", "f /"), 10, "recovery")
            wait_for(lambda: node.status()["sites"]["f"]["state"] == "serving", 10, "serving")
            assert node.envoy.rejections() == {}
        finally:
            node.close()


def test_hanging_admin_socket_times_out(short_tmp: Path) -> None:
    """An admin socket that accepts and never answers gives a timeout, never a hang."""
    path = short_tmp / "hang.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)
    try:
        client = AdminClient(path, Settings())
        with pytest.raises(EnvoyUnavailable):
            client.counters()
    finally:
        server.close()


def test_inotify_exhausted_falls_back_to_polling(short_tmp: Path) -> None:
    """No inotify instance left for the daemon: it warns and polls instead of dying."""
    libc = ctypes.CDLL(None, use_errno=True)
    sites, out = short_tmp / "sites", short_tmp / "out"
    sites.mkdir()
    held: list[int] = []
    daemon = None
    try:
        while (fd := libc.inotify_init1(os.O_CLOEXEC)) >= 0:
            held.append(fd)
            assert len(held) < 100_000
        daemon = DaemonProcess(short_tmp, [str(sites), "--out", str(out), "--no-envoy"])
        wait_for(lambda: daemon.events("watch.polling"), 10, "the polling warning")
        (sites / "p.yaml").write_text("domains: [p.example.com]\nupstream: {socket: /tmp/p.sock}\n")
        wait_for(lambda: b'"p"' in (out / "cds.json").read_bytes(), 10, "a change seen by polling")
    finally:
        for fd in held:
            os.close(fd)
        if daemon is not None:
            assert daemon.stop() == 0


def test_sigkill_during_rapid_changes_never_tears_a_file(short_tmp: Path) -> None:
    """200 rapid changes while the daemon is killed with SIGKILL at random points: every
    read of the output sees complete files, and a restarted daemon converges."""
    sites, out = short_tmp / "sites", short_tmp / "out"
    sites.mkdir()
    args = [str(sites), "--out", str(out), "--no-envoy"]
    daemon = DaemonProcess(short_tmp, args)
    wait_for(lambda: (out / "lds.json").exists(), 10, "the first pass")
    done, torn = threading.Event(), []

    def reader() -> None:
        while not done.is_set():
            for name in ("cds.json", "rds.json", "lds.json"):
                try:
                    json.loads((out / name).read_bytes())
                except ValueError as exc:
                    torn.append(f"{name}: {exc}")
                except FileNotFoundError:
                    torn.append(f"{name}: missing")

    thread = threading.Thread(target=reader)
    thread.start()
    rng = random.Random(7)
    try:
        for i in range(200):
            name = f"s{rng.randrange(30)}"
            if rng.random() < 0.25 and (sites / f"{name}.yaml").exists():
                os.unlink(sites / f"{name}.yaml")
            else:
                temp = sites / f".{name}.tmp"
                temp.write_text(f"domains: [{name}-{i}.example.com]\n"
                                f"upstream: {{socket: /tmp/{name}.sock}}\n")
                os.replace(temp, sites / f"{name}.yaml")
            if rng.random() < 0.05:
                daemon.process.kill()
                daemon.process.wait()
                daemon = DaemonProcess(short_tmp, args)
    finally:
        done.set()
        thread.join()
    assert torn == []
    expected = sorted(p.stem for p in sites.glob("*.yaml"))
    wait_for(lambda: sorted(r["name"] for r in json.loads(
        (out / "cds.json").read_bytes())["resources"]) == expected, 10, "convergence")
    assert daemon.stop() == 0
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]
