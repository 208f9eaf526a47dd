"""The change signal, and the watchdog handler that only signals.

The handler does no work: it records what happened (for the sites folder, the names its
file events touched) and wakes the loop, so an exception never kills the observer
thread; only mutation events are subscribed to, so reading the files never wakes us.

`Signal.wait_batch` is the debounce: after the first event, wait until the folder has
been quiet for `quiet` seconds, never longer than `max_wait`. An event that says a site
file is complete (closed after writing, or renamed in: the atomic save) needs no quiet
window, only `coalesce` (1-2 ms, one tool's events); any other event keeps its window.
A file written in place (IN_MODIFY) is unfinished until closed (`Signal.unfinished`):
a pass keeps its previous version meanwhile, for `max_wait` at most.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from controlplane.intake.loading import is_site_name

MAX_ALSO = 8
"""At most this many socket folders are watched besides the sites folder."""
MAX_TOUCHED = 1000
"""Names kept for a targeted pass; past this many, the pass is full."""
MUTATIONS = [
    FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent, FileModifiedEvent,
    DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]


class Signal:
    """Set by the watcher thread, waited on by the loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._first: float | None = None
        self._last: float | None = None
        """The last event that needs the quiet window (None: none in this batch)."""
        self._last_complete: float | None = None
        """The last event of a complete site file."""
        self._writing: dict[str, float] = {}
        """File name -> when a write without a close was first seen."""
        self._touched: set[str] | None = set()
        """Sites folder names events touched since `take_touched`; None: maybe more."""
        self.count = 0
        self.completes = 0
        """Events of complete site files among `count` (tests read them)."""

    def notify(self, complete: bool = False, names: Iterable[str] | None = None) -> None:
        """Something changed; `complete`: a site file is whole now (closed, renamed in).
        `names`: the entries of the sites folder it changed; None, it may change more."""
        with self._lock:
            if names is None or self._touched is None:
                self._touched = None
            else:
                self._touched.update(names)
                if len(self._touched) > MAX_TOUCHED:  # a full pass costs less by then
                    self._touched = None
            now = time.monotonic()
            if self._first is None:
                self._first = now
            if complete:
                self._last_complete = now
                self.completes += 1
            else:
                self._last = now
            self.count += 1
        self._event.set()

    def wait_batch(self, timeout: float, quiet: float, max_wait: float,
                   stop: threading.Event, coalesce: float | None = None) -> bool:
        """True when a batch of events is complete; False on timeout or stop.
        `coalesce` (default `quiet`): the wait after an event of a complete file."""
        if not self._event.wait(timeout) or stop.is_set():
            return False
        after_complete = quiet if coalesce is None else coalesce
        while not stop.is_set():
            with self._lock:
                first, last, complete = self._first, self._last, self._last_complete
            quiet_until = max(last + quiet if last is not None else 0.0,
                              complete + after_complete if complete is not None else 0.0)
            if first is not None:
                quiet_until = min(quiet_until, first + max_wait)
            remaining = quiet_until - time.monotonic()
            if remaining <= 0:
                break
            stop.wait(remaining)
        self.clear()
        return not stop.is_set()

    def writing(self, name: str) -> None:
        """`name` is being written in place (no pass is needed until it is closed)."""
        with self._lock:
            self._writing.setdefault(name, time.monotonic())

    def finished(self, name: str) -> None:
        """`name` was closed, replaced or removed: whatever it holds now is complete."""
        with self._lock:
            self._writing.pop(name, None)

    def unfinished(self, max_wait: float) -> tuple[frozenset[str], float | None]:
        """The files written and not closed for less than `max_wait` seconds, and in how
        many seconds the first of them is due anyway (None: none is)."""
        now = time.monotonic()
        with self._lock:
            waiting = {n: max_wait - (now - t) for n, t in self._writing.items()
                       if now - t < max_wait}
        return frozenset(waiting), min(waiting.values(), default=None)

    def take_touched(self) -> frozenset[str] | None:
        """The names events touched since the last call (None: look at everything)."""
        with self._lock:
            touched, self._touched = self._touched, set()
        return None if touched is None else frozenset(touched)

    def take_overdue(self, max_wait: float) -> list[str]:
        """The files waited for `max_wait` seconds without a close: taken as they are."""
        now = time.monotonic()
        with self._lock:
            overdue = sorted(n for n, t in self._writing.items() if now - t >= max_wait)
            for name in overdue:
                del self._writing[name]
            if self._touched is not None:
                self._touched.update(overdue)  # taken as they are now: read them again
        return overdue

    def clear(self) -> None:
        """Forget what was signalled so far (a full pass is about to look anyway)."""
        with self._lock:
            self._first = self._last = self._last_complete = None
            self._event.clear()

    def wake(self, everything: bool = False) -> None:
        """Wake the loop without an event (stop, tests); `everything`: the next pass
        must look at every file (a certificate installed, events lost)."""
        if everything:
            with self._lock:
                self._touched = None
        self._event.set()


