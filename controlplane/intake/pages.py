"""Edge I/O: read a site's error pages and judge them before Envoy serves them.

A page is read like a certificate file (`paths.read_bounded`: a regular file, opened
non-blocking, at most `MAX_BYTES`) and inlined into the route file, so Envoy opens no
file a site names. Where it lies is judged on the resolved path at every pass
(`paths.Fence`, kind `page`: under the sites folder or `page_dirs`). Since anyone may
read what a page holds, the daemon refuses what is not a page: a name without a page's
suffix (`.yaml` site files, htpasswd files), text that is not UTF-8, and PEM blocks (a
certificate's private key). A changed file is a new route version (the daemon keeps its
fingerprint in `Checked.reads`). The fence judges each path before it is opened, so a
refused path tells nothing of what the file holds; and one site's pages together are at
most `MAX_TOTAL_BYTES`, since every site's pages share the one route file.
"""

from __future__ import annotations

import posixpath

from controlplane.errors import Problem, SiteError
from controlplane.intake.paths import Fence
from controlplane.intake.reading import read_bounded
from controlplane.render.responses import Page
from controlplane.site.places import Use
from controlplane.site.spec import Site

MAX_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 128 * 1024
"""All of one site's pages: they are inlined into the route file every site shares."""
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
                 ".txt": "text/plain; charset=utf-8", ".json": "application/json"}


def read_pages(site: Site, fence: Fence) -> tuple[Page, ...]:
    """The site's pages, each judged by the fence before it is read; or SiteError."""
    found, problems = [], []
    for status, path in sorted((site.spec.error_pages or {}).items()):
        where = f"error_pages.{status}"
        page, reason = _page(status, path, fence)
        if page is None:
            problems.append(Problem(site.source, where, reason))
        else:
            found.append(page)
    total = sum(len(page.body.encode()) for page in found)
    if total > MAX_TOTAL_BYTES and not problems:
        problems.append(Problem(site.source, "error_pages", f"the pages are {total} bytes"
                                f" together; a site's pages may have at most"
                                f" {MAX_TOTAL_BYTES} (they go into the route file every"
                                " site shares): make them smaller, or name fewer"))
    if problems:
        raise SiteError(problems)
    return tuple(found)


def _page(status: int, path: str, fence: Fence) -> tuple[Page | None, str]:
    suffix = posixpath.splitext(path)[1].lower()
    if suffix not in CONTENT_TYPES:
        return None, (f"{path}: a page is a {', '.join(CONTENT_TYPES)} file (its type is"
                      " told by its suffix)")
    refused = fence.judge(Use(field=f"error_pages.{status}", kind="page", path=path)).problem
    if refused is not None:  # judged before it is opened: nothing told of its content
        return None, refused
    page, reason = _content(status, path, suffix)
    return page, reason if page is not None else f"{path}: {reason}"


def _content(status: int, path: str, suffix: str) -> tuple[Page | None, str]:
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
