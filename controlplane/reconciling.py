"""One pass: scan -> load -> validate -> render -> verify -> publish -> confirm.

Level-triggered: every pass looks at the whole folder and compares it with what serves,
so a lost event costs latency, never correctness. Work is incremental: a file whose
stat fingerprint (or, failing that, content hash) is unchanged is not parsed again,
and Envoy re-checks only renders it has not passed before.

Per-site isolation: a site whose new version fails any check keeps serving its last
good version (kept in the state folder across restarts); a new invalid site is left
out; every other site goes ahead. `select` is shared with the one-shot `check` and
`render` commands, which have no last-good versions and so leave out every bad site.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from controlplane import (
    certificates,
    claims,
    htpasswd,
    loading,
    paths,
    rendering,
    shadowing,
    status,
    tls,
    validating,
)
from controlplane.envoy_admin import AdminClient
from controlplane.errors import (
    ControlPlaneError,
    EnvoyCannotBind,
    EnvoyUnavailable,
    OutputError,
    Problem,
    SiteError,
    SitesUnavailable,
    bounded,
)
from controlplane.model import Site, digest_of
from controlplane.publishing import Confirmation, Publisher
from controlplane.settings import Settings
from controlplane.verifying import Verifier

log = structlog.get_logger("controlplane")


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
    uses: tuple[paths.Use, ...] = ()
    """The paths this version makes Envoy use: judged again at every pass (`select` with
    a `paths.Fence`), never cached with the rest, since a symlink can be planted later."""
    reads: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Files outside the sites folder whose content was judged (an htpasswd file, the
    certificate and key), with their fingerprint then: a changed one makes the site file
    checked again."""
    expires_at: float | None = None
    """When the site's certificate expires (Unix time), as read at `checked_at`."""
    checked_at: float = 0.0


def check_content(name: str, source: str, content: bytes, settings: Settings) -> Checked:
    digest = digest_of(content)
    try:
        document = loading.parse(content, source)
        site = validating.validate(name, source, digest, document)
        reads, secret = _read_htpasswd(site)
        try:
            resources = rendering.render_site(site, settings, htpasswd=secret)
        except SiteError as exc:  # the hatch's problems know their field, not its line
            raise SiteError(validating.locate(exc.problems, document)) from None
        uses = validating.path_uses(site, document)
        uses += claims.sockets(resources, {u.path for u in uses})
    except SiteError as exc:
        return Checked(name=name, source=source, digest=digest, problems=exc.problems)
    except Exception as exc:  # a site file must never take the daemon down
        problem = Problem(source, "envoy", f"cannot be rendered: {type(exc).__name__}: {exc}")
        return Checked(name=name, source=source, digest=digest, problems=(problem,))
    return Checked(name=name, source=source, digest=digest, content=content, site=site,
                   resources=resources, domains=tuple(site.spec.domains), uses=uses,
                   warnings=tuple(shadowing.shadowed(site, document.lines)), reads=reads)


def _read_htpasswd(site: Site) -> tuple[tuple[tuple[str, tuple[int, ...]], ...], str | None]:
    """The site's htpasswd file, judged: its fingerprint and digest, or SiteError."""
    spec = site.spec.basic_auth
    if spec is None:
        return (), None
    seen = htpasswd.fingerprint(spec.htpasswd)
    found, problems = htpasswd.inspect(site.source, spec.htpasswd)
    if problems:
        raise SiteError(problems)
    return ((spec.htpasswd, seen),), found


def fence_of(settings: Settings) -> paths.Fence:
    """The path rules of one pass, with every folder resolved now (never kept longer)."""
    return paths.Fence.now(
        socket_dirs=settings.socket_dirs, log_dirs=settings.log_dirs,
        admin_socket=settings.admin_socket,
        private=[(settings.sites_dir, "sites folder"), (settings.out_dir, "out folder"),
                 (settings.state, "state folder")],
        exclusive_upstreams=settings.exclusive_upstreams,
        own_ports={port: what for port, what in (
            (settings.metrics.port if settings.metrics else 0, "the daemon's metrics port"),
            (settings.stats_listen.port if settings.stats_listen else 0,
             "Envoy's stats listener (it passes on the admin interface's stats)"),
            (settings.listen_tls.port, "Envoy's own HTTPS listener"),
            (settings.listen.port, "Envoy's own HTTP listener")) if port})


