"""Edge I/O for every file the daemon writes (Envoy's files, the status file, the
last-good store): atomic, idempotent publication of one file at a time, its folders,
and the clean-up of what a killed process left.

Envoy reloads a dynamic file only when a new file is renamed over it, and its watch
follows the folder's inode, so: write a temp file in the same folder, set its mode on
the handle, fsync, `os.replace`, fsync the folder (`durable=False` leaves the syncs to
a caller that writes a batch). The folder itself is never replaced. Unchanged content
is not rewritten. On any error the temp file is removed and the old file stays as it
was. The order of Envoy's files is the Publisher's business (`envoy/publishing`).

One process writes a folder at a time: `hold_lock` takes an exclusive `flock` on
`FOLDER/.controlplane.lock` (Envoy ignores the file) for as long as the writer lives.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from controlplane.errors import FolderBusy, OutputError

OUTPUT_MODE = 0o644
STATE_MODE = 0o600
TEMP_PREFIX = ".tmp-"
LOCK_FILE = ".controlplane.lock"


def write_atomic(path: Path, data: bytes, mode: int = OUTPUT_MODE, *, force: bool = False,
                 durable: bool = True) -> bool:
    """Publish `data` at `path`; False when the file already held exactly these bytes.
    `durable=False` skips the fsyncs (the caller syncs the folder once for a batch), and
    so does a folder in memory (`in_memory`); the rename is atomic either way."""
    if not force and _same(path, data):
        return False
    folder = path.parent
    durable = durable and not in_memory(folder)
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX + path.name + ".")
    except OSError as exc:
        raise OutputError(f"{path}: cannot create a temp file: {_describe(exc)}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise OutputError(f"{path}: cannot write: {_describe(exc)}") from exc
    if durable:
        sync_folder(folder)
    return True


def _same(path: Path, data: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(data) + 1) == data
    except OSError:
        return False


MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
_memory: dict[int, bool] = {}


def in_memory(folder: Path) -> bool:
    """The folder is on a filesystem in memory (tmpfs, ramfs: `/dev/shm`, an emptyDir
    with `medium: Memory`), whose files do not outlive a reboot however they are
    synced: an fsync there buys nothing. Known per device (`st_dev`), from the kernel's
    mount table; unknown counts as a disk."""
    try:
        device = os.stat(folder).st_dev
    except OSError:
        return False
    if device not in _memory:
        _memory[device] = _filesystem_of(device) in MEMORY_FILESYSTEMS
    return _memory[device]


def _filesystem_of(device: int) -> str:
    """The filesystem type of a device, from /proc/self/mountinfo ("" if not found)."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 2 and fields[2] == wanted and " - " in line:
                return line.split(" - ", 1)[1].split()[0]
    return ""


def sync_folder(folder: Path) -> None:
    """fsync a folder, so the renames in it survive a crash (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"not writable ({exc.strerror})"
    return exc.strerror or str(exc)


def ensure_folder(path: Path, mode: int = 0o755) -> None:
    """Create the folder if missing, with exactly `mode` (the umask does not narrow it:
    Envoy, another user, reads the out folder); never replace an existing one."""
    try:
        path.mkdir(parents=True, mode=mode)
    except FileExistsError:
        if not path.is_dir():
            raise OutputError(f"{path}: exists and is not a folder; remove it or choose"
                              " another path") from None
        return
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the folder: {_describe(exc)}; create it"
                          " or give a path this user may write") from exc
    with contextlib.suppress(OSError):
        os.chmod(path, mode)


def ensure_private_folder(path: Path) -> bool:
    """A folder only this user may enter (0700), made so if it was wider; True when an
    existing folder had to be narrowed."""
    ensure_folder(path, 0o700)
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o700)
            return True
    except OSError as exc:
        raise OutputError(f"{path}: cannot make the folder private (0700): {_describe(exc)};"
                          " it must belong to the user the daemon runs as") from exc
    return False


def remove_stale_temps(folder: Path) -> None:
    """Remove temp files a killed process left behind (only ours, by prefix)."""
    with contextlib.suppress(OSError), os.scandir(folder) as listing:
        for item in listing:
            if item.name.startswith(TEMP_PREFIX) and item.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(item.path)


def remove_scratch(folder: Path) -> None:
    """Empty a scratch folder that only this program writes into (left by a kill)."""
    with contextlib.suppress(OSError), os.scandir(folder) as listing:
        for item in listing:
            if item.is_dir(follow_symlinks=False):
                shutil.rmtree(item.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(item.path)


@contextlib.contextmanager
def hold_lock(folder: Path, purpose: str) -> Iterator[None]:
    """Own `folder` while inside: an exclusive flock on its lock file, which records our
    pid and purpose for the error another process gets. The kernel drops the lock when
    the process dies, however it dies; the file itself stays (removing it would race).
    The lock is held on a read-only handle: a file open for writing would keep the
    folder's filesystem from being remounted read-only."""
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     OUTPUT_MODE)
    except OSError as exc:
        raise OutputError(f"{path}: cannot open the lock file: {_describe(exc)}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise FolderBusy(f"{folder}: another controlplane owns this folder (pid and"
                             f" command: {holder}); stop it first, or use another --out"
                             ) from None
        with contextlib.suppress(OSError):  # a read-only folder: locked, not labelled
            label = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.write(label, f"{os.getpid()} {purpose}\n".encode())
            finally:
                os.close(label)
        yield
    finally:
        os.close(fd)
