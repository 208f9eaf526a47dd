"""The cross-site indexes, kept between passes: which sites claim each domain, each
generated name and each upstream. At 10,000 sites, building them again every pass cost
more than everything else a one-site change does; kept, a pass updates the entries of
the sites whose version changed and reads only the keys with two claimants."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

from controlplane.errors import Problem
from controlplane.intake import claims
from controlplane.intake.checking import Checked
from controlplane.intake.paths import Fence

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")

Contested = list[tuple[K, list[tuple[str, P]]]]
"""Each key with two claims or more, sorted, with its (site, payload) claims, sorted."""


class Owners(Generic[K, P]):
    """Key -> the sites that claim it, for one kind of claim (`claims_of` a version)."""

    def __init__(self, claims_of: Callable[[Checked], Iterable[tuple[K, P]]]) -> None:
        self._claims_of = claims_of
        self._held: dict[str, tuple[Checked, tuple[tuple[K, P], ...]]] = {}
        self._owners: dict[K, list[tuple[str, P]]] = {}
        self._contested: set[K] = set()

    def update(self, serving: Mapping[str, Checked]) -> None:
        """Follow `serving`: only the sites whose version is not the one indexed cost."""
        held = self._held
        if len(held) != len(serving) or held.keys() != serving.keys():
            for name in [n for n in held if n not in serving]:
                self._drop(name)
        for name, item in serving.items():
            seen = held.get(name)
            if seen is None or seen[0] is not item:
                if seen is not None:
                    self._drop(name)
                self._add(name, item)

    def contested(self) -> Contested[K, P]:
        """The keys that two claims or more share (of one site or several)."""
        # Keys and claims are str, tuples of str, or (str, None) with the str unique.
        return sorted((key, sorted(self._owners[key]))
                      for key in self._contested)

    def claimants(self, key: K) -> list[tuple[str, P]]:
        return self._owners.get(key, [])

    def _add(self, name: str, item: Checked) -> None:
        found = tuple(dict.fromkeys(self._claims_of(item)))
        self._held[name] = (item, found)
        for key, payload in found:
            users = self._owners.setdefault(key, [])
            users.append((name, payload))
            if len(users) > 1:
                self._contested.add(key)

    def _drop(self, name: str) -> None:
        _, found = self._held.pop(name)
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
        self._judged: dict[tuple[str, str, str], Judged] = {}

    def upstreams(self, fence: Fence) -> Owners[tuple[str, str], tuple[str, str]]:
        """What each site's upstreams resolve to under `fence` (a new one starts anew)."""
        self._follow(fence)
        return self._upstreams

    def judged(self, fence: Fence) -> dict[tuple[str, str, str], Judged]:
        """(site, digest, file) -> what `fence` found of that version's paths."""
        self._follow(fence)
        return self._judged

    def _follow(self, fence: Fence) -> None:
        if fence is not self._fence:
            self._fence, self._judged = fence, {}
            self._upstreams = Owners(lambda c: (((kind, target), (field, content))
                                                for kind, target, field, content
                                                in claims.upstreams(c.uses, fence)))


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
