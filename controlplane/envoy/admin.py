"""Reading Envoy's admin stats over its Unix socket, and confirming a written version.

A step is accepted when `update_success` moved past the value read before the rename
and `version_text` equals the version written; or, when the file replaced was confirmed
(`settled`), by `version_text` alone. `/config_dump` versions are not used: they change
on partially applied rejected updates.

Every request is bounded in total time (REQUEST_TIMEOUT_S for connect, send and the
whole answer: a socket that drips its answer a byte at a time does not reset the clock)
and in bytes (`admin_max_bytes`). Each failure has its own class: nothing listening
(EnvoyRefused), no complete answer in time (EnvoyTimeout), an answer that is not
Envoy's (EnvoyBadAnswer). None of them blocks or escapes as anything else.
"""

from __future__ import annotations

import collections
import http.client
import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.errors import (
    EnvoyBadAnswer,
    EnvoyRefused,
    EnvoyRejected,
    EnvoyTimeout,
    EnvoyUnavailable,
)
from controlplane.settings import Settings

REQUEST_TIMEOUT_S = 1.0
POLL_S = 0.005
MAX_POLL_S = 0.08
"""Confirmation polls start at 5 ms (small files confirm in 4-8 ms) and back off to this:
a /stats read costs Envoy ~15 ms of its main thread at 1,000 clusters, ~150 at 10,000."""
SETTLED_COUNTERS_EVERY = 3
"""A settled confirmation reads the counters (to see a rejection) only on every third
poll whose readout has not moved: an accepted file needs none."""


@dataclass(frozen=True, slots=True)
class Counters:
    """One xDS subscription's counters at one moment."""

    success: int = 0
    rejected: int = 0
    failure: int = 0
    version: str = ""


ALREADY_WRITTEN = Counters(success=-1, rejected=1 << 62, failure=1 << 62)


def stat_prefixes(settings: Settings) -> dict[str, str]:
    """The stats prefix of each file's subscription, by file kind."""
    return {
        "cds": "cluster_manager.cds",
        "lds": "listener_manager.lds",
        "rds": f"http.{settings.stat_prefix}.rds.{settings.route_config_name}",
    }


class _BoundedSocket(socket.socket):
    """A Unix stream socket whose reads share one deadline and one byte budget."""

    deadline = 0.0
    budget = 0

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete answer in time")
        self.settimeout(remaining)
        count = super().recv_into(buffer, nbytes, flags)
        self.budget -= count
        if self.budget < 0:
            raise _TooBig
        return count


