"""Signal handling for the daemon and the demo: which signal does what, and every one
is logged. A handler only starts a thread that does the work (see `_handlers`); the
previous handlers come back when the context ends.

    SIGTERM, SIGINT, SIGQUIT  stop gracefully
    SIGHUP                    reload the settings and run a full pass
    SIGUSR1, SIGUSR2          logged and ignored (never a silent end)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import structlog

log = structlog.get_logger("controlplane")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
NOTED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call `stop`; the previous handlers come back on exit."""
    with _handlers({s: stop for s in (signal.SIGTERM, signal.SIGINT)}):
        yield


@contextlib.contextmanager
def daemon_signals(stop: Callable[[], None], reload: Callable[[], None]) -> Iterator[None]:
    """The daemon's signals: stop, reload, and the rest logged, never silent."""
    actions: dict[signal.Signals, Callable[[], None]] = {
        **{s: _logged(s, stop) for s in STOP_SIGNALS},
        signal.SIGHUP: _logged(signal.SIGHUP, reload),
        **{s: _logged(s, lambda: None, "ignored") for s in NOTED_SIGNALS}}
    with _handlers(actions):
        yield


def _logged(signum: signal.Signals, then: Callable[[], None],
            effect: str = "") -> Callable[[], None]:
    def act() -> None:
        log.info("signal.received", signal=signum.name, effect=effect or then.__name__)
        then()
    return act


@contextlib.contextmanager
def _handlers(actions: dict[signal.Signals, Callable[[], None]]) -> Iterator[None]:
    def handle(signum: int, frame: FrameType | None) -> None:
        # Not the action here: a handler runs between two bytecodes of the main thread,
        # which may hold the very lock that Event.set() (or logging) takes. A thread
        # takes it safely.
        threading.Thread(target=actions[signal.Signals(signum)], name="signal").start()

    previous = {s: signal.signal(s, handle) for s in actions}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
