"""How far apart inotify events come in real bursts: the numbers behind the debounce
defaults (`debounce_quiet_s`, `debounce_max_s` in controlplane/settings.py).

Run: `.venv/bin/python -m bench.debounce_gaps`. Copies 1,000 site files into a watched
folder three ways (cp, tar, write-then-rename) and prints the span of each burst and
the gaps between events. The quiet window must exceed the largest gap inside a burst
(or a burst becomes several passes) and stay far below what a person notices; the
maximum wait must exceed a whole burst's span.
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

from controlplane.daemon.watching import MUTATIONS

FILES = 1000


class _Stamps(FileSystemEventHandler):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        with self.lock:
            self.times.append(time.monotonic())


def _measure(label: str, target: Path, action: Callable[[], None]) -> dict[str, float]:
    stamps = _Stamps()
    observer = InotifyObserver()
    observer.schedule(stamps, str(target), recursive=False, event_filter=MUTATIONS)
    observer.start()
    try:
        time.sleep(0.2)
        action()
        time.sleep(0.5)
    finally:
        observer.stop()
        observer.join()
    times = stamps.times
    gaps = sorted((b - a) * 1000 for a, b in itertools.pairwise(times))
    result = {"events": len(times), "span_ms": (times[-1] - times[0]) * 1000,
              "gap_p50_ms": statistics.median(gaps), "gap_p99_ms": gaps[int(len(gaps) * 0.99)],
              "gap_max_ms": gaps[-1]}
    print(f"{label:28} " + "  ".join(f"{k}={v:.2f}" for k, v in result.items()))
    return result


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cp-gaps-") as scratch:
        source, target = Path(scratch) / "src", Path(scratch) / "dst"
        source.mkdir()
        target.mkdir()
        for i in range(FILES):
            (source / f"s{i}.yaml").write_text(
                f"domains: [s{i}.example.com]\nupstream: {{socket: /tmp/s.sock}}\n")

        def clean() -> None:
            for name in os.listdir(target):
                os.unlink(target / name)

        _measure("cp", target, lambda: subprocess.run(
            f"cp {source}/* {target}/", shell=True, check=True))
        clean()
        _measure("tar | tar", target, lambda: subprocess.run(
            f"tar -C {source} -cf - . | tar -C {target} -xf -", shell=True, check=True))
        clean()

        def renames() -> None:
            for i in range(FILES):
                temp = target / f".s{i}.tmp"
                shutil.copy(source / f"s{i}.yaml", temp)
                os.replace(temp, target / f"s{i}.yaml")

        _measure("write, then rename", target, renames)


if __name__ == "__main__":
    main()
