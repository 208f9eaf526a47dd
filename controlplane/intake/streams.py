"""A TCP or passthrough site file on its own: its kind, its validation into a
`StreamSite`, and the places it makes Envoy use (its listen address, its upstream),
judged at every pass with the others (`paths.Fence`).
"""

from __future__ import annotations

from pydantic import ValidationError

from controlplane.errors import Problem, SiteError
from controlplane.intake.loading import Document
from controlplane.intake.validating import problem_of
from controlplane.site.places import Kind, Use
from controlplane.site.streams import KINDS, StreamSite, StreamSpec


def kind_of(document: Document, where: str) -> str:
    """The site's kind (`http` when the file names none), or SiteError."""
    data = document.data
    kind = data.get("kind", "http") if isinstance(data, dict) else "http"
    if kind not in KINDS:
        raise SiteError([Problem(where, "kind", f"{kind!r} is not a site kind; write one of"
                                 f" {', '.join(KINDS)}", document.lines.get(("kind",)))])
    return str(kind)


def validate(name: str, where: str, digest: str, document: Document) -> StreamSite:
    """The document as a TCP or passthrough site, or SiteError with every problem."""
    try:
        spec = StreamSpec.model_validate(document.data)
    except ValidationError as exc:
        raise SiteError([problem_of(where, error, document) for error in exc.errors()]
                        ) from None
    return StreamSite(name=name, spec=spec, source=where, digest=digest)


def path_uses(site: StreamSite, document: Document) -> tuple[Use, ...]:
    """The listen address of a TCP site and every upstream endpoint, with their fields."""
    uses = []
    if site.spec.listen is not None:
        uses.append(Use(field="listen", kind="listen", path=site.spec.listen,
                        line=document.lines.get(("listen",))))
    for i, endpoint in enumerate(site.endpoints()):
        key: Kind = "socket" if endpoint.socket is not None else "address"
        spelled = [("upstream", "endpoints", i, key), ("upstream", i, key), ("upstream", key)]
        path = next((p for p in spelled if p in document.lines), spelled[0])
        uses.append(Use(field=".".join(str(p) for p in path), kind=key,
                        path=endpoint.socket or str(endpoint.address),
                        line=document.lines.get(path)))
    return tuple(uses)
