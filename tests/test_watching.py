"""The change signal and the watch, with real threads and a real folder."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from controlplane.daemon.watching import Signal, Watch
from tests.parts import wait_for


def test_a_single_event_is_released_after_the_quiet_window() -> None:
    """One event: the batch ends one quiet window later, not at the maximum wait."""
    signal, stop = Signal(), threading.Event()
    signal.notify()
    started = time.monotonic()
    assert signal.wait_batch(1.0, quiet=0.02, max_wait=5.0, stop=stop)
    assert time.monotonic() - started < 2.0  # far below max_wait: it did not wait for it


def test_a_steady_stream_is_cut_at_the_maximum_wait() -> None:
    """Events every 5 ms for a long time: the batch still ends after max_wait."""
    signal, stop, done = Signal(), threading.Event(), threading.Event()

    def stream() -> None:
        while not done.is_set():
            signal.notify()
            done.wait(0.005)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        started = time.monotonic()
        assert signal.wait_batch(5.0, quiet=0.05, max_wait=0.2, stop=stop)
        assert time.monotonic() - started < 4.0
    finally:
        done.set()
        thread.join()


def test_stop_ends_the_wait() -> None:
    """A stop request wakes a waiting loop at once and reports no batch."""
    signal, stop = Signal(), threading.Event()
    threading.Timer(0.05, lambda: (stop.set(), signal.wake())).start()
    assert not signal.wait_batch(30.0, quiet=0.02, max_wait=0.5, stop=stop)


def test_watch_signals_mutations_but_not_reads(tmp_path: Path) -> None:
    """Writing a file signals; reading it does not (we subscribe to mutations only)."""
    signal = Signal()
    watch = Watch(tmp_path, signal)
    try:
        assert watch.ensure()
        wait_for(lambda: signal.count >= 1, 5, "the initial rescan signal")
        (tmp_path / "a.yaml").write_text("x")
        wait_for(lambda: signal.count >= 2, 5, "the write to be seen")
        time.sleep(0.2)  # let the write's own events (create, close) all arrive
        settled = signal.count
        for _ in range(5):
            (tmp_path / "a.yaml").read_bytes()
        time.sleep(0.2)  # give inotify time to deliver anything it would deliver
        assert signal.count == settled
    finally:
        watch.stop()


def test_watch_follows_a_recreated_folder(tmp_path: Path) -> None:
    """The folder removed and made again (new inode) is watched again."""
    folder = tmp_path / "sites"
    folder.mkdir()
    signal = Signal()
    watch = Watch(folder, signal)
    try:
        assert watch.ensure()
        os.rmdir(folder)
        assert not watch.ensure()
        folder.mkdir()
        assert watch.ensure()
        before = signal.count
        (folder / "b.yaml").write_text("x")
        wait_for(lambda: signal.count > before, 5, "an event from the new folder")
    finally:
        watch.stop()


def test_a_file_being_written_is_unfinished_until_closed(tmp_path: Path) -> None:
    """A write in place marks the file unfinished without waking the loop; the close
    clears it and wakes the loop; a writer that never closes is overdue after the wait."""
    signal, stop = Signal(), threading.Event()
    watch = Watch(tmp_path, signal)
    try:
        assert watch.ensure()
        signal.clear()
        with open(tmp_path / "w.yaml", "w") as writer:
            writer.write("domains: [w.example.com]\n")
            writer.flush()
            wait_for(lambda: "w.yaml" in signal.unfinished(5.0)[0], 5, "unfinished")
            _, due = signal.unfinished(5.0)
            assert due is not None and 0 < due <= 5.0
            assert signal.take_overdue(5.0) == []
            assert signal.take_overdue(0.0) == ["w.yaml"]
            writer.write("upstream: {socket: /tmp/w.sock}\n")
            writer.flush()
            wait_for(lambda: "w.yaml" in signal.unfinished(5.0)[0], 5, "unfinished again")
        wait_for(lambda: not signal.unfinished(5.0)[0], 5, "finished on close")
        assert signal.wait_batch(1.0, quiet=0.02, max_wait=0.5, stop=stop)
    finally:
        watch.stop()


def test_a_complete_file_needs_no_quiet_window() -> None:
    """An event of a complete site file ends the batch after the short coalescing wait,
    far below the quiet window."""
    signal, stop = Signal(), threading.Event()
    signal.notify(complete=True)
    started = time.monotonic()
    assert signal.wait_batch(30.0, quiet=10.0, max_wait=20.0, stop=stop, coalesce=0.002)
    assert time.monotonic() - started < 5.0


def test_another_event_keeps_its_quiet_window_beside_a_complete_file() -> None:
    """A site file removed and then a complete one: the removal's quiet window still
    holds (an editor that saves in two steps is seen once, whole)."""
    signal, stop = Signal(), threading.Event()
    started = time.monotonic()
    signal.notify()
    signal.notify(complete=True)
    assert signal.wait_batch(30.0, quiet=0.3, max_wait=20.0, stop=stop, coalesce=0.002)
    assert time.monotonic() - started >= 0.3


def test_saves_are_told_apart_from_removals(tmp_path: Path) -> None:
    """A site file renamed in from a temp name, or closed after writing, is complete; a
    site file renamed away (an editor's backup) or a temp file closed is not; a file moved
    in from another folder is complete, one moved out is not."""
    outside = tmp_path / "outside"
    outside.mkdir()
    tmp_path = tmp_path / "sites"
    tmp_path.mkdir()
    signal = Signal()
    watch = Watch(tmp_path, signal)
    try:
        assert watch.ensure()
        (tmp_path / ".a.yaml.partial").write_text("x")
        wait_for(lambda: signal.count >= 2, 5, "the temp file's events")
        assert signal.completes == 0
        os.replace(tmp_path / ".a.yaml.partial", tmp_path / "a.yaml")
        wait_for(lambda: signal.completes == 1, 5, "the rename in")
        (tmp_path / "b.yaml").write_text("x")
        wait_for(lambda: signal.completes == 2, 5, "the close after writing")
        before = signal.count
        os.replace(tmp_path / "a.yaml", tmp_path / "a.yaml~")
        wait_for(lambda: signal.count > before, 5, "the rename away")
        assert signal.completes == 2
        (outside / "c.yaml").write_text("x")
        os.replace(outside / "c.yaml", tmp_path / "c.yaml")
        wait_for(lambda: signal.completes == 3, 5, "the rename in from another folder")
        before = signal.count
        os.replace(tmp_path / "c.yaml", outside / "c.yaml")
        wait_for(lambda: signal.count > before, 5, "the rename out to another folder")
        assert signal.completes == 3
    finally:
        watch.stop()


def _touched_by(tmp_path: Path, act: Callable[[Path], None], expect: set[str] | None,
                also: Path | None = None) -> frozenset[str] | None:
    """What a real watch on `tmp_path/sites` says `act` touched (None: look at all):
    gathered until it holds `expect` (at most 5 s: the watch's thread may lag under
    load), then 0.2 s more for any name it should not hold."""
    sites = tmp_path / "sites"
    sites.mkdir(exist_ok=True)
    signal = Signal()
    watch = Watch(sites, signal)
    try:
        assert watch.ensure()
        if also is not None:
            watch.also([str(also)])
        wait_for(lambda: signal.count >= 1, 5, "the initial rescan signal")
        assert signal.take_touched() is None, "a new watch looks at everything"
        act(sites)
        seen: set[str] | None = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
                seen is not None and (expect is None or not expect <= seen)):
            taken = signal.take_touched()
            seen = None if taken is None else seen | taken
            time.sleep(0.01)
        time.sleep(0.2)  # the rest of its events
        taken = signal.take_touched()
        return None if seen is None or taken is None else frozenset(seen | taken)
    finally:
        watch.stop()


def test_events_name_the_site_files_they_touched(tmp_path: Path) -> None:
    """A file written, renamed in from outside, or removed: the names, and nothing else;
    a folder made in the sites folder, or an event in a socket folder: everything."""
    outside = tmp_path / "stage.yaml"
    outside.write_text("x")
    assert _touched_by(tmp_path, lambda s: (s / "a.yaml").write_text("x"),
                       {"a.yaml"}) == {"a.yaml"}
    assert _touched_by(tmp_path, lambda s: os.rename(outside, s / "b.yaml"),
                       {"b.yaml"}) == {"b.yaml"}
    assert _touched_by(tmp_path, lambda s: (s / "b.yaml").unlink(), {"b.yaml"}) == {"b.yaml"}

    def save(sites: Path) -> None:  # an atomic save: a temp file renamed over the site
        (sites / "c.yaml.tmp").write_text("x")
        (sites / "c.yaml.tmp").rename(sites / "c.yaml")

    assert _touched_by(tmp_path, save, {"c.yaml.tmp", "c.yaml"}) == {"c.yaml.tmp", "c.yaml"}
    assert _touched_by(tmp_path, lambda s: (s / "sub").mkdir(), None) is None
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    assert _touched_by(tmp_path, lambda s: (sockets / "x.sock").write_text(""), None,
                       also=sockets) is None


def test_a_file_taken_unclosed_counts_as_touched() -> None:
    """A writer that never closes: once its wait is over, the file is read as it is."""
    signal = Signal()
    signal.take_touched()
    signal.writing("a.yaml")
    assert signal.take_overdue(0.0) == ["a.yaml"]
    assert signal.take_touched() == {"a.yaml"}
    assert signal.take_touched() == frozenset()
