"""The cross-site indexes, kept between passes: which sites claim each domain, each
generated name and each upstream. At 10,000 sites, building them again every pass cost
more than everything else a one-site change does; kept, a pass updates the entries of
the sites whose version changed and reads only the keys with two claimants."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from controlplane.errors import Problem
from controlplane.intake import claims
from controlplane.intake.checking import Checked
from controlplane.intake.paths import Fence

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")

V = TypeVar("V")

Contested = list[tuple[K, list[tuple[str, P]]]]
"""Each key with two claims or more, sorted, with its (site, payload) claims, sorted."""


def replaced(new: Mapping[str, V], old: Mapping[str, V]) -> set[str]:
    """The names whose entry is not the very object it was: added, removed or replaced.
    Comprehensions at C speed: about 1 ms over 10,000 sites, where a loop doing a
    site's work costs 10-20 ms; the passes use it to do that work for these alone."""
    if new is old:
        return set()
    found = {name for name, value in new.items() if old.get(name, _ABSENT) is not value}
    if len(old) != len(new) - sum(name not in old for name in found):
        found.update(name for name in old if name not in new)
    return found


_ABSENT: Any = object()


class Owners(Generic[K, P]):
    """Key -> the sites that claim it, for one kind of claim (`claims_of` a version)."""

    def __init__(self, claims_of: Callable[[Checked], Iterable[tuple[K, P]]]) -> None:
        self._claims_of = claims_of
        self._items: dict[str, Checked] = {}
        self._held: dict[str, tuple[tuple[K, P], ...]] = {}
        self._owners: dict[K, list[tuple[str, P]]] = {}
        self._contested: set[K] = set()

    def update(self, serving: Mapping[str, Checked]) -> None:
        """Follow `serving`: only the sites whose version is not the one indexed cost."""
        for name in replaced(serving, self._items):
            if name in self._items:
                self._drop(name)
            if name in serving:
                self._add(name, serving[name])

    def contested(self) -> Contested[K, P]:
        """The keys that two claims or more share (of one site or several)."""
        # Keys and claims are str, tuples of str, or (str, None) with the str unique.
        return sorted((key, sorted(self._owners[key]))
                      for key in self._contested)

    def claimants(self, key: K) -> list[tuple[str, P]]:
        return self._owners.get(key, [])

    def _add(self, name: str, item: Checked) -> None:
        found = tuple(dict.fromkeys(self._claims_of(item)))
        self._items[name], self._held[name] = item, found
        for key, payload in found:
            users = self._owners.setdefault(key, [])
            users.append((name, payload))
            if len(users) > 1:
                self._contested.add(key)

    def _drop(self, name: str) -> None:
        del self._items[name]
        found = self._held.pop(name)
        for key in {key for key, _ in found}:
            users = [u for u in self._owners[key] if u[0] != name]
            if users:
                self._owners[key] = users
            else:
                del self._owners[key]
            if len(users) < 2:
                self._contested.discard(key)


Judged = tuple[list[Problem], list[Problem]]
"""The problems and warnings of one version's paths under one Fence."""


@dataclass(slots=True)
class Fenced:
    """What `select`'s path check found under one Fence, per site, beside the versions
    it judged (copies: the daemon updates its dicts in place): the next pass judges
    only the sites whose new or last good version is another object."""

    checked: dict[str, Checked] = field(default_factory=dict)
    last_good: dict[str, Checked] = field(default_factory=dict)
    judged: dict[str, Checked] = field(default_factory=dict)
    """Each checked version, or a copy carrying the problems of its paths."""
    good: dict[str, Checked] = field(default_factory=dict)
    """The last good versions whose paths still hold."""
    problems: dict[str, list[Problem]] = field(default_factory=dict)
    """Sites whose new and last good versions both fail: the last good one's problems."""
    warnings: dict[str, dict[str, list[Problem]]] = field(default_factory=dict)
    """Site -> version digest -> what its paths warn of (only where they do)."""


class Indexes:
    """The indexes of one daemon across its passes (or of one `select`)."""

    def __init__(self) -> None:
        self.domains: Owners[str, None] = Owners(lambda c: ((d, None) for d in c.domains))
        self.names: Owners[tuple[str, str], tuple[str, str]] = Owners(_names)
        self.crossing: Owners[str, None] = Owners(
            lambda c: [("crossing", None)] if _crosses(c) else [])
        """The sites the port and wildcard checks read: TCP sites, TCP upstreams,
        passthrough sites and TLS wildcards (under one key: `claimants("crossing")`)."""
        self._fence: Fence | None = None
        self._upstreams: Owners[tuple[str, str], tuple[str, str]] = Owners(lambda c: ())
        self._files: Owners[str, claims.FileClaim] = Owners(lambda c: ())
        self._judged: dict[tuple[str, str, str], Judged] = {}
        self._fenced = Fenced()
        self.tls: Owners[str, None] = Owners(lambda c: [("tls", None)] if (
            c.resources is not None and c.resources.tls is not None) else [])
        """The TLS sites (under one key: `claimants("tls")`), for the certificate count."""

    def upstreams(self, fence: Fence) -> Owners[tuple[str, str], tuple[str, str]]:
        """What each site's upstreams resolve to under `fence` (a new one starts anew)."""
        self._follow(fence)
        return self._upstreams

    def files(self, fence: Fence) -> Owners[str, claims.FileClaim]:
        """What each site's files (read, appended to, served as pages) resolve to under
        `fence`."""
        self._follow(fence)
        return self._files

    def judged(self, fence: Fence) -> dict[tuple[str, str, str], Judged]:
        """(site, digest, file) -> what `fence` found of that version's paths."""
        self._follow(fence)
        return self._judged

    def fenced(self, fence: Fence) -> Fenced:
        """What the last path check under `fence` found (empty under a new one)."""
        self._follow(fence)
        return self._fenced

    def _follow(self, fence: Fence) -> None:
        if fence is not self._fence:
            self._fence, self._judged, self._fenced = fence, {}, Fenced()
            self._upstreams = Owners(lambda c: (((kind, target), (field, content))
                                                for kind, target, field, content
                                                in claims.upstreams(c.uses, fence)))
            self._files = Owners(lambda c: claims.file_claims(c.uses, fence))


def _crosses(item: Checked) -> bool:
    resources = item.resources
    return any(u.kind in ("listen", "address") for u in item.uses) or (
        resources is not None and (resources.passthrough is not None or (
            resources.tls is not None and any(d.startswith("*.") for d in item.domains))))


def _names(item: Checked) -> Iterable[tuple[tuple[str, str], tuple[str, str]]]:
    if item.resources is None:
        return ()
    return (((kind, name), (field, content))
            for kind, name, field, content in claims.names(item.resources))
