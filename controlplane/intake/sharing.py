"""The checks that look across sites: a domain or a generated name (a cluster, a stats
prefix, a secret, an upstream) that two sites claim makes both invalid, each told who
else claims it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.errors import Problem

NAMED_SHARERS = 3
"""How many of the other sharers a conflict names: the rest are counted, so that a
thousand sites on one socket cost a thousand short messages, not a million."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainClaim:
    """The domains one site file claims."""

    source: str
    domains: tuple[str, ...]


def domain_conflicts(claims: Mapping[str, DomainClaim]) -> dict[str, list[Problem]]:
    """A domain claimed by two sites makes both invalid; each is told who else claims it
    (at most NAMED_SHARERS of them)."""
    owners: dict[str, list[str]] = defaultdict(list)
    for name, claim in claims.items():
        for domain in claim.domains:
            owners[domain].append(name)
    problems: dict[str, list[Problem]] = defaultdict(list)
    contested = sorted((domain, sorted(names)) for domain, names in owners.items()
                       if len(names) > 1)  # only these are sorted, as in name_conflicts
    for domain, names in contested:
        for name in names:
            problems[name].append(Problem(claims[name].source, "domains", f"{domain!r} is"
                                          f" also claimed by {_others(claims, names, name)}"))
    return dict(problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class NameClaim:
    """The names one site's resources give Envoy: (kind, name, field, content)."""

    source: str
    names: tuple[tuple[str, str, str, str], ...]


def name_conflicts(claims: Mapping[str, NameClaim], rule: str = "generated names must be"
                   " unique across sites") -> dict[str, list[Problem]]:
    """A generated name (a cluster, a stats prefix, a secret...) used by two sites makes
    both invalid, each told the other's file; a name with the same non-empty content in
    each (a shared certificate's secret) is shared, not a conflict. One problem per site
    and group of sharers (two names the same sites share are told once)."""
    owners: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for site, claim in claims.items():
        for kind, name, field, content in set(claim.names):
            owners[(kind, name)].append((site, field, content))
    problems: dict[str, list[Problem]] = defaultdict(list)
    groups: dict[frozenset[str], int] = {}
    told: set[tuple[str, int]] = set()
    # Only the names with two users are sorted (10,000 sites: ~40,000 names, nearly
    # all with one): the messages come out in the same order either way.
    contested = sorted((key, sorted(users)) for key, users in owners.items() if len(users) > 1)
    for (kind, name), users in contested:
        contents = {content for _, _, content in users}
        sharers = sorted({site for site, _, _ in users})
        if len(sharers) < 2 or (len(contents) == 1 and "" not in contents):
            continue
        group = groups.setdefault(frozenset(sharers), len(groups))
        for site, field, _ in users:
            if (site, group) in told:
                continue  # the same sites share another name: told once
            told.add((site, group))
            problems[site].append(Problem(
                claims[site].source, field, f"the {kind} {name!r} is also used by"
                f" {_others(claims, sharers, site)}; {rule}"))
    return dict(problems)


def _others(claims: Mapping[str, DomainClaim] | Mapping[str, NameClaim], sharers: list[str],
            site: str) -> str:
    """The files of the other sharers, sorted: the first NAMED_SHARERS, then a count."""
    others = [claims[o].source for o in sharers[:NAMED_SHARERS + 1] if o != site]
    more = len(sharers) - 1 - NAMED_SHARERS
    named = ", ".join(others[:NAMED_SHARERS])
    return named if more <= 0 else f"{named} and {more:,} other files"
