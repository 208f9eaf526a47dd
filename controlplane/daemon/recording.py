"""Each site's status after a pass. At 10,000 sites one change must not rebuild 10,000
statuses: a site whose serving version, problems, warnings and state are what the last
pass recorded keeps its `SiteStatus` object (and so its line of the status file)."""

from __future__ import annotations

from collections.abc import Callable

from controlplane.daemon.statusfile import SiteStatus, clip_problems
from controlplane.errors import Problem
from controlplane.intake.checking import Checked
from controlplane.intake.selecting import Selection

StateOf = Callable[[str, Checked | None, list[Problem]], str]
"""(site, its serving version, its problems) -> the state the status says."""


def site_statuses(selection: Selection, checked: dict[str, Checked] | None,
                  blocked: dict[str, list[str]], state_of: StateOf,
                  previous: dict[str, SiteStatus], now: float) -> dict[str, SiteStatus]:
    """The status of every site a pass saw: serving, refused, or in the folder."""
    names = set(selection.serving) | set(selection.problems) | set(checked or {})
    sites = {}
    for name in names:
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
