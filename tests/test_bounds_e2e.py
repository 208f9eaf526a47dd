"""Bounded resources for any input: the peak RSS of `check` and of the daemon's own
process for one 1 MiB site file stays under 100 MiB (an Envoy child counts on its own),
and the status file and the log stay bounded, whatever the file holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.daemon.statusfile import MAX_ENTRIES, MAX_TEXT, clip, clip_all
from tests.parts import DaemonProcess, wait_for

pytestmark = pytest.mark.e2e
LIMIT_KIB = 100 * 1024
HEAD = "domains: [big.example.com]\nupstream: {socket: /tmp/big.sock}\n"
MIB = 1 << 20


def _fill(lines: object, budget: int) -> str:
    """Lines (an iterator of str) up to `budget` bytes."""
    out, size = [], 0
    for line in lines:  # type: ignore[attr-defined]
        if size + len(line) > budget:
            break
        out.append(line)
        size += len(line)
    return "".join(out)


INPUTS = {
    "routes-within-the-value-cap": HEAD + "routes:\n" + _fill(
        (f"  - {{prefix: /p{i}{'x' * 280}}}\n" for i in range(3300)), MIB - 100),
    "tiny-values": HEAD + "routes:\n" + _fill(
        (f"  - {{prefix: /{i}}}\n" for i in range(10**6)), MIB - 100),
    "unknown-keys": HEAD + _fill((f"k{i}: {i}\n" for i in range(10**6)), MIB - 100),
    "one-huge-value": HEAD + "response_headers:\n  set:\n    x-a: " + "a" * (MIB - 200) + "\n",
}


def _write(folder: Path, text: str) -> Path:
    folder.mkdir()
    assert len(text.encode()) <= MIB
    (folder / "big.yaml").write_text(text)
    return folder


@pytest.mark.parametrize("shape", sorted(INPUTS))
def test_check_peak_rss_for_a_1mib_file(short_tmp: Path, shape: str) -> None:
    """`check` on one 1 MiB site file of any shape peaks under 100 MiB of its own."""
    sites = _write(short_tmp / "sites", INPUTS[shape])
    # VmHWM, the peak of this process's own memory: ru_maxrss would count the forking
    # parent's (pytest's) resident set too, which Linux carries across exec.
    probe = ("import sys\nfrom controlplane.cli import main\ncode = main(sys.argv[1:])\n"
             "print([w.split()[1] for w in open('/proc/self/status')\n"
             "       if w.startswith('VmHWM')][0])\n")
    done = subprocess.run([sys.executable, "-c", probe, "check", str(sites), "--no-envoy"],
                          capture_output=True, text=True, timeout=60)
    peak_kib = int(done.stdout.split()[-1])
    print(f"check peak {shape}: {peak_kib} KiB")
    assert peak_kib < LIMIT_KIB, f"{shape}: {peak_kib} KiB"
    assert len(done.stderr) < 60 * (MAX_TEXT + 200), done.stderr[-500:]


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("shape", ["routes-within-the-value-cap", "unknown-keys"])
def test_daemon_peak_rss_and_bounded_status_for_a_1mib_file(short_tmp: Path,
                                                             shape: str) -> None:
    """The daemon's own process (its Envoy validate children count on their own) peaks
    under 100 MiB on a 1 MiB site file; the status entry and the log stay bounded."""
    sites, out = _write(short_tmp / "sites", INPUTS[shape]), short_tmp / "out"
    daemon = DaemonProcess(short_tmp, [str(sites), "--out", str(out)])
    try:
        status_file = out / ".controlplane" / "status.json"
        wait_for(lambda: status_file.exists() and "big" in json.loads(
            status_file.read_text())["sites"], 60, "the big file's pass")
        peak = _peak_kib(daemon.process.pid)
        print(f"daemon peak {shape}: {peak} KiB")
        assert peak < LIMIT_KIB
        site = json.loads(status_file.read_text())["sites"]["big"]
        assert len(site["problems"]) <= MAX_ENTRIES + 1
        assert all(len(p) <= MAX_TEXT + 40 for p in site["problems"])
        assert site["state"] == ("invalid" if shape == "unknown-keys" else "serving")
        assert max(len(line) for line in daemon.log.read_text().splitlines()) < 8 * MAX_TEXT
    finally:
        assert daemon.stop() == 0


def test_clipping_says_how_much_was_cut() -> None:
    """Long texts and long lists are cut to their limits, saying how much was left out."""
    assert clip("x" * 10, 4) == "xxxx... (6 more characters)"
    assert clip("short") == "short"
    assert clip_all([str(i) for i in range(60)], 50)[-1] == "and 10 more"
    assert len(clip_all([str(i) for i in range(60)], 50)) == 51
