"""ACME HTTP-01 answers as routes: while an order runs, each of its tokens is a direct
response placed first in the site's virtual host, so it answers on the HTTP listener
before any redirect to HTTPS, and with every optional filter of the listener (access
list, rate limit, CORS, basic auth, the auth service, error pages, compression) off
(`filters.bypass_all`): the ACME server's validators come from anywhere, and
what they fetch is public by design (the token and the account key's thumbprint).

Pure: the routes are added to a rendered site at assembly, through the same RDS file and
make-before-break publication as any change, and removed once the order ends.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from controlplane.render.filters import bypass_all
from controlplane.render.rendering import SiteResources, fragment

PREFIX = "/.well-known/acme-challenge/"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
ANSWER = re.compile(r"^[A-Za-z0-9_-]{1,256}\.[A-Za-z0-9_-]{1,256}$")
_OFF = bypass_all()


def route(token: str, answer: str) -> dict[str, Any]:
    """The exact path of one token, answered with its key authorization."""
    if not TOKEN.match(token) or not ANSWER.match(answer):
        raise ValueError(f"not an HTTP-01 token and key authorization: {token!r}")
    return {"name": f"acme-challenge-{token[:32]}",
            "match": {"path": PREFIX + token},
            "direct_response": {"status": 200, "body": {"inline_string": answer}},
            "response_headers_to_add": [{"header": {"key": "content-type",
                                                    "value": "text/plain"}}],
            "typed_per_filter_config": dict(_OFF)}


def with_answers(resources: SiteResources, answers: Mapping[str, str]) -> SiteResources:
    """The site with its pending challenges' routes first (token -> key authorization);
    the same object when there are none."""
    if not answers:
        return resources
    vhost = dict(resources.virtual_host)
    first = vhost["routes"][0] if vhost["routes"] else {}
    added = [route(t, answers[t]) for t in sorted(answers)]
    if "metadata" in first:  # the site's access log selects its routes by metadata
        added = [{**r, "metadata": first["metadata"]} for r in added]
    vhost["routes"] = added + list(vhost["routes"])
    return dataclasses.replace(resources, virtual_host=vhost,
                               virtual_host_json=fragment(vhost, None))
