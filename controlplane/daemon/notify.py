"""systemd's notify protocol, spoken directly: one datagram to `$NOTIFY_SOCKET`.

`READY=1` once the first pass is confirmed, `RELOADING=1` (with `MONOTONIC_USEC`) on
SIGHUP, `STOPPING=1` at the end, `STATUS=...` for `systemctl status`, and `WATCHDOG=1`
beats when the unit sets `WatchdogSec` (`$WATCHDOG_USEC`, for `$WATCHDOG_PID` if set).
A name starting with `@` is an abstract socket. Without `$NOTIFY_SOCKET` every call is
a no-op; a failed send is reported, never raised: systemd must not take the loop down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + name[1:] if name.startswith("@") else name
        self.watchdog_s = _watchdog_interval(env)
        """How often to beat (half of WatchdogSec), or None when there is no watchdog."""
        self.error: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=VALUE` lines; False (and `error` set) when it fails."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                # Never wait: a manager that stops reading (a full socket buffer) must not
                # hold the loop, nor its stop on SIGTERM; a beat lost is reported instead.
                sock.send("\n".join(fields).encode(), socket.MSG_DONTWAIT)
        except OSError as exc:
            self.error = f"NOTIFY_SOCKET {self.address.lstrip(chr(0))}: {exc.strerror or exc}"
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_us}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.watchdog_s is not None and self.send("WATCHDOG=1")


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2_000_000
