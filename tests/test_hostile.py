"""The hostile-input corpus through `controlplane check`: every entry is refused with
its file and reason, in bounded time and memory, and the good site stays valid."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

from tests.hostile import CASES

MAX_SECONDS = 60
MAX_RSS_MB = 600


def test_corpus_is_large_enough() -> None:
    """The issue asks for at least 40 hostile cases."""
    assert len(CASES) >= 40
    assert len({c.file for c in CASES}) == len(CASES)


def test_check_refuses_every_hostile_entry_and_keeps_the_good_site(tmp_path: Path) -> None:
    """One folder with all of them: each problem line names its file and reason."""
    sites = tmp_path / "sites"
    sites.mkdir()
    for case in CASES:
        case.create(sites)
    for name in ("good", "twice", "claimed"):
        (sites / f"{name}.yaml").write_text(
            f"domains: [{name}.example.com]\nupstream: {{socket: /tmp/{name}.sock}}\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "controlplane", "check", str(sites)],
                          capture_output=True, text=True, timeout=MAX_SECONDS)
    elapsed = time.monotonic() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    missing = []
    for case in CASES:
        mine = [line for line in lines if line.startswith(f"{sites}/{case.file}")]
        if not any(case.expected in line for line in mine):
            missing.append((case.file, mine[:2]))
    assert missing == []
    assert not any(line.startswith(f"{sites}/good.yaml") for line in lines)
    # good.yaml alone is valid: twice.yaml and claimed.yaml clash with hostile cases
    assert lines[-1] == f"{len(CASES) + 3} sites: 1 valid, {len(CASES) + 2} invalid"
    assert elapsed < MAX_SECONDS and peak_mb < MAX_RSS_MB, (elapsed, peak_mb)
