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
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane import certificates, loading, rendering, status, tls, validating
from controlplane.envoy_admin import AdminClient
from controlplane.errors import OutputError, Problem, SiteError
from controlplane.model import digest_of
from controlplane.publishing import Publisher
from controlplane.settings import Settings
from controlplane.verifying import Verifier


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    """One version of one site file after the per-file checks (YAML, schema, types)."""

    name: str
    source: str
    digest: str
    content: bytes | None = None
    resources: rendering.SiteResources | None = None
    problems: tuple[Problem, ...] = ()
    domains: tuple[str, ...] = ()
    warnings: tuple[Problem, ...] = ()


def check_content(name: str, source: str, content: bytes, settings: Settings) -> Checked:
    digest = digest_of(content)
    try:
        document = loading.parse(content, source)
        admin = () if settings.admin_socket is None else (str(settings.admin_socket.absolute()),)
        site = validating.validate(name, source, digest, document,
                                   tuple(str(d) for d in settings.socket_dirs), admin,
                                   tuple(str(d) for d in settings.log_dirs))
        resources = rendering.render_site(site, settings)
    except SiteError as exc:
        return Checked(name=name, source=source, digest=digest, problems=exc.problems)
    except Exception as exc:  # a site file must never take the daemon down
        problem = Problem(source, "envoy", f"cannot be rendered: {type(exc).__name__}: {exc}")
        return Checked(name=name, source=source, digest=digest, problems=(problem,))
    return Checked(name=name, source=source, digest=digest, content=content,
                   resources=resources, domains=tuple(site.spec.domains))


def check_entry(entry: loading.Entry, settings: Settings) -> Checked:
    source = entry.location
    try:
        content = loading.read(entry, settings.sites_dir, settings.max_file_bytes)
    except SiteError as exc:
        return Checked(name=entry.name, source=source, digest="", problems=exc.problems)
    return _check_access_log(_check_certificates(
        check_content(entry.name, source, content, settings)))


def _check_access_log(item: Checked) -> Checked:
    """An access log that exists must be a regular file (or /dev/stdout, /dev/stderr):
    Envoy would block opening a FIFO, in `--mode validate` and for real."""
    log = item.resources.access_log if item.resources is not None else None
    path = str(log["typed_config"]["path"]) if log else None
    if path is None or path in ("/dev/stdout", "/dev/stderr"):
        return item
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return item
    except OSError as exc:
        mode, reason = 0, f"{path!r}: {exc.strerror}"
    else:
        reason = f"{path!r} exists and is not a regular file"
    if stat.S_ISREG(mode):
        return item
    return Checked(name=item.name, source=item.source, digest=item.digest,
                   problems=(Problem(item.source, "access_log.path", reason),))


def _check_certificates(item: Checked) -> Checked:
    """A TLS site's certificate files: unreadable or mismatched is a problem; not
    covering a domain or expiring soon is a warning."""
    site_tls = item.resources.tls if item.resources is not None else None
    if site_tls is None:
        return item
    try:
        problems, warnings = certificates.inspect(item.source, site_tls.spec, site_tls.domains)
    except Exception as exc:  # odd certificates must not take the daemon down
        problems = [Problem(item.source, "tls", f"cannot inspect: {type(exc).__name__}: {exc}")]
    if problems:
        return Checked(name=item.name, source=item.source, digest=item.digest,
                       problems=tuple(problems))
    return dataclasses.replace(item, warnings=tuple(warnings))


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


def select(checked: dict[str, Checked], last_good: dict[str, Checked],
           verifier: Verifier | None, max_certificates: int | None = None) -> Selection:
    """Which version of each site serves: the new one when it passes every check, else
    its last good one, else none. Cross-site checks and Envoy's verdict run here."""
    result = Selection(serving={})
    for name, item in checked.items():
        if item.problems:
            result.problems.setdefault(name, []).extend(item.problems)
        chosen = last_good.get(name) if item.problems else item
        if chosen is not None:
            result.serving[name] = chosen
    _settle(result, last_good, lambda serving: _conflicts(serving))
    if max_certificates is not None:
        _settle(result, last_good, lambda serving: tls.certificate_overflow(
            {n: (c.source, c.resources.tls.secret_name) for n, c in serving.items()
             if c.resources is not None and c.resources.tls is not None}, max_certificates,
            {n for n, c in serving.items() if _is_last_good(c, last_good)}))
    result.warnings = {n: list(c.warnings) for n, c in result.serving.items() if c.warnings}
    if verifier is not None:
        _settle(result, last_good, lambda serving: verifier.verify(
            [c.resources for c in serving.values() if c.resources is not None],
            {n: c.source for n, c in serving.items()}))
    return result


def _conflicts(serving: dict[str, Checked]) -> dict[str, list[Problem]]:
    sites = {n: validating.DomainClaim(source=c.source, domains=c.domains)
             for n, c in serving.items()}
    return validating.domain_conflicts(sites)


