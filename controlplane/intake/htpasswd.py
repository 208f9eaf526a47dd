"""Edge I/O: read a site's htpasswd file and judge it before Envoy does.

Envoy's basic_auth filter checks only `{SHA}` entries (`user:{SHA}base64(sha1(pw))`, as
`htpasswd -s` writes them); any other hash would never match, so it is refused here with
the line and the fix. The file is read like certificate files: a regular file, opened
non-blocking, at most `MAX_BYTES`. Envoy reads it itself (a DataSource `filename`), so no
hash is copied into the world-readable route file; its digest goes into the route file
instead, so a changed file is a new route version, which Envoy loads anew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from controlplane.errors import Problem
from controlplane.intake.paths import Fence
from controlplane.intake.reading import read_bounded
from controlplane.site.places import Use

MAX_BYTES = 256 * 1024
FIELD = "basic_auth.htpasswd"
_OTHERS = {"$2": "bcrypt (htpasswd -B)", "$apr1$": "MD5 (htpasswd -m, the default)",
           "$5$": "SHA-256 crypt", "$6$": "SHA-512 crypt"}


def inspect(source: str, path: str, fence: Fence) -> tuple[str | None, list[Problem]]:
    """(digest of the file, []) or (None, problems). The fence judges the path first:
    a refused file is never opened, so its message tells nothing of its content."""
    refused = fence.judge(Use(field=FIELD, kind="read", path=path)).problem
    if refused is not None:
        return None, [Problem(source, FIELD, refused)]
    try:
        content = read_bounded(path, MAX_BYTES)
    except OSError as exc:
        return None, [Problem(source, FIELD, f"{path}: cannot read: {exc.strerror or exc}")]
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None, [Problem(source, FIELD, f"{path}: not UTF-8 text")]
    problems: list[Problem] = []
    users: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        problem = _line(line, number, users)
        if problem is not None:
            problems.append(Problem(source, FIELD, f"{path}:{number}: {problem}"))
    if not users and not problems:
        problems.append(Problem(source, FIELD, f"{path}: no users; add one with"
                                " `htpasswd -s FILE USER`"))
    if problems:
        return None, problems
    return hashlib.sha256(content).hexdigest()[:16], []


def _line(line: str, number: int, users: set[str]) -> str | None:
    user, sep, hashed = line.partition(":")
    if not sep or not user:
        return "not `user:{SHA}hash`; write each user with `htpasswd -s FILE USER`"
    # Lines are told by number only: the file's content (user names, hashes) never goes
    # into a message, whatever file a site names.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in line):
        return "a control character in the line"
    if user in users:
        return "a user listed twice"
    users.add(user)
    if not hashed.startswith("{SHA}"):
        kind = next((name for prefix, name in _OTHERS.items() if hashed.startswith(prefix)),
                    "a hash Envoy does not check")
        return (f"{kind}; Envoy checks only {{SHA}} entries: write the user with"
                " `htpasswd -s FILE USER`")
    try:
        digest = base64.b64decode(hashed.removeprefix("{SHA}"), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 20:
        return "{SHA} is not followed by a base64 SHA-1 digest"
    return None
