"""What a test leaves behind: threads of this process and processes below it.

The autouse guards in `conftest.py` take both before each test (and each module) and
fail it when, after a grace period for things that are ending, more remain than they
found. A process a long-lived helper owns (`own`: an upstream, an Envoy or a daemon of
a module's node, which a test may start) is left to the module's guard, which runs
after the module's fixtures have stopped everything. Zombies (exited, not reaped) hold
no resources and are not counted.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

GRACE_S = 5.0
OWNED: set[int] = set()
"""Processes a helper owns until it stops them (see the module docstring)."""


def own(pid: int) -> None:
    OWNED.add(pid)


def disown(pid: int) -> None:
    OWNED.discard(pid)


def descendants(root: int | None = None, *, owned: bool = True) -> dict[int, str]:
    """Live processes below `root` (this process): pid -> command line; without the
    subtrees of `OWNED` processes when `owned` is False."""
    root = os.getpid() if root is None else root
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] == "Z":
            continue
        parents[int(entry.name)] = int(fields[1])
        commands[int(entry.name)] = command
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found and (owned or pid not in OWNED):
                found[pid] = commands[pid]
                frontier.append(pid)
    return found


def threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def leaked(before_threads: set[threading.Thread], before_processes: dict[int, str],
           grace_s: float = GRACE_S, *, owned: bool = True) -> list[str]:
    """What is still there after `grace_s` that was not before (empty when clean);
    `owned` False leaves out what `OWNED` processes hold."""
    deadline = time.monotonic() + grace_s
    while True:
        extra_threads = [t for t in threads() - before_threads if t.is_alive()]
        extra = {pid: cmd for pid, cmd in descendants(owned=owned).items()
                 if pid not in before_processes}
        if not (extra_threads or extra) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return ([f"thread {t.name!r}" for t in extra_threads]
            + [f"process {pid}: {cmd[:200]}" for pid, cmd in sorted(extra.items())])