def _settle(result: Selection, last_good: dict[str, Checked],
            find: Callable[[dict[str, Checked]], dict[str, list[Problem]]]) -> None:
    """Until `find` finds nothing: demote the sites at fault to their last good version,
    or leave them out. A site already at its last good version keeps serving while a
    newcomer is at fault (a new file cannot take an established site's domain away)."""
    for _ in range(len(result.serving) + 1):
        found = find(result.serving)
        if not found:
            return
        for name, problems in found.items():
            known = {str(p) for p in result.problems.get(name, [])}
            result.problems.setdefault(name, []).extend(p for p in problems
                                                        if str(p) not in known)
        newcomers = [n for n in found if not _is_last_good(result.serving[n], last_good)]
        for name in newcomers or list(found):
            previous = last_good.get(name)
            if name in newcomers and previous is not None:
                result.serving[name] = previous
            else:
                del result.serving[name]


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
    rejected: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    confirmed: bool | None = None
    retry: bool = False
    durations_ms: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)


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
        self._sites: dict[str, status.SiteStatus] = {}
        self._sites_json = "{}"
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

    def run_pass(self) -> Outcome:
        outcome = Outcome()
        clock = _Clock(outcome.durations_ms)
        checked = self._scan(outcome)
        clock.lap("load_validate_render")
        if checked is None:
            selection = Selection(serving=dict(self._serving or self.last_good))
        else:
            selection = select(checked, self.last_good, self._verifier,
                               self._settings.max_certificates)
        clock.lap("verify")
        self._diff(outcome, selection)
        self._apply(outcome, selection)
        clock.lap("write_confirm")
        self._record(outcome, selection, checked)
        return outcome

    def _scan(self, outcome: Outcome) -> dict[str, Checked] | None:
        try:
            entries = loading.scan(self._settings.sites_dir)
        except (FileNotFoundError, NotADirectoryError):
            outcome.errors.append(f"{self._settings.sites_dir}: the sites folder is missing;"
                                  " keeping what serves until it is back")
            return None
        duplicates = duplicate_names(entries)
        checked: dict[str, Checked] = {}
        for entry in entries:
            if entry.name in duplicates:
                checked[entry.name] = Checked(name=entry.name, source=entry.location,
                                              digest="", problems=tuple(duplicates[entry.name]))
                continue
            checked[entry.name] = self._check_cached(entry)
        self._cache = {n: v for n, v in self._cache.items() if n in checked}
        return checked

    def _check_cached(self, entry: loading.Entry) -> Checked:
        cached = self._cache.get(entry.name)
        if cached is not None and cached[0] == entry.fingerprint and (
                cached[1].source == entry.location):
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
        outcome.problems = {n: [str(p) for p in ps] for n, ps in sorted(selection.problems.items())}

    def _apply(self, outcome: Outcome, selection: Selection) -> None:
        serving = selection.serving
        resources = [c.resources for c in serving.values() if c.resources is not None]
        clusters = {name: text for r in resources for name, text in r.cluster_json}
        files = rendering.assemble(self._settings, resources)
        try:
            report = self._publisher.apply(clusters, files["rds"], files["lds"], files["sds"])
        except OutputError as exc:
            outcome.errors.append(str(exc))
            outcome.retry, outcome.confirmed = True, False
            return
        outcome.written, outcome.rejected = report.written, report.rejected
        outcome.errors.extend(report.unconfirmed + report.errors)
        outcome.versions = {k: f.version for k, f in self._publisher.files.items()}
        outcome.confirmed = None if self._admin is None else report.confirmed
        outcome.retry = bool(report.unconfirmed or report.rejected or report.errors)
        if report.rejected:
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
            outcome.rejected)
        if self._verifier is not None:
            why = self._verifier.explain([c.resources for c in serving.values()
                                          if c.resources is not None])
            if why is not None:
                reason += f"; Envoy says: {why}"
                outcome.rejected.append(f"Envoy says: {why}")
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
            problems = list(selection.problems.get(name, ()))
            state = ("invalid" if serving is None else
                     "serving-last-good" if problems else "serving")
            digest = serving.digest if serving else None
            previous = self._sites.get(name)
            if previous is not None and (previous.state, previous.serving, previous.problems) == (
                    state, digest, problems):
                sites[name] = previous  # unchanged: keep the object, and its changed_at
                continue
            source = serving.source if serving else (checked or {})[name].source
            sites[name] = status.SiteStatus(state=state, file=source, problems=problems,
                                            serving=digest, changed_at=now)
            changed = True
        self._sites = sites
        if changed:
            self._sites_json = status.sites_json(sites, self._status_lines)
        last = status.PassStatus(
            at=now, added=outcome.added, changed=outcome.changed, removed=outcome.removed,
            invalid=outcome.invalid, written=outcome.written, confirmed=outcome.confirmed,
            errors=outcome.errors + outcome.rejected, versions=outcome.versions)
        try:
            status.write_status(self._settings.state, self._sites_json, last)
        except OutputError as exc:
            outcome.errors.append(str(exc))


class _Clock:
    def __init__(self, into: dict[str, float]) -> None:
        self._into = into
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self._into[stage] = round((now - self._last) * 1000, 2)
        self._last = now