def check_entry(entry: loading.Entry, settings: Settings) -> Checked:
    source = entry.location
    try:
        content = loading.read(entry, settings.sites_dir, settings.max_file_bytes)
    except SiteError as exc:
        return Checked(name=entry.name, source=source, digest="", problems=exc.problems)
    return _check_certificates(check_content(entry.name, source, content, settings))


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
    reads = tuple((path, htpasswd.fingerprint(path)) for path in (spec.cert, spec.key))
    return dataclasses.replace(item, warnings=item.warnings + tuple(warnings),
                               reads=item.reads + reads,
                               expires_at=certificates.expiry_of(spec.cert),
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
class Selection:
    serving: dict[str, Checked]
    problems: dict[str, list[Problem]] = field(default_factory=dict)
    warnings: dict[str, list[Problem]] = field(default_factory=dict)
    ignored: list[Problem] = field(default_factory=list)
    """Entries of the sites folder that are not read (`X.YAML`, `x.json`, folders)."""


def select(checked: dict[str, Checked], last_good: dict[str, Checked],
           verifier: Verifier | None, max_certificates: int | None = None,
           fence: paths.Fence | None = None) -> Selection:
    """Which version of each site serves: the new one when it passes every check, else
    its last good one, else none. The paths of both are judged first (`fence`, built for
    this pass); then the cross-site checks and Envoy's verdict."""
    result = Selection(serving={})
    path_warnings: dict[tuple[str, str], list[Problem]] = {}
    if fence is not None:
        checked, last_good = _fence(checked, last_good, fence, result, path_warnings)
    for name, item in checked.items():
        if item.problems:
            result.problems.setdefault(name, []).extend(item.problems)
        chosen = last_good.get(name) if item.problems else item
        if chosen is not None:
            result.serving[name] = chosen
    _settle(result, last_good, _conflicts, lambda name, serving: _holds_domains(
        name, serving, last_good))
    _settle(result, last_good, _name_conflicts)
    if fence is not None:
        _settle(result, last_good, lambda serving: _file_conflicts(serving, fence))
    if fence is not None and fence.exclusive_upstreams:
        _settle(result, last_good, lambda serving: _upstream_conflicts(serving, fence))
    if max_certificates is not None:
        _settle(result, last_good, lambda serving: tls.certificate_overflow(
            {n: (c.source, c.resources.tls.secret_name) for n, c in serving.items()
             if c.resources is not None and c.resources.tls is not None}, max_certificates,
            {n for n, c in serving.items() if _is_last_good(c, last_good)}))
    result.warnings = {n: [*c.warnings, *path_warnings.get((n, c.digest), [])]
                       for n, c in result.serving.items()
                       if c.warnings or path_warnings.get((n, c.digest))}
    if verifier is not None:
        _settle(result, last_good, lambda serving: verifier.verify(
            [c.resources for c in serving.values() if c.resources is not None],
            {n: c.source for n, c in serving.items()}))
    result.problems = {n: list(bounded(ps)) for n, ps in result.problems.items()}
    return result


def _fence(checked: dict[str, Checked], last_good: dict[str, Checked], fence: paths.Fence,
           result: Selection, warnings: dict[tuple[str, str], list[Problem]]) -> tuple[
        dict[str, Checked], dict[str, Checked]]:
    """Judge where each candidate's paths lead now, the new version's and the last good
    one's: a version whose paths fail is not served. When both fail (a symlink planted
    under a path both name), the site stops serving until its paths are fixed."""
    judged: dict[str, Checked] = {}
    for name, item in checked.items():
        if not item.problems:
            problems, found = _judge(item, fence)
            warnings[(name, item.digest)] = found
            if problems:
                item = Checked(name=name, source=item.source, digest=item.digest,
                               problems=tuple(problems))
        judged[name] = item
    good: dict[str, Checked] = {}
    for name, item in last_good.items():
        current = checked.get(name)
        if current is None:
            continue
        if current.digest == item.digest and not current.problems:
            if not judged[name].problems:
                good[name] = item
            continue
        problems, found = _judge(item, fence)
        warnings[(name, item.digest)] = found
        if not problems:
            good[name] = item
        elif judged[name].problems:  # else the new version serves and the old one is moot
            result.problems.setdefault(name, []).extend(
                dataclasses.replace(p, reason=f"its last good version too: {p.reason}")
                for p in problems)
    return judged, good


def _judge(item: Checked, fence: paths.Fence) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) of the paths one version uses, resolved now."""
    problems: list[Problem] = []
    warnings: dict[str, Problem] = {}
    for use in item.uses:
        verdict = fence.judge(use)
        if verdict.problem is not None:
            problems.append(Problem(item.source, use.field, verdict.problem, use.line))
        elif verdict.warning is not None:
            warnings.setdefault(verdict.warning, Problem(item.source, use.field,
                                                         verdict.warning, use.line))
    return problems, list(warnings.values())


def _name_conflicts(serving: dict[str, Checked]) -> dict[str, list[Problem]]:
    return validating.name_conflicts({
        n: validating.NameClaim(source=c.source, names=claims.names(c.resources))
        for n, c in serving.items() if c.resources is not None})


def _file_conflicts(serving: dict[str, Checked],
                    fence: paths.Fence) -> dict[str, list[Problem]]:
    found = claims.written_files({n: (c.source, c.uses) for n, c in serving.items()}, fence)
    return {n: [Problem(serving[n].source, f, reason) for f, reason in items]
            for n, items in found.items()}


def _upstream_conflicts(serving: dict[str, Checked],
                        fence: paths.Fence) -> dict[str, list[Problem]]:
    return validating.name_conflicts({
        n: validating.NameClaim(source=c.source, names=claims.upstreams(c.uses, fence))
        for n, c in serving.items()}, "an upstream belongs to one site (another would reach"
        " it past that site's access list and routes): give each site its own")


def _conflicts(serving: dict[str, Checked]) -> dict[str, list[Problem]]:
    sites = {n: validating.DomainClaim(source=c.source, domains=c.domains)
             for n, c in serving.items()}
    return validating.domain_conflicts(sites)


def _settle(result: Selection, last_good: dict[str, Checked],
            find: Callable[[dict[str, Checked]], dict[str, list[Problem]]],
            established: Callable[[str, dict[str, Checked]], bool] | None = None) -> None:
    """Until `find` finds nothing: demote the sites at fault to their last good version,
    or leave them out. An established site keeps serving while a newcomer is at fault,
    and only the demoted get the problem. Established: by default, already at its last
    good version; for domains, holding the contested domains already (`_holds_domains`)."""
    for _ in range(len(result.serving) + 1):
        found = find(result.serving)
        if not found:
            return
        newcomers = [n for n in found if not (
            established(n, result.serving) if established is not None
            else _is_last_good(result.serving[n], last_good))]
        for name, problems in found.items():
            if newcomers and name not in newcomers:
                continue
            known = {str(p) for p in result.problems.get(name, [])}
            result.problems.setdefault(name, []).extend(p for p in problems
                                                        if str(p) not in known)
        for name in newcomers or list(found):
            previous = last_good.get(name)
            if name in newcomers and previous is not None:
                result.serving[name] = previous
            else:
                del result.serving[name]


def _holds_domains(name: str, serving: dict[str, Checked],
                   last_good: dict[str, Checked]) -> bool:
    """The site's last good version already has every domain it shares with another
    serving site: it holds them, and goes on taking its own edits while a copy or a
    newcomer claims them too (`cp blog.yaml blog-old.yaml` must not freeze blog)."""
    previous = last_good.get(name)
    if previous is None:
        return False
    others = {d for n, c in serving.items() if n != name for d in c.domains}
    return set(serving[name].domains) & others <= set(previous.domains)


def _is_last_good(item: Checked, last_good: dict[str, Checked]) -> bool:
    previous = last_good.get(name := item.name)
    return previous is not None and previous.digest == item.digest and name in last_good


@dataclass(slots=True, kw_only=True)
class Outcome:
    """What one pass did; the daemon logs it as one event and writes it to the status."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    rejected: list[ControlPlaneError] = field(default_factory=list)
    errors: list[ControlPlaneError] = field(default_factory=list)
    """Kept as the errors raised: each has its `kind` (metrics) and its message."""
    confirmation: Confirmation = Confirmation.UNCONFIRMED
    retry: bool = False
    durations_ms: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    problems: dict[str, list[Problem]] = field(default_factory=dict)
    warnings: dict[str, list[Problem]] = field(default_factory=dict)
    """Per serving site: what to look at (a certificate expiring soon, a shadowed route)."""