class _TooBig(Exception):
    """The answer went past the byte budget."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, deadline: float, budget: int) -> None:
        super().__init__("localhost")
        self._path = path
        self._deadline = deadline
        self._budget = budget

    def connect(self) -> None:
        sock = _BoundedSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.deadline, sock.budget = self._deadline, self._budget
        self.sock = sock
        sock.settimeout(max(0.001, self._deadline - time.monotonic()))
        sock.connect(str(self._path))


class AdminClient:
    """Envoy's admin interface on a Unix socket."""

    def __init__(self, path: Path, settings: Settings,
                 timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.path = path
        self._prefixes = stat_prefixes(settings)
        self._max_bytes = settings.admin_max_bytes
        self._timeout = timeout
        self.requests: collections.Counter[str] = collections.Counter()
        """Requests made, by kind (`counters`, `versions`, or the path): what a step
        costs Envoy's main thread, for tests and measurements."""

    def get(self, target: str) -> bytes:
        """The body of a 200 answer to `GET target`, within the time and byte bounds."""
        where = f"admin socket {self.path}: GET {target.split('?')[0]}"
        self.requests[_request_kind(target)] += 1
        connection = _UnixConnection(self.path, time.monotonic() + self._timeout,
                                     self._max_bytes)
        try:
            connection.request("GET", target)
            response = connection.getresponse()
            body = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise EnvoyRefused(f"{where}: nothing listens ({exc.strerror})") from exc
        except TimeoutError as exc:
            raise EnvoyTimeout(f"{where}: no complete answer within {self._timeout:g}s") from exc
        except _TooBig:
            raise EnvoyBadAnswer(f"{where}: the answer is over {self._max_bytes} bytes") from None
        except (OSError, http.client.HTTPException) as exc:
            raise EnvoyBadAnswer(f"{where}: not an HTTP answer ({type(exc).__name__}:"
                                 f" {str(exc)[:100]})") from exc
        finally:
            connection.close()
        if response.status != 200:
            raise EnvoyBadAnswer(f"{where}: HTTP {response.status}")
        return body

    def _stats(self, query: str) -> dict[str, object]:
        """`/stats?format=json&...` as name -> value; a body of the wrong shape is a
        bad answer, never a crash."""
        body = self.get(f"/stats?{query}")
        try:
            stats = json.loads(body)["stats"]
            return {s["name"]: s["value"] for s in stats if isinstance(s, dict) and "name" in s}
        except (ValueError, KeyError, TypeError) as exc:
            raise EnvoyBadAnswer(f"admin /stats: not Envoy's stats JSON: {exc!r:.100}") from exc

    def certificate_serials(self) -> set[str]:
        """The serial numbers (hex, lower case, no leading zeros) of the certificates
        Envoy holds (`/certs`): a renewed certificate is served once its serial is here."""
        try:
            found = json.loads(self.get("/certs"))
            return {format(int(item["serial_number"], 16), "x")
                    for entry in found.get("certificates", ())
                    for item in entry.get("cert_chain", ()) if item.get("serial_number")}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EnvoyBadAnswer(f"admin /certs: not Envoy's certificates JSON: {exc!r:.100}"
                                 ) from exc

    def counters(self) -> dict[str, Counters]:
        """Counters of the CDS, LDS and RDS subscriptions (zeros before the first load)."""
        pattern = self._pattern()
        # `usedonly`: stats never written are left out (and read as 0 / "" below, which is
        # what they hold). Envoy matches the filter against every stat on its main thread,
        # the one applying xDS: at 1,000 clusters a query costs ~60 ms, ~15 ms with this.
        query = urllib.parse.urlencode({"format": "json", "usedonly": "", "filter": pattern})
        values = self._stats(query)
        return {kind: _counters(values, prefix) for kind, prefix in self._prefixes.items()}

    def versions(self) -> dict[str, str]:
        """`version_text` of each subscription: text readouts only, which Envoy lists far
        faster than counters (3,000 clusters: ~5 ms against ~50 ms)."""
        query = urllib.parse.urlencode({"format": "json", "type": "TextReadouts",
                                        "filter": self._pattern()})
        values = self._stats(query)
        return {kind: str(values.get(f"{prefix}.version_text", ""))
                for kind, prefix in self._prefixes.items()}

    def listener_errors(self) -> dict[str, str]:
        """Envoy's reason for each listener its last LDS update failed to add, by name
        (`cannot bind '0.0.0.0:8443': Address already in use`): the `error_state` of
        `/config_dump?resource=dynamic_listeners`, which only Envoy's log has otherwise."""
        body = self.get("/config_dump?resource=dynamic_listeners")
        try:
            configs = json.loads(body).get("configs", [])
            return {str(c["name"]): str(c["error_state"].get("details", ""))[:300]
                    for c in configs if isinstance(c, dict) and "name" in c
                    and isinstance(c.get("error_state"), dict)}
        except (ValueError, AttributeError, TypeError) as exc:
            raise EnvoyBadAnswer(f"admin /config_dump: not Envoy's JSON: {exc!r:.100}") from exc

    def _pattern(self) -> str:
        return "^(" + "|".join(p.replace(".", r"\.") for p in self._prefixes.values()) + r")\."

    def confirm(self, kind: str, before: Counters, version: str, timeout: float,
                stop: threading.Event | None = None, poll_s: float = POLL_S,
                max_poll_s: float = MAX_POLL_S, *, settled: bool = False) -> Counters:
        """Wait until Envoy accepted `version` of one file; raise on rejection or timeout.

        `before` is read before the rename; pass `ALREADY_WRITTEN` to re-check a file
        written in an earlier pass (then only `version_text` has to match). `settled`:
        `version_text` can show `version` only if Envoy took this file, and `before` may
        be from an earlier read (the Publisher's `_settled` and `twinning` say why): the
        readout alone confirms, the counters only tell a rejection. Returns the
        counters last read (when none was, `before`'s with the version seen). `poll_s`
        and `max_poll_s`: the first pause between reads and the longest (an Envoy that
        serves nobody, the validation twin, is asked more often)."""
        deadline = time.monotonic() + timeout
        waiter = stop if stop is not None else threading.Event()
        pause, polls = poll_s, 0
        while True:
            try:
                polls += 1
                now = self._poll(kind, before, version, polls, settled)
            except EnvoyRefused:
                raise
            except EnvoyUnavailable:
                # Nothing listens: Envoy is down, say so now. A slow answer: Envoy's main
                # thread is busy applying (5 s for 10,000 clusters): ask again. Stopping:
                # at once (one request is bounded by REQUEST_TIMEOUT_S).
                if waiter.is_set() or time.monotonic() >= deadline:
                    raise
                waiter.wait(pause)
                continue
            if now.version == version and (settled or now.success > before.success):
                return now
            if now.rejected > before.rejected or now.failure > before.failure:
                raise EnvoyRejected(f"Envoy rejected {kind} version {version} (rejected"
                                    f" {now.rejected}, failure {now.failure}); its log says why")
            if time.monotonic() >= deadline or waiter.is_set():
                raise EnvoyTimeout(f"Envoy did not confirm {kind} version {version}"
                                   f" within {timeout:g}s (it serves {now.version!r})")
            waiter.wait(pause)
            pause = min(pause * 2, max_poll_s)  # each /stats read costs Envoy's main thread

    def _poll(self, kind: str, before: Counters, version: str, polls: int,
              settled: bool) -> Counters:
        """The cheap version read every time. The counters (success, rejections): once
        the version matches and every fourth poll; with `settled`, only every third poll
        whose readout has not moved. Counters below `before` mean an Envoy that began
        counting again (a restart): they say nothing of this file, so only the readout
        counts, and without it the confirmation times out."""
        current = self.versions()[kind]
        if settled:
            skip = current == version or polls % SETTLED_COUNTERS_EVERY
        else:
            skip = current != version and polls % 4
        now = None if skip else self.counters()[kind]
        if now is None or (settled and _restarted(now, before)):
            return Counters(success=before.success, rejected=before.rejected,
                            failure=before.failure, version=current)
        return now


def _restarted(now: Counters, before: Counters) -> bool:
    """Counters never fall in one Envoy (nor in one subscription): a new one counts."""
    return (now.success < before.success or now.rejected < before.rejected
            or now.failure < before.failure)


def _request_kind(target: str) -> str:
    path = target.split("?")[0]
    if path != "/stats":
        return path
    return "versions" if "type=TextReadouts" in target else "counters"


def _counters(values: dict[str, object], prefix: str) -> Counters:
    def number(name: str) -> int:
        value = values.get(f"{prefix}.{name}", 0)
        return value if isinstance(value, int) else 0

    return Counters(success=number("update_success"), rejected=number("update_rejected"),
                    failure=number("update_failure"),
                    version=str(values.get(f"{prefix}.version_text", "")))