class Handler(FileSystemEventHandler):
    def __init__(self, signal: Signal, folder: str | None = None) -> None:
        """`folder`: the sites folder, whose file events name what they touched; None, a
        socket folder, where any event may move a path some site uses."""
        self._signal = signal
        self._folder = folder

    def on_any_event(self, event: FileSystemEvent) -> None:
        source = os.path.basename(os.fsdecode(event.src_path))
        if isinstance(event, FileModifiedEvent):
            self._signal.writing(source)
            return  # the close (or the bounded wait) starts the pass
        complete = isinstance(event, FileClosedEvent) and is_site_name(source)
        names = self._names(event)
        if isinstance(event, FileMovedEvent):
            target = os.path.basename(os.fsdecode(event.dest_path))
            self._signal.finished(target)
            complete = is_site_name(target) and not is_site_name(source)
        if isinstance(event, FileClosedEvent | FileDeletedEvent | FileMovedEvent):
            self._signal.finished(source)
        self._signal.notify(complete, names)

    def _names(self, event: FileSystemEvent) -> list[str] | None:
        """The sites folder's entries a file event touched (None: not only those)."""
        if self._folder is None or event.is_directory:
            return None
        paths = [os.fsdecode(event.src_path)]
        if isinstance(event, FileMovedEvent):
            paths.append(os.fsdecode(event.dest_path))
        inside = [os.path.basename(p) for p in paths if os.path.dirname(p) == self._folder]
        # A move from or to another folder has "" (or that folder) on the other side.
        return inside if len(inside) == len([p for p in paths if p]) else None


class Watch:
    """A non-recursive watch on the sites folder that survives the folder being removed,
    replaced (a new inode) or missing at start; falls back to polling when inotify is
    out of watches or instances."""

    def __init__(self, folder: Path, signal: Signal, poll_s: float = 1.0) -> None:
        self._folder = folder
        self._signal = signal
        self._poll_s = poll_s
        self._observer: BaseObserver | None = None
        self._identity: tuple[int, int] | None = None
        self._also: dict[str, ObservedWatch] = {}
        self.fallback_reason: str | None = None

    def ensure(self) -> bool:
        """(Re)start the watch if the folder appeared or changed; True while watched."""
        identity = _identity(self._folder)
        if identity == self._identity and self._observer is not None:
            return True
        self.stop()
        if identity is None:
            return False
        self._observer = self._start()
        self._identity = identity
        self._signal.notify()  # the folder is new to us: rescan it
        return True

    def _start(self) -> BaseObserver:
        handler = Handler(self._signal, str(self._folder))
        try:
            from watchdog.observers.inotify import InotifyObserver

            # Full events: a file renamed in from another folder is a move (from ""), not
            # a creation, so it counts as complete; one renamed out, a move to "".
            observer: BaseObserver = InotifyObserver(generate_full_events=True)
            observer.schedule(handler, str(self._folder), recursive=False,
                              event_filter=MUTATIONS)
            _OVERFLOW.signals.add(self._signal)
            observer.start()
            return observer
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EMFILE, errno.ENOMEM):
                raise
            self.fallback_reason = f"inotify: {exc.strerror}; polling every {self._poll_s:g}s"
        poller = PollingObserver(timeout=self._poll_s)
        poller.schedule(handler, str(self._folder), recursive=False, event_filter=MUTATIONS)
        poller.start()
        return poller

    def also(self, folders: Iterable[str]) -> None:
        """Watch these folders too (the socket folders in use, at most `MAX_ALSO`, each
        costs an inotify instance): an event there starts a pass, which resolves every
        socket path again, so a symlink planted in one is judged at once, not at the
        next resync. A folder that cannot be watched is left to the resync."""
        # Never the sites folder again, by any name: one inode is one inotify watch, and
        # unscheduling it as a page folder would end the sites folder's own watch.
        wanted = set([f for f in folders if os.path.isdir(f)
                      and _identity(Path(f)) != self._identity][:MAX_ALSO])  # in their order
        if self._observer is None:
            return
        for folder in set(self._also) - wanted:
            self._observer.unschedule(self._also.pop(folder))
        for folder in sorted(wanted - set(self._also)):
            try:
                self._also[folder] = self._observer.schedule(
                    Handler(self._signal), folder, recursive=False, event_filter=MUTATIONS)
            except OSError:
                continue

    def stop(self) -> None:
        _OVERFLOW.signals.discard(self._signal)
        self._also = {}
        observer, self._observer, self._identity = self._observer, None, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class _Overflow(logging.Handler):
    """The inotify queue overflowed: watchdog drops what was pending and only logs it,
    so each watch's next pass looks at every file."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.signals: set[Signal] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Inotify queue overflowed"):
            for signal in list(self.signals):
                signal.wake(everything=True)


_OVERFLOW = _Overflow()
logging.getLogger("watchdog.observers.inotify_c").addHandler(_OVERFLOW)
