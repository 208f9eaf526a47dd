"""One site file, checked on its own: read, parsed, validated, rendered, its helper
files (certificate, key, htpasswd) judged; and the scan of the sites folder that the
daemon and `check` share.

A `Checked` keeps the validated `Site` beside its rendered resources, so later checks
read the user's own values, never Envoy's JSON. The paths a version uses are listed
here and judged at every pass (`selecting`), never cached with the rest.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field

from controlplane.errors import Problem, SiteError
from controlplane.intake import (
    certificates,
    claims,
    crossing,
    defaults,
    htpasswd,
    loading,
    naming,
    pages,
    paths,
    reading,
    shadowing,
    streams,
    validating,
)
from controlplane.intake.loading import Document
from controlplane.issuing import store
from controlplane.render import rendering
from controlplane.settings import Settings
from controlplane.site import places
from controlplane.site.spec import Site, digest_of

CERTIFICATE_RECHECK_S = 6 * 3600.0
"""A TLS site's certificate is judged again this often even when no file changed, so
"expires within 14 days" appears in time (its expiry metric follows)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    """One version of one site file after the per-file checks (YAML, schema, types)."""

    name: str
    source: str
    digest: str
    content: bytes | None = None
    site: Site | None = None
    """The validated site in the user's own values: what later checks read."""
    resources: rendering.SiteResources | None = None
    problems: tuple[Problem, ...] = ()
    domains: tuple[str, ...] = ()
    warnings: tuple[Problem, ...] = ()
    uses: tuple[places.Use, ...] = ()
    """The paths this version makes Envoy use: judged again at every pass (`select` with
    a `paths.Fence`), never cached with the rest, since a symlink can be planted later."""
    reads: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Files outside the sites folder whose content was judged (an htpasswd file, the
    certificate and key), with their fingerprint then: a changed one makes the site file
    checked again."""
    expires_at: float | None = None
    """When the site's certificate expires (Unix time), as read at `checked_at`."""
    checked_at: float = 0.0
    acme: bool = False
    """The site asks for its certificate by ACME (`tls: {acme: true}`)."""


def check_content(name: str, source: str, content: bytes, settings: Settings,
                  trusted: Container[str] = frozenset(), envoy_judges: bool = False) -> Checked:
    """One site file's bytes checked, validated and rendered. `trusted`: render digests
    Envoy accepted; `envoy_judges`: Envoy's verdict follows (both `rendering.render_site`)."""
    shared = defaults.load(os.path.dirname(os.path.abspath(source)), settings.max_file_bytes)
    # The defaults are part of the version: a change to them is a new version of each site.
    digest = digest_of(content + b"\x00" + shared.content if shared.content else content)
    reads: tuple[tuple[str, tuple[int, ...]], ...] = ((shared.source, shared.fingerprint),)
    try:
        parsed = loading.parse(content, source)
        kind = streams.kind_of(parsed, source)
        merged = defaults.apply(parsed, shared, source, kind)
        if kind != "http":
            return _check_stream(name, source, digest, content, merged.document, settings,
                                 reads, trusted, envoy_judges)
        document = merged.document
        asked = validating.validate(name, source, digest, document, merged)
        site = store.resolve(asked, settings)
        reads += _files_read(site) + _acme_reads(asked, settings)
        # The files a site names are judged where they lie before they are read.
        fence = fence_of(settings) if site.spec.basic_auth or site.spec.error_pages else None
        try:  # problems found after validation know their field, not its line
            resources = rendering.render_site(
                site, settings, htpasswd=_read_htpasswd(site, fence),
                pages=pages.read_pages(site, fence) if fence is not None else (),
                trusted=trusted, envoy_judges=envoy_judges)
        except SiteError as exc:
            raise SiteError(validating.locate(exc.problems, document, merged)) from None
        uses = tuple(dataclasses.replace(u, line=None) if u.field.partition(".")[0] in (
            merged.inherited_keys()) else u for u in validating.path_uses(asked, document))
        uses += claims.sockets(resources, {u.path for u in uses})
    except SiteError as exc:
        return Checked(name=name, source=source, digest=digest, problems=exc.problems,
                       reads=reads)
    except Exception as exc:  # a site file must never take the daemon down
        problem = Problem(source, "envoy", f"cannot be rendered: {type(exc).__name__}: {exc}")
        return Checked(name=name, source=source, digest=digest, problems=(problem,),
                       reads=reads)
    return Checked(name=name, source=source, digest=digest, content=content, site=site,
                   resources=resources, domains=tuple(site.spec.domains), uses=uses,
                   warnings=tuple(shadowing.shadowed(site, document.lines)), reads=reads,
                   acme=asked.spec.tls is not None and asked.spec.tls.acme)


