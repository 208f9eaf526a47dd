"""The leak guard itself: a real child process and a real thread are seen, and nothing
once they have ended."""

from __future__ import annotations

import subprocess
import threading

from tests import leaks


def test_the_guard_sees_a_leaked_process_and_a_thread() -> None:
    threads, processes = leaks.threads(), leaks.descendants()
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="left-behind", daemon=True)
    thread.start()
    child = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        left = leaks.leaked(threads, processes, grace_s=0.2)
        assert f"process {child.pid}: sleep 60" in left
        assert "thread 'left-behind'" in left
    finally:
        child.kill()
        child.wait()
        release.set()
        thread.join()
    assert leaks.leaked(threads, processes, grace_s=2.0) == []
