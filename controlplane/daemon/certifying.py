"""The pass's side of automatic HTTPS: which serving sites ask for an ACME certificate,
the challenge answers put first in their virtual hosts for this pass's route file, Envoy's
confirmation of them handed back to the issuer, and the issuer's notes as site warnings.
The issuer (`issuing.issuer`) runs the orders in its own thread; nothing here waits."""

from __future__ import annotations

from controlplane.envoy.files import Report
from controlplane.errors import Problem
from controlplane.intake.checking import Checked
from controlplane.issuing.issuer import Issuer
from controlplane.render import challenges
from controlplane.render.rendering import SiteResources
from controlplane.settings import Settings

Answers = dict[str, dict[str, str]]
__all__ = ["Issuer", "applied", "resources", "warnings"]


def resources(issuer: Issuer | None, serving: dict[str, Checked]) -> tuple[
        list[SiteResources], Answers]:
    """The serving sites' resources, each with its pending challenge answers first."""
    if issuer is not None:
        issuer.want({name: item.domains for name, item in serving.items() if item.acme})
    found = issuer.answers() if issuer is not None else {}
    answers = {name: tokens for name, tokens in found.items() if name in serving}
    return [challenges.with_answers(c.resources, answers.get(name, {}))
            for name, c in serving.items() if c.resources is not None], answers


def applied(issuer: Issuer | None, answers: Answers, report: Report, retry: bool,
            settings: Settings) -> None:
    """Tell the issuer the answers serve: Envoy confirmed them (or, with no admin socket
    to ask, they were written in order)."""
    if issuer is not None:
        issuer.applied(answers, not retry and (
            report.confirmed or settings.admin_socket is None))


def warnings(issuer: Issuer | None, into: dict[str, list[Problem]],
             serving: dict[str, Checked]) -> None:
    """The issuer's notes ("waiting for certificate: ...") as warnings of serving sites."""
    for name, note in (issuer.notes() if issuer is not None else {}).items():
        if name in serving:
            into.setdefault(name, []).append(Problem(serving[name].source, "tls.acme", note))
