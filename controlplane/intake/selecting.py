"""Which version of each site serves: the new one when it passes every check, else
its last good one, else none.

Per-site isolation: a site whose new version fails any check keeps serving its last
good version; a new invalid site is left out; every other site goes ahead. The checks
that look across sites (domains, generated names, files written, upstreams, the number
of certificates) and Envoy's own verdict settle in turn. `select` is shared with the
one-shot `check`, `render` and `diff` commands, which have no last-good versions and so
leave out every bad site.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.errors import Problem, bounded
from controlplane.intake import claims, crossing, paths, sharing
from controlplane.intake.checking import Checked
from controlplane.intake.indexes import Contested, Fenced, Indexes, Judged, Owners, replaced
from controlplane.render import tls
from controlplane.render.rendering import SiteResources


class Verdicts(Protocol):
    """Envoy's own verdict on candidates (`envoy/verifying`'s Verifier): problems per
    site name for the ones Envoy refuses."""

    def verify(self, candidates: Sequence[SiteResources],
               sources: dict[str, str]) -> dict[str, list[Problem]]: ...


@dataclass(slots=True, kw_only=True)
class Selection:
    serving: dict[str, Checked]
    problems: dict[str, list[Problem]] = field(default_factory=dict)
    warnings: dict[str, list[Problem]] = field(default_factory=dict)
    ignored: list[Problem] = field(default_factory=list)
    """Entries of the sites folder that are not read (`X.YAML`, `x.json`, folders)."""


def select(checked: dict[str, Checked], last_good: dict[str, Checked],
           verifier: Verdicts | None, max_certificates: int | None = None,
           fence: paths.Fence | None = None, indexes: Indexes | None = None) -> Selection:
    """Which version of each site serves: the new one when it passes every check, else
    its last good one, else none. The paths of both are judged first (`fence`, built for
    this pass or kept since the last full one); then the cross-site checks (on `indexes`,
    kept across passes by the daemon) and Envoy's verdict."""
    index = indexes or Indexes()
    result = Selection(serving={})
    path_warnings: dict[str, dict[str, list[Problem]]] = {}
    judged = checked
    if fence is not None:
        fenced = _fence(checked, last_good, fence, result, index)
        judged, last_good, path_warnings = fenced.judged, fenced.good, fenced.warnings
    for name in checked:  # in the folder's order, which settles who holds a file first
        item = judged[name]
        if item.problems:
            result.problems.setdefault(name, []).extend(item.problems)
        chosen = last_good.get(name) if item.problems else item
        if chosen is not None:
            result.serving[name] = chosen
    _settle(result, last_good, lambda serving: _conflicts(serving, index.domains),
            lambda name, serving: _holds_domains(name, serving, last_good, index.domains))
    for cross in (crossing.wildcard_conflicts, crossing.port_conflicts):
        _settle_claims(result, last_good, cross, index.crossing)
    _settle(result, last_good, lambda serving: _name_conflicts(serving, index.names))
    if fence is not None:
        _settle(result, last_good, lambda serving: _file_conflicts(serving,
                                                                   index.files(fence)))
    if fence is not None and fence.exclusive_upstreams:
        _settle(result, last_good, lambda serving: _upstream_conflicts(
            serving, index.upstreams(fence)))
    if max_certificates is not None:
        _settle(result, last_good, lambda serving: _certificate_overflow(
            serving, last_good, max_certificates, index.tls))
    result.warnings = {n: [*c.warnings, *path_warnings.get(n, {}).get(c.digest, [])]
                       for n, c in result.serving.items()
                       if c.warnings or (n in path_warnings and c.digest in path_warnings[n])}
    if verifier is not None:
        _settle(result, last_good, lambda serving: verifier.verify(
            [c.resources for c in serving.values() if c.resources is not None],
            {n: c.source for n, c in serving.items()}))
    result.problems = {n: list(bounded(ps)) for n, ps in result.problems.items()}
    return result


def _fence(checked: dict[str, Checked], last_good: dict[str, Checked], fence: paths.Fence,
           result: Selection, index: Indexes) -> Fenced:
    """Judge where each candidate's paths lead now, the new version's and the last good
    one's: a version whose paths fail is not served. When both fail (a symlink planted
    under a path both name), the site stops serving until its paths are fixed. Only the
    sites whose versions changed since the last pass under `fence` are judged again."""
    memo, seen = index.judged(fence), index.fenced(fence)
    for name in replaced(checked, seen.checked) | replaced(last_good, seen.last_good):
        for found in (seen.judged, seen.good, seen.problems, seen.warnings):
            found.pop(name, None)
        if name in checked:
            _fence_site(checked[name], last_good.get(name), fence, memo, seen)
    seen.checked, seen.last_good = dict(checked), dict(last_good)
    for name, problems in seen.problems.items():
        result.problems.setdefault(name, []).extend(problems)
    return seen


def _fence_site(current: Checked, previous: Checked | None, fence: paths.Fence,
                memo: dict[tuple[str, str, str], Judged], into: Fenced) -> None:
    """One site's entries of `into`: its judged version, its last good one if its paths
    hold, what both warn of."""
    name, judged = current.name, current
    if not current.problems:
        problems, found = _judge(current, fence, memo)
        if found:
            into.warnings.setdefault(name, {})[current.digest] = found
        if problems:
            judged = Checked(name=name, source=current.source, digest=current.digest,
                             problems=tuple(problems))
    into.judged[name] = judged
    if previous is None:
        return
    if previous.digest == current.digest and not current.problems:
        if not judged.problems:
            into.good[name] = previous
        return
    problems, found = _judge(previous, fence, memo)
    if found:
        into.warnings.setdefault(name, {})[previous.digest] = found
    if not problems:
        into.good[name] = previous
    elif judged.problems:  # else the new version serves and the old one is moot
        into.problems[name] = [
            dataclasses.replace(p, reason=f"its last good version too: {p.reason}")
            for p in problems]