def _acme_reads(asked: Site, settings: Settings) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """An ACME site's certificate file, issued or not: once it appears or is renewed,
    the site file is checked again (and serves over HTTPS)."""
    if asked.spec.tls is None or not asked.spec.tls.acme:
        return ()
    cert, _ = store.files(settings, asked.name)
    return ((cert, reading.fingerprint(cert)),)


def _check_stream(name: str, source: str, digest: str, content: bytes, document: Document,
                  settings: Settings, reads: tuple[tuple[str, tuple[int, ...]], ...],
                  trusted: Container[str], envoy_judges: bool) -> Checked:
    """A TCP or passthrough site: validated, rendered, its places listed (SiteError
    goes to the caller)."""
    site = streams.validate(name, source, digest, document)
    resources = rendering.render_stream(site, settings, trusted=trusted,
                                        envoy_judges=envoy_judges)
    uses = streams.path_uses(site, document)
    if loops := crossing.loops(uses, source):
        raise SiteError(loops)
    return Checked(name=name, source=source, digest=digest, content=content,
                   resources=resources, domains=resources.domains, uses=uses, reads=reads)


def _files_read(site: Site) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The files outside the site file whose content goes into its render (htpasswd,
    pages), with their fingerprints now: kept even when they are refused, so fixing one
    makes the site checked again."""
    spec = site.spec
    named = [*([spec.basic_auth.htpasswd] if spec.basic_auth else []),
             *(path for _, path in sorted((spec.error_pages or {}).items()))]
    return tuple((path, reading.fingerprint(path)) for path in named)


def _read_htpasswd(site: Site, fence: paths.Fence | None) -> str | None:
    """The digest of the site's htpasswd file, judged; or SiteError."""
    spec = site.spec.basic_auth
    if spec is None or fence is None:
        return None
    found, problems = htpasswd.inspect(site.source, spec.htpasswd, fence)
    if problems:
        raise SiteError(problems)
    return found


def fence_of(settings: Settings) -> paths.Fence:
    """The path rules of one pass, with every folder resolved now (never kept longer)."""
    return paths.Fence.now(
        socket_dirs=settings.socket_dirs, log_dirs=settings.log_dirs,
        admin_socket=settings.admin_socket,
        private=[(settings.sites_dir, "sites folder"), (settings.out_dir, "out folder"),
                 (settings.state, "state folder")],
        exclusive_upstreams=settings.exclusive_upstreams,
        page_dirs=[settings.sites_dir, *settings.page_dirs],
        min_listen_port=settings.tcp_min_port,
        own_ports={port: what for port, what in (
            (settings.metrics.port if settings.metrics else 0, "the daemon's metrics port"),
            (settings.stats_listen.port if settings.stats_listen else 0,
             "Envoy's stats listener (it passes on the admin interface's stats)"),
            (settings.listen_tls.port, "Envoy's own HTTPS listener"),
            (settings.listen.port, "Envoy's own HTTP listener")) if port})


def check_entry(entry: loading.Entry, settings: Settings,
                known: Checked | None = None, envoy_judges: bool = False) -> Checked:
    """`known`: a version checked before (the last good one, at start); when the file
    holds the same bytes, its parse, validation and render are taken, not done again.
    `envoy_judges`: as for `check_content`."""
    source = entry.location
    try:
        content = loading.read(entry, settings.sites_dir, settings.max_file_bytes)
    except SiteError as exc:
        return Checked(name=entry.name, source=source, digest="", problems=exc.problems)
    if known is not None and known.content == content and known.source == source and (
            all(reading.fingerprint(path) == seen for path, seen in known.reads)):
        return _check_certificates(known)
    return _check_certificates(check_content(entry.name, source, content, settings,
                                             envoy_judges=envoy_judges))


