"""The watch: a site's page or htpasswd file beside the site files makes the
sites folder one of the `also` folders. Real inotify, a real folder."""

from __future__ import annotations

import time
from pathlib import Path

from controlplane.daemon.watching import Signal, Watch
from tests.parts import wait_for


def test_the_sites_folder_stays_watched_once_no_page_lies_beside_the_sites(
        tmp_path: Path) -> None:
    """A site names `503.html` beside its file: `also` schedules the sites folder (the
    same watchdog key as the main watch). Once no site names it, unscheduling it removes
    the main watch too; `ensure` still says it is watched."""
    signal = Signal()
    watch = Watch(tmp_path, signal)
    try:
        assert watch.ensure()
        watch.also([str(tmp_path)])
        watch.also([])
        assert watch.ensure()
        time.sleep(0.1)
        before = signal.count
        (tmp_path / "a.yaml").write_text("x")
        wait_for(lambda: signal.count > before, 3, "the write to be seen")
    finally:
        watch.stop()


def test_a_page_beside_the_sites_keeps_the_passes_targeted(tmp_path: Path) -> None:
    """While the sites folder is also an `also` folder, every site file's event comes a
    second time through the handler of a socket folder, which names nothing: every
    pass is full."""
    signal = Signal()
    watch = Watch(tmp_path, signal)
    try:
        assert watch.ensure()
        watch.also([str(tmp_path)])
        time.sleep(0.1)
        signal.take_touched()
        before = signal.count
        (tmp_path / "a.yaml").write_text("x")
        wait_for(lambda: signal.count > before, 3, "the write to be seen")
        time.sleep(0.2)
        assert signal.take_touched() == frozenset({"a.yaml"})
    finally:
        watch.stop()
