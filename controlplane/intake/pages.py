"""Edge I/O: read a site's error pages and judge them before Envoy serves them.

A page is read like a certificate file (`paths.read_bounded`: a regular file, opened
non-blocking, at most `MAX_BYTES`) and inlined into the route file, so Envoy opens no
file a site names. Where it lies is judged on the resolved path at every pass
(`paths.Fence`, kind `page`: under the sites folder or `page_dirs`). Since anyone may
read what a page holds, the daemon refuses what is not a page: a name without a page's
suffix (`.yaml` site files, htpasswd files), text that is not UTF-8, and PEM blocks (a
certificate's private key). A changed file is a new route version (the daemon keeps its
fingerprint in `Checked.reads`).
"""

from __future__ import annotations

import posixpath

from controlplane.errors import Problem, SiteError
from controlplane.intake.reading import read_bounded
from controlplane.render.responses import Page
from controlplane.site.spec import Site

MAX_BYTES = 64 * 1024
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
                 ".txt": "text/plain; charset=utf-8", ".json": "application/json"}


def read_pages(site: Site) -> tuple[Page, ...]:
    """The site's pages, judged; or SiteError."""
    found, problems = [], []
    for status, path in sorted((site.spec.error_pages or {}).items()):
        page, reason = _page(status, path)
        if page is None:
            problems.append(Problem(site.source, f"error_pages.{status}", f"{path}: {reason}"))
        else:
            found.append(page)
    if problems:
        raise SiteError(problems)
    return tuple(found)


def _page(status: int, path: str) -> tuple[Page | None, str]:
    suffix = posixpath.splitext(path)[1].lower()
    if suffix not in CONTENT_TYPES:
        return None, (f"a page is a {', '.join(CONTENT_TYPES)} file (its type is told by its"
                      " suffix)")
    try:
        content = read_bounded(path, MAX_BYTES)
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    if not text.strip():
        return None, "the page is empty"
    if "\x00" in text:
        return None, "a NUL byte in the page"
    if "-----BEGIN " in text:
        return None, ("holds a PEM block (a certificate or a key); Envoy would serve it to"
                      " anyone: name a page")
    return Page(status=status, content_type=CONTENT_TYPES[suffix], body=text), ""