def _judge(item: Checked, fence: paths.Fence,
           judged: dict[tuple[str, str, str], Judged]) -> Judged:
    """(problems, warnings) of the paths one version uses, resolved by `fence` (once a
    Fence: `judged` keeps its findings)."""
    key = (item.name, item.digest, item.source)
    if key in judged:
        return judged[key]
    problems: list[Problem] = []
    warnings: dict[str, Problem] = {}
    for use in item.uses:
        verdict = fence.judge(use)
        if verdict.problem is not None:
            problems.append(Problem(item.source, use.field, verdict.problem, use.line))
        elif verdict.warning is not None:
            warnings.setdefault(verdict.warning, Problem(item.source, use.field,
                                                         verdict.warning, use.line))
    judged[key] = (problems, list(warnings.values()))
    return judged[key]


def _name_conflicts(serving: dict[str, Checked],
                    names: Owners[tuple[str, str], tuple[str, str]]) -> dict[str, list[Problem]]:
    names.update(serving)
    contested = names.contested()
    return sharing.name_conflicts(contested, _sources(serving, contested))


def _sources(serving: dict[str, Checked], contested: Contested[Any, Any]) -> dict[str, str]:
    return {site: serving[site].source for _, users in contested for site, _ in users}


def _file_conflicts(serving: dict[str, Checked],
                    files: Owners[str, claims.FileClaim]) -> dict[str, list[Problem]]:
    files.update(serving)
    found = claims.written_files([(target, sorted(
        ((site, serving[site].source, claim) for site, claim in users),
        key=lambda u: (u[1], u[2][0]))) for target, users in files.contested()])
    return {n: [Problem(serving[n].source, f, reason) for f, reason in items]
            for n, items in found.items()}


def _upstream_conflicts(serving: dict[str, Checked], upstreams: Owners[
        tuple[str, str], tuple[str, str]]) -> dict[str, list[Problem]]:
    upstreams.update(serving)
    contested = upstreams.contested()
    return sharing.name_conflicts(
        contested, _sources(serving, contested), "an upstream belongs to one site (another"
        " would reach it past that site's access list and routes): give each site its own")


def _settle_claims(result: Selection, last_good: dict[str, Checked],
                   cross: Callable[[dict[str, crossing.Sites]], crossing.Found],
                   index: Owners[str, None]) -> None:
    """`_settle` a cross check whose conflicts name their claims: a site whose last good
    version already held every claim it is faulted for holds them. `index`: the sites
    the check may concern."""
    def find(serving: dict[str, Checked]) -> crossing.Found:
        index.update(serving)
        return cross({n: crossing.Sites(
            source=c.source, uses=c.uses, domains=c.domains,
            tls=c.resources is not None and c.resources.tls is not None,
            passthrough=c.resources is not None and c.resources.passthrough is not None)
            for n, c in ((n, serving[n]) for n, _ in index.claimants("crossing"))})

    def holds(name: str, serving: dict[str, Checked]) -> bool:
        previous = last_good.get(name)
        if previous is None:
            return False
        held = {(u.kind, u.path) for u in previous.uses} | {
            ("domain", d) for d in previous.domains}
        return all(claim in held for claim, _ in find(serving).get(name, []))

    _settle(result, last_good, lambda serving: {
        n: [p for _, p in found] for n, found in find(serving).items()}, holds)


def _certificate_overflow(serving: dict[str, Checked], last_good: dict[str, Checked],
                          limit: int, tls_sites: Owners[str, None]) -> dict[str, list[Problem]]:
    tls_sites.update(serving)
    secrets = {}
    for name, _ in tls_sites.claimants("tls"):
        item = serving[name]
        assert item.resources is not None and item.resources.tls is not None
        secrets[name] = (item.source, item.resources.tls.secret_name)
    return tls.certificate_overflow(secrets, limit, {
        n for n in secrets if _is_last_good(serving[n], last_good)})


def _conflicts(serving: dict[str, Checked],
               domains: Owners[str, None]) -> dict[str, list[Problem]]:
    domains.update(serving)
    contested = domains.contested()
    return sharing.domain_conflicts(contested, _sources(serving, contested))


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


def _holds_domains(name: str, serving: dict[str, Checked], last_good: dict[str, Checked],
                   domains: Owners[str, None]) -> bool:
    """The site's last good version already has every domain it shares with another
    serving site: it holds them, and goes on taking its own edits while a copy or a
    newcomer claims them too (`cp blog.yaml blog-old.yaml` must not freeze blog).
    `domains` is the index as `_conflicts` just updated it to `serving`."""
    previous = last_good.get(name)
    if previous is None:
        return False
    shared = {d for d in serving[name].domains
              if any(site != name for site, _ in domains.claimants(d))}
    return shared <= set(previous.domains)


def _is_last_good(item: Checked, last_good: dict[str, Checked]) -> bool:
    previous = last_good.get(name := item.name)
    return previous is not None and previous.digest == item.digest and name in last_good
