"""The checks that look across sites: a domain or a generated name (a cluster, a stats
prefix, a secret, an upstream) that two sites claim makes both invalid, each told who
else claims it. They read only the contested keys of an index (`intake/indexes`), so
their cost follows the conflicts, not the number of sites.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from controlplane.errors import Problem

NAMED_SHARERS = 3
"""How many of the other sharers a conflict names: the rest are counted, so that a
thousand sites on one socket cost a thousand short messages, not a million."""

NameUsers = list[tuple[str, tuple[str, str]]]
"""The (site, (field, content)) claims of one generated name."""


def domain_conflicts(contested: Iterable[tuple[str, list[tuple[str, None]]]],
                     sources: Mapping[str, str]) -> dict[str, list[Problem]]:
    """A domain claimed by two sites makes both invalid; each is told who else claims it
    (at most NAMED_SHARERS of them). `sources`: each claimant's file."""
    problems: dict[str, list[Problem]] = defaultdict(list)
    for domain, users in contested:
        names = sorted({site for site, _ in users})
        if len(names) < 2:
            continue
        for name in names:
            problems[name].append(Problem(sources[name], "domains", f"{domain!r} is"
                                          f" also claimed by {_others(sources, names, name)}"))
    return dict(problems)


def name_conflicts(contested: Iterable[tuple[tuple[str, str], NameUsers]],
                   sources: Mapping[str, str], rule: str = "generated names must be"
                   " unique across sites") -> dict[str, list[Problem]]:
    """A generated name (a cluster, a stats prefix, a secret...) used by two sites makes
    both invalid, each told the other's file; a name with the same non-empty content in
    each (a shared certificate's secret) is shared, not a conflict. One problem per site
    and group of sharers (two names the same sites share are told once)."""
    problems: dict[str, list[Problem]] = defaultdict(list)
    groups: dict[frozenset[str], int] = {}
    told: set[tuple[str, int]] = set()
    for (kind, name), users in contested:
        contents = {content for _, (_, content) in users}
        sharers = sorted({site for site, _ in users})
        if len(sharers) < 2 or (len(contents) == 1 and "" not in contents):
            continue
        group = groups.setdefault(frozenset(sharers), len(groups))
        for site, (field, _) in users:
            if (site, group) in told:
                continue  # the same sites share another name: told once
            told.add((site, group))
            problems[site].append(Problem(
                sources[site], field, f"the {kind} {name!r} is also used by"
                f" {_others(sources, sharers, site)}; {rule}"))
    return dict(problems)


def _others(sources: Mapping[str, str], sharers: list[str], site: str) -> str:
    """The files of the other sharers, sorted: the first NAMED_SHARERS, then a count."""
    others = [sources[o] for o in sharers[:NAMED_SHARERS + 1] if o != site]
    more = len(sharers) - 1 - NAMED_SHARERS
    named = ", ".join(others[:NAMED_SHARERS])
    return named if more <= 0 else f"{named} and {more:,} other files"