def _check_certificates(item: Checked) -> Checked:
    """A TLS site's certificate files: unreadable or mismatched is a problem; not
    covering a domain or expiring soon is a warning."""
    spec = item.site.spec.tls if item.site is not None else None
    if spec is None or item.site is None:
        return item
    try:
        problems, warnings = certificates.inspect(item.source, spec, item.site.spec.domains)
    except Exception as exc:  # odd certificates must not take the daemon down
        problems = [Problem(item.source, "tls", f"cannot inspect: {type(exc).__name__}: {exc}")]
    if problems:
        return Checked(name=item.name, source=item.source, digest=item.digest,
                       problems=tuple(problems))
    reads = tuple((path, reading.fingerprint(path)) for path in spec.files())
    return dataclasses.replace(item, warnings=item.warnings + tuple(warnings),
                               reads=item.reads + reads,
                               expires_at=certificates.expiry_of(spec.files()[0]),
                               checked_at=time.time())


def duplicate_names(entries: list[loading.Entry]) -> dict[str, list[Problem]]:
    """`blog.yaml` beside `blog.yml`: both name the site `blog`; neither is used."""
    paths: dict[str, list[str]] = {}
    for entry in entries:
        paths.setdefault(entry.name, []).append(entry.location)
    return {name: [Problem(p, "", f"two files define the site {name!r}: {', '.join(found)}")
                   for p in found]
            for name, found in paths.items() if len(found) > 1}


@dataclass(slots=True, kw_only=True)
class Scan:
    """The sites folder as checked in one pass."""

    checked: dict[str, Checked]
    ignored: list[Problem] = field(default_factory=list)
    """Entries of the sites folder that are not read (`X.YAML`, `x.json`, folders)."""


def scan(settings: Settings, check: Callable[[loading.Entry], Checked | None]) -> Scan:
    """Every site file of the sites folder, each checked by `check` (the daemon's, with
    its caches; `check_entry` for the one-shot commands); a None leaves the file out of
    this pass. Two files of one site (`blog.yaml`, `blog.yml`) are neither used.
    Raises FileNotFoundError or NotADirectoryError without a sites folder."""
    entries, ignored = loading.scan_all(settings.sites_dir)
    duplicates = duplicate_names(entries)
    checked: dict[str, Checked] = {}
    for entry in entries:
        if entry.name in duplicates:
            checked[entry.name] = Checked(name=entry.name, source=entry.location, digest="",
                                          problems=tuple(duplicates[entry.name]))
        elif (item := check(entry)) is not None:
            checked[entry.name] = item
    return Scan(checked=checked, ignored=ignored)


def rescan(settings: Settings, previous: dict[str, Checked], touched: Iterable[str],
           check: Callable[[loading.Entry], Checked | None]) -> dict[str, Checked] | None:
    """The sites folder after events that named only `touched`: `previous` with each
    touched site file checked again (or gone). None when only a full `scan` can tell: the
    defaults, a name `scan` reports as ignored, a link or folder among the junk names
    (a ConfigMap's `..data` swap changes every file behind it), a site of two files, a
    site file that is a link or has other hard links."""
    folder, checked, added = settings.sites_dir, dict(previous), False
    for filename in sorted(set(touched)):
        path = os.path.join(folder, filename)
        if filename == naming.DEFAULTS:
            return None  # every site's defaults
        if not naming.is_site_name(filename):
            if not naming.is_junk(filename) or os.path.islink(path) or os.path.isdir(path):
                return None
            continue
        name = filename.rsplit(".", 1)[0]
        files = [s for s in naming.SUFFIXES if os.path.lexists(os.path.join(folder, name + s))]
        if len(files) > 1 or (name in previous and not previous[name].digest):
            return None  # two files of one site, or were: `scan` judges the pair
        entry = loading.entry(folder, filename)
        if entry is not None and entry.aliased:
            return None  # a link: what else changed with it only `scan` can tell
        item = check(entry) if entry is not None else None
        if item is not None:
            added, checked[name] = added or name not in checked, item
        elif entry is not None or (name in checked and checked[name].source == path):
            checked.pop(name, None)  # unfinished and new, or gone
    return dict(sorted(checked.items(), key=lambda i: i[1].source)) if added else checked


def watched_folders(items: list[Checked]) -> list[str]:
    """The folders of the sites' sockets, then of their htpasswd files and error pages (as
    written and resolved): the watch takes only the first few, and a site's other files
    must not crowd out the sockets' folders."""
    def folders(wanted: Callable[[places.Use], bool]) -> list[str]:
        written = {os.path.dirname(u.path) for c in items for u in c.uses
                   if wanted(u) and u.path.startswith("/")}
        return sorted(written | {os.path.realpath(f) for f in written})

    sockets = folders(lambda u: u.kind == "socket")
    others = folders(lambda u: u.field == "basic_auth.htpasswd" or u.kind == "page")
    return [*sockets, *(f for f in others if f not in sockets)]
