"""Envoy's verdicts kept across restarts: the daemon's `STATE/verdicts.json`.

Validating 1,000 unchanged sites again at every start costs an `envoy --mode validate` of
the whole config (0.25-0.35 s; 4-5 s at 10,000). The render digests that passed are
kept in one file, under a fingerprint of the judge: the Envoy binary (resolved path,
size, mtime), controlplane's version and source, and the settings that shape what Envoy
is given. A verdict of another judge is not this judge's: a different fingerprint starts
empty. So does a file that is corrupt, too large, of the wrong shape, not a regular
file of ours, or a symlink (never followed): one warning, never a crash; the cost of an
empty start is one validation.

The file is bounded (`kept`): the digests of the current candidates, then the most
recently passed others, at most `MAX_VERDICTS`. It is rewritten, by rename and without
fsync (losing it costs one validation), only when new digests passed.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

import structlog

import controlplane
from controlplane.errors import OutputError
from controlplane.settings import Settings
from controlplane.writing import STATE_MODE, write_atomic

log = structlog.get_logger("controlplane")
VERDICTS_FILE = "verdicts.json"
FORMAT = 1
MAX_VERDICTS = 100_000
"""Digests kept at most, whatever the site count (about 19 bytes each in the file)."""
PER_SITE = 4
"""Digests kept per current candidate: each site's own, and a few of its past versions
(an edit undone, a last good version served again) for the next start."""
MIN_KEPT = 1000
MAX_BYTES = 4 * 1024 * 1024
"""A larger file is not read: `MAX_VERDICTS` digests take about 2 MB."""
_DIGEST = re.compile(r"[0-9a-f]{1,64}")
UNSHAPING = frozenset({
    "log_level", "log_format", "debounce_quiet_s", "debounce_complete_s", "debounce_max_s",
    "resync_s", "retry_s", "retry_max_s", "write_close_wait_s", "unconfirmed_gap_s",
    "confirm_timeout_s", "admin_max_bytes",
})
"""Settings that only time or log the daemon, or bound its admin reads: they shape
neither a site's render (its digest) nor the listeners and files Envoy judges beside it,
so changing one keeps the verdicts (a test pins that for each)."""


def judge(settings: Settings, binary: Path) -> str:
    """The fingerprint of everything that decides a verdict besides the render digest."""
    try:
        found = os.stat(binary)
        envoy = [os.path.realpath(binary), found.st_size, found.st_mtime_ns]
    except OSError:
        envoy = [str(binary), "missing"]
    shaping = settings.model_dump(mode="json", exclude=set(UNSHAPING))
    text = json.dumps({"envoy": envoy, "controlplane": [controlplane.__version__, _source()],
                       "settings": shaping}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _source() -> str:
    """A digest of controlplane's own code: the version does not change with every
    change to the listeners and files built around the candidates (2-3 ms, once)."""
    root = Path(controlplane.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root)}\x00".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class VerdictFile:
    """The digests that passed, as kept for one judge in one file."""

    def __init__(self, path: Path, judge_print: str) -> None:
        self.path = path
        self._judge = judge_print
        self._said_unwritable = False

    def load(self) -> list[str]:
        """The digests kept for this judge, oldest first; [] for another judge's, or a
        file that is missing or unusable (with one warning)."""
        try:
            data = _read(self.path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            reason = "a symlink (not followed)" if exc.errno == errno.ELOOP else (
                exc.strerror or str(exc))
            log.warning("verdicts.ignored", file=str(self.path), reason=reason,
                        detail="every site is validated again")
            return []
        found = _parse(data)
        if isinstance(found, str):
            log.warning("verdicts.ignored", file=str(self.path), reason=found,
                        detail="every site is validated again")
            return []
        judge_print, digests = found
        if judge_print != self._judge:
            log.info("verdicts.other_judge", file=str(self.path),
                     detail="the Envoy binary, controlplane or the settings changed;"
                            " every site is validated again")
            return []
        return digests

    def save(self, digests: Iterable[str]) -> None:
        """Replace the file; a failure is said once and costs only a validation later."""
        data = json.dumps({"format": FORMAT, "judge": self._judge, "passed": list(digests)},
                          separators=(",", ":")).encode() + b"\n"
        try:
            write_atomic(self.path, data, STATE_MODE, force=True, durable=False)
        except OutputError as exc:
            if not self._said_unwritable:
                self._said_unwritable = True
                log.warning("verdicts.unwritable", error=str(exc),
                            detail="the next start validates every site again")


def kept(passed: dict[str, None], current: set[str]) -> dict[str, None]:
    """`passed` (oldest first) bounded: the current candidates' digests stay, then the
    most recently passed others, `PER_SITE` per current candidate (at least `MIN_KEPT`,
    at most `MAX_VERDICTS` in all)."""
    limit = min(MAX_VERDICTS, max(MIN_KEPT, PER_SITE * len(current)))
    if len(passed) <= limit:
        return passed
    others = [d for d in passed if d not in current]
    spare = max(0, limit - (len(passed) - len(others)))
    dropped = set(others[:len(others) - spare])
    survivors = [d for d in passed if d not in dropped]
    return dict.fromkeys(survivors[len(survivors) - limit:])


def _read(path: Path) -> bytes:
    """The file's bytes: never through a symlink (O_NOFOLLOW), never blocking (a FIFO),
    only a regular file of this user's, at most `MAX_BYTES`."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise OSError(0, "not a regular file")
        if found.st_uid != os.geteuid():
            raise OSError(0, f"owned by uid {found.st_uid}, not the daemon's")
        if found.st_size > MAX_BYTES:
            raise OSError(0, f"larger than {MAX_BYTES} bytes")
        chunks, size = [], 0
        while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_BYTES:
            raise OSError(0, f"grew past {MAX_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _parse(data: bytes) -> tuple[str, list[str]] | str:
    """(judge, digests) of a file's bytes, or why they are not a verdicts file."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return "not JSON"
    if not isinstance(document, dict) or set(document) != {"format", "judge", "passed"}:
        return "not a verdicts file"
    judge_print, digests = document["judge"], document["passed"]
    if document["format"] != FORMAT or not isinstance(judge_print, str):
        return f"not format {FORMAT}"
    if not isinstance(digests, list) or len(digests) > MAX_VERDICTS:
        return f"`passed` is not a list of at most {MAX_VERDICTS}"
    if not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in digests):
        return "`passed` holds something other than digests"
    return judge_print, digests