class Reconciler:
    """Keeps what the daemon knows between passes; `run_pass` is one reconciliation."""

    def __init__(self, settings: Settings, *, verifier: Verifier | None,
                 admin: AdminClient | None, stop: threading.Event) -> None:
        self._settings = settings
        self._verifier = verifier
        self._admin = admin
        self._publisher = Publisher(settings, admin, stop)
        self._cache: dict[str, tuple[tuple[int, ...], Checked]] = {}
        self._rejected: dict[str, str] = {}
        self._ignored: set[str] = set()
        self.socket_folders: list[str] = []
        """The folders of the sites' sockets and htpasswd files, as written and resolved:
        the daemon watches them, so a symlink planted (or removed) there is judged, and a
        changed htpasswd file applied, at the next pass."""
        self._sites: dict[str, status.SiteStatus] = {}
        self._sites_json = "{}"
        self._confirmed: dict[str, str] = {}
        """Site -> the digest Envoy last confirmed running (a fully confirmed apply)."""
        self._envoy_ok = False
        """The last apply reached Envoy and was written (no timeout, refusal, output error)."""
        self._blocked: dict[str, list[str]] = {}
        """Sites kept from serving by a listener Envoy cannot bind, with the cause."""
        self._status_lines: dict[str, tuple[status.SiteStatus, str]] = {}
        """The `sites` part of the status file, serialised again only when a site's
        status changes (10,000 sites: ~300 ms a time)."""
        self.last_good = self._load_last_good()
        self._serving: dict[str, Checked] = dict(self.last_good)
        """What serves, as far as the daemon knows: at start, what served before it stopped
        (a rejection must blame only what changed since)."""

    def _load_last_good(self) -> dict[str, Checked]:
        found = {}
        for name, content in status.load_last_good(self._settings.state).items():
            source = str(self._settings.sites_dir / f"{name}.yaml")
            item = check_content(name, source, content, self._settings)
            if not item.problems:
                found[name] = item
        return found

    def certificate_expiries(self) -> dict[str, float]:
        """When each serving TLS site's certificate expires (Unix time)."""
        return {name: site.certificate_expiry for name, site in self._sites.items()
                if site.certificate_expiry is not None and site.serving is not None}

    def site_states(self) -> dict[str, int]:
        """How many sites are in each state after the last pass."""
        counts: dict[str, int] = {}
        for site in self._sites.values():
            counts[site.state] = counts.get(site.state, 0) + 1
        return counts

    def carry_status(self, previous: Reconciler) -> None:
        """Take over what `previous` reported per site (a reload or Envoy coming up
        builds a new reconciler): a site whose state stays keeps its `changed_at`."""
        self._sites, self._sites_json = previous._sites, previous._sites_json
        self._status_lines = previous._status_lines

    def envoy_runs_ours(self) -> bool:
        """Envoy answers and runs the versions last written (True without an admin
        socket, or when there is nothing confirmed to compare)."""
        return self._publisher.runs_ours()

    def run_pass(self, unfinished: frozenset[str] = frozenset()) -> Outcome:
        """One reconciliation. `unfinished`: file names being written in place and not
        closed yet; their previous version stands in for them (a new one waits)."""
        outcome = Outcome()
        clock = _Clock(outcome.durations_ms)
        checked = self._scan(outcome, unfinished)
        clock.lap("load_validate_render")
        if checked is None:  # no sites folder: what serves stays, if its paths still hold
            checked = dict(self._serving or self.last_good)
            selection = select(checked, checked, None, None, fence_of(self._settings))
        else:
            selection = select(checked, self.last_good, self._verifier,
                               self._settings.max_certificates, fence_of(self._settings))
        clock.lap("verify")
        self._diff(outcome, selection)
        self._apply(outcome, selection)
        clock.lap("write_confirm")
        self._record(outcome, selection, checked)
        self.socket_folders = self._socket_folders()
        return outcome

    def _socket_folders(self) -> list[str]:
        """Socket folders first, then htpasswd folders: the watch takes only the first few,
        and a site's htpasswd files must not crowd out the sockets' folders."""
        items = [*(c for _, c in self._cache.values()), *self.last_good.values()]

        def folders(wanted: Callable[[paths.Use], bool]) -> list[str]:
            written = {os.path.dirname(u.path) for c in items for u in c.uses
                       if wanted(u) and u.path.startswith("/")}
            return sorted(written | {os.path.realpath(f) for f in written})

        sockets = folders(lambda u: u.kind == "socket")
        others = folders(lambda u: u.field == "basic_auth.htpasswd")
        return [*sockets, *(f for f in others if f not in sockets)]

    def _scan(self, outcome: Outcome, unfinished: frozenset[str]) -> dict[str, Checked] | None:
        try:
            entries, ignored = loading.scan_all(self._settings.sites_dir)
        except (FileNotFoundError, NotADirectoryError):
            outcome.errors.append(SitesUnavailable(
                f"{self._settings.sites_dir}: the sites folder is missing; keeping what"
                " serves until it is back"))
            return None
        self._report_ignored(ignored)
        duplicates = duplicate_names(entries)
        checked: dict[str, Checked] = {}
        for entry in entries:
            if unfinished and os.path.basename(entry.location) in unfinished:
                previous = self._previous(entry.name)
                if previous is not None:
                    checked[entry.name] = previous
                continue
            if entry.name in duplicates:
                checked[entry.name] = Checked(name=entry.name, source=entry.location,
                                              digest="", problems=tuple(duplicates[entry.name]))
                continue
            checked[entry.name] = self._check_cached(entry)
        self._cache = {n: v for n, v in self._cache.items() if n in checked}
        return checked

    def _report_ignored(self, ignored: list[Problem]) -> None:
        """One log line per ignored entry while it stays, not one per pass."""
        for problem in ignored:
            if problem.file not in self._ignored:
                log.warning("file.ignored", file=problem.file, reason=problem.reason)
        self._ignored = {p.file for p in ignored}

    def _previous(self, name: str) -> Checked | None:
        """What was known of a site before its file started being rewritten."""
        cached = self._cache.get(name)
        return cached[1] if cached is not None else self.last_good.get(name)

    def _check_cached(self, entry: loading.Entry) -> Checked:
        cached = self._cache.get(entry.name)
        if cached is not None and cached[0] == entry.fingerprint and (
                cached[1].source == entry.location) and all(
                htpasswd.fingerprint(path) == seen for path, seen in cached[1].reads) and (
                cached[1].expires_at is None
                or time.time() - cached[1].checked_at < CERTIFICATE_RECHECK_S):
            item = cached[1]
        else:
            item = check_entry(entry, self._settings)
            self._cache[entry.name] = (entry.fingerprint, item)
        reason = self._rejected.get(item.digest)
        if reason is not None and not item.problems:
            item = Checked(name=item.name, source=item.source, digest=item.digest,
                           problems=(Problem(item.source, "envoy", reason),))
        return item

    def _diff(self, outcome: Outcome, selection: Selection) -> None:
        old, new = self._serving, selection.serving
        outcome.added = sorted(set(new) - set(old))
        outcome.removed = sorted(set(old) - set(new))
        outcome.changed = sorted(n for n in set(new) & set(old) if new[n].digest != old[n].digest)
        outcome.invalid = sorted(selection.problems)
        outcome.problems = {n: list(ps) for n, ps in sorted(selection.problems.items())}
        outcome.warnings = {n: list(ws) for n, ws in sorted(selection.warnings.items())
                            if n in new}

    def _apply(self, outcome: Outcome, selection: Selection) -> None:
        serving = selection.serving
        self._blocked = {}
        resources = [c.resources for c in serving.values() if c.resources is not None]
        try:
            report = self._publisher.apply(rendering.snapshot(self._settings, resources))
        except OutputError as exc:
            outcome.errors.append(exc)
            outcome.retry, outcome.confirmation = True, Confirmation.UNCONFIRMED
            return  # Envoy goes on serving what it served: unchanged sites stay serving
        outcome.written, outcome.rejected = report.written, list(report.rejected)
        outcome.errors.extend([*report.unconfirmed, *report.errors])
        outcome.versions = {k: f.version for k, f in self._publisher.files.items()}
        outcome.confirmation = (Confirmation.UNASKED if self._admin is None
                                else Confirmation.CONFIRMED if report.confirmed
                                else Confirmation.UNCONFIRMED)
        outcome.retry = bool(report.unconfirmed or report.rejected or report.errors)
        self._envoy_ok = not any(isinstance(e, EnvoyUnavailable) for e in outcome.errors)
        if report.confirmed and self._admin is not None:  # not merely written
            self._confirmed = {name: item.digest for name, item in serving.items()}
        binds = [e for e in report.rejected if isinstance(e, EnvoyCannotBind)]
        if binds:
            self._blocked = _blocked_by(binds, serving)
        elif report.rejected:
            self._blame(outcome, serving)
            return
        # Written and not rejected: these versions passed every check, Envoy's validate
        # included, so they are the last good ones even before Envoy confirms (it may
        # not be up yet; the files are what it will load).
        self._promote(serving)

    def _blame(self, outcome: Outcome, serving: dict[str, Checked]) -> None:
        """Envoy rejected what `validate` passed: the sites new in this pass are held
        back until their files change (their last good versions serve meanwhile)."""
        reason = "Envoy rejected the update that carried this version: " + "; ".join(
            str(e) for e in outcome.rejected)
        if self._verifier is not None:
            why = self._verifier.explain([c.resources for c in serving.values()
                                          if c.resources is not None])
            if why is not None:
                reason += f"; Envoy says: {why}"
                first = outcome.rejected[0]
                outcome.rejected[0] = type(first)(f"{first}; Envoy says: {why}")
        for name in outcome.added + outcome.changed:
            self._rejected[serving[name].digest] = reason

    def _promote(self, serving: dict[str, Checked]) -> None:
        state = self._settings.state
        for name in set(self._serving) - set(serving):
            self.last_good.pop(name, None)
            status.drop_last_good(state, name)
        fresh = {name: item for name, item in serving.items()
                 if item.content is not None and self.last_good.get(name) is not item}
        status.save_last_good(state, {name: item.content or b"" for name, item in fresh.items()})
        self.last_good.update(fresh)
        self._serving = dict(serving)

    def _record(self, outcome: Outcome, selection: Selection,
                checked: dict[str, Checked] | None) -> None:
        now = time.time()
        names = set(selection.serving) | set(selection.problems) | set(checked or {})
        sites = {}
        changed = names != set(self._sites)
        for name in names:
            serving = selection.serving.get(name)
            blocked = [Problem(serving.source if serving else name, "", cause)
                       for cause in self._blocked.get(name, ())]
            problems = status.clip_problems([*selection.problems.get(name, ()), *blocked])
            state = self._state(name, serving, problems)
            digest = serving.digest if serving else None
            warnings = status.clip_problems(list(selection.warnings.get(name, ())))
            expiry = serving.expires_at if serving else None
            previous = self._sites.get(name)
            same = previous is not None and (
                previous.state, previous.serving, previous.problems) == (state, digest, problems)
            if same and previous is not None and (
                    previous.warnings, previous.certificate_expiry) == (warnings, expiry):
                sites[name] = previous  # unchanged: keep the object, and its changed_at
                continue
            source = serving.source if serving else (checked or {})[name].source
            since = previous.changed_at if same and previous is not None else now
            sites[name] = status.SiteStatus(state=state, file=source, problems=problems,
                                            serving=digest, changed_at=since, warnings=warnings,
                                            certificate_expiry=expiry)
            changed = True
        self._sites = sites
        if changed:
            self._sites_json = status.sites_json(sites, self._status_lines)
        last = status.PassStatus(
            at=now, added=outcome.added, changed=outcome.changed, removed=outcome.removed,
            invalid=outcome.invalid, written=outcome.written,
            confirmed=outcome.confirmation.as_status(),
            errors=status.clip_all([str(e) for e in outcome.errors + outcome.rejected]),
            versions=outcome.versions)
        try:
            status.write_status(self._settings.state, self._sites_json, last)
        except OutputError as exc:
            outcome.errors.append(exc)

    def _state(self, name: str, serving: Checked | None, problems: list[Problem]) -> str:
        """What the status says of one site. `serving` only when Envoy confirmed that it
        runs this very version (or, without an admin socket, once written); `pending`
        while the version is written but not confirmed: Envoy down, slow, rejecting an
        update or unable to bind a listener, or the output folder not writable."""
        if serving is None:
            return "invalid"
        unasked = self._admin is None and self._settings.admin_socket is None
        confirmed = unasked or (self._envoy_ok and self._confirmed.get(name) == serving.digest)
        if not confirmed or name in self._blocked:
            return "pending"
        return "serving-last-good" if problems else "serving"


def _blocked_by(binds: list[EnvoyCannotBind], serving: dict[str, Checked]) -> dict[
        str, list[str]]:
    """The sites a listener that cannot bind keeps from serving, with Envoy's reason:
    the TLS sites for the HTTPS listener, every site for any other."""
    blocked: dict[str, list[str]] = {}
    for error in binds:
        for listener, why in sorted(error.listeners.items()):
            cause = (f"Envoy cannot open the {listener!r} listener: {why}; it is applied"
                     " as soon as the address is free")
            for name, item in serving.items():
                tls_site = item.resources is not None and item.resources.tls is not None
                if listener != "https" or tls_site:
                    blocked.setdefault(name, []).append(cause)
    return blocked


class _Clock:
    def __init__(self, into: dict[str, float]) -> None:
        self._into = into
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self._into[stage] = round((now - self._last) * 1000, 2)
        self._last = now

