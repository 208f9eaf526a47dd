"""Each site's status after a pass. At 10,000 sites one change must not rebuild 10,000
statuses: a site whose serving version, problems, warnings and state are what the last
pass recorded keeps its `SiteStatus` object (and so its line of the status file)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from controlplane.daemon.statusfile import SiteStatus, clip_problems
from controlplane.errors import Problem
from controlplane.intake.checking import Checked
from controlplane.intake.indexes import replaced
from controlplane.intake.selecting import Selection

StateOf = Callable[[str, Checked | None, list[Problem]], str]
"""(site, its serving version, its problems) -> the state the status says."""


@dataclass(frozen=True, slots=True)
class _Seen:
    """What one pass's statuses came from: copies, as the daemon's dicts move on."""

    serving: dict[str, Checked]
    checked: dict[str, Checked]
    noted: set[str]
    """The sites with problems, warnings or a listener that cannot bind."""
    confirmed: dict[str, str]
    state: Hashable
    """What every site's state depends on (Envoy answering, asked or not)."""


class Recorder:
    """Each site's status after a pass, kept between passes (by one reconciler): only the
    sites whose serving or checked version is another object, that have or had something
    to say, or whose confirmed version moved are looked at again, while what every
    site's state depends on stays; at 10,000 sites that is one site, not 10,000."""

    def __init__(self) -> None:
        self._seen: _Seen | None = None

    def forget(self) -> None:
        """Look at every site again next time (the statuses given out were not recorded)."""
        self._seen = None

    def statuses(self, selection: Selection, checked: dict[str, Checked] | None,
                 blocked: dict[str, list[str]], state_of: StateOf, *,
                 previous: dict[str, SiteStatus], confirmed: dict[str, str],
                 state: Hashable, now: float) -> tuple[dict[str, SiteStatus], set[str] | None]:
        """The status of every site the pass saw (serving, refused, or in the folder),
        and the names looked at again (None: all). `previous`: the statuses as the
        last pass left them; `confirmed`: site -> the digest Envoy confirmed;
        `state`: what else `state_of` reads."""
        found = checked or {}
        noted = {*selection.problems, *selection.warnings, *blocked}
        seen, self._seen = self._seen, _Seen(dict(selection.serving), dict(found), noted,
                                             dict(confirmed), state)
        if seen is None or seen.state != state:
            return site_statuses(selection, checked, blocked, state_of, previous, now), None
        names = (replaced(selection.serving, seen.serving) | replaced(found, seen.checked)
                 | noted | seen.noted | replaced(confirmed, seen.confirmed))
        sites = dict(previous)
        for name in names:
            sites.pop(name, None)
        sites.update(site_statuses(selection, checked, blocked, state_of, previous, now,
                                   names))
        return sites, names


def site_statuses(selection: Selection, checked: dict[str, Checked] | None,
                  blocked: dict[str, list[str]], state_of: StateOf,
                  previous: dict[str, SiteStatus], now: float,
                  among: Iterable[str] | None = None) -> dict[str, SiteStatus]:
    """The status of every site a pass saw (or of those `among` them it saw): serving,
    refused, or in the folder."""
    names = set(selection.serving) | set(selection.problems) | set(checked or {})
    sites = {}
    for name in names if among is None else [n for n in among if n in names]:
        serving = selection.serving.get(name)
        old = previous.get(name)
        if old is not None and serving is not None and _unchanged(
                old, serving, name, selection, blocked) and (
                state_of(name, serving, []) == old.state):
            sites[name] = old
            continue
        causes = [Problem(serving.source if serving else name, "", cause)
                  for cause in blocked.get(name, ())]
        problems = clip_problems([*selection.problems.get(name, ()), *causes])
        sites[name] = SiteStatus(
            state=state_of(name, serving, problems),
            file=serving.source if serving else (checked or {})[name].source,
            problems=problems, serving=serving.digest if serving else None,
            changed_at=now, warnings=clip_problems(list(selection.warnings.get(name, ()))),
            certificate_expiry=serving.expires_at if serving else None)
    return sites


def _unchanged(old: SiteStatus, serving: Checked, name: str, selection: Selection,
               blocked: dict[str, list[str]]) -> bool:
    """The common case, cheaply: the same version serves, with nothing to say about it."""
    return (old.serving == serving.digest and old.file == serving.source
            and not old.problems and not old.warnings
            and old.certificate_expiry == serving.expires_at
            and name not in selection.problems and name not in selection.warnings
            and name not in blocked)
