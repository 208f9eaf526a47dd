"""Where one site's listener or name crosses another's, judged across the sites of a pass.

- A TCP site's listen port is a port no site may route to: its own upstream there would
  open a connection per connection until Envoy runs out of descriptors, and another
  site's would reach that site's upstream past its own rules. And a TCP site may not
  listen on a port another site already reaches on loopback: it would take that traffic.
  Across two sites this is a conflict that names the holder, who keeps it.
- A passthrough site may not take a name under another site's TLS wildcard: Envoy gives
  the more specific SNI match the connection, so `shop.example.com` would leave the
  wildcard's site.

Each conflict comes with the claim it is about (a use, a domain), so the caller can keep
a site whose last good version already held that claim (`selecting`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.errors import Problem
from controlplane.site.places import Use

Claim = tuple[str, str]
"""What a conflict is about: (use kind, path) of a use, or ("domain", name)."""
Found = dict[str, list[tuple[Claim, Problem]]]


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))


def reaches(upstream: str, listen: str) -> bool:
    """Whether a TCP upstream `HOST:PORT` may connect to a listener bound at `listen`:
    the same port, and the listener on every address, or the upstream on loopback (any
    loopback address: a listener on one may be on all), or both on one address."""
    host, _, port = upstream.rpartition(":")
    bound, _, listen_port = listen.rpartition(":")
    if int(port) != int(listen_port):
        return False
    target, at = _ip(host), _ip(bound)
    return at.is_unspecified or target.is_loopback or target == at


def loops(uses: tuple[Use, ...], source: str) -> list[Problem]:
    """A site whose upstream is its own listener."""
    listens = [u for u in uses if u.kind == "listen"]
    return [Problem(source, use.field, f"{use.path!r} is this site's own listener"
                    f" ({listen.path}); every connection would open another until Envoy"
                    " runs out of file descriptors: name the service behind it", use.line)
            for use in uses if use.kind == "address" for listen in listens
            if reaches(use.path, listen.path)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sites:
    """What the cross checks read of each serving site."""

    source: str
    uses: tuple[Use, ...] = ()
    domains: tuple[str, ...] = ()
    tls: bool = False
    passthrough: bool = False


def port_conflicts(sites: Mapping[str, Sites]) -> Found:
    """Each pair of sites where one's TCP upstream reaches the other's listen port; both
    are told, each naming the other's file."""
    listens = [(name, use) for name, site in sites.items() for use in site.uses
               if use.kind == "listen"]
    found: Found = {}
    for name, site in sorted(sites.items()):
        for use in site.uses:
            if use.kind != "address":
                continue
            for holder, listen in listens:
                if holder == name or not reaches(use.path, listen.path):
                    continue
                other = sites[holder]
                found.setdefault(name, []).append(((use.kind, use.path), Problem(
                    site.source, use.field, f"{use.path!r} is the listen port of"
                    f" {other.source} ({listen.path}); one site may not route to another's"
                    " listener: name the service itself", use.line)))
                found.setdefault(holder, []).append(((listen.kind, listen.path), Problem(
                    other.source, listen.field, f"port {listen.path.rpartition(':')[2]} is"
                    f" where {site.source} reaches its upstream ({use.path}); a TCP site"
                    " may not listen there: pick another port", listen.line)))
    return found


def wildcard_conflicts(sites: Mapping[str, Sites]) -> Found:
    """Each passthrough site's name under another site's TLS wildcard; both are told."""
    wildcards = [(name, d) for name, site in sites.items() if site.tls
                 for d in site.domains if d.startswith("*.")]
    found: Found = {}
    for name, site in sorted(sites.items()):
        if not site.passthrough:
            continue
        for domain in site.domains:
            for holder, wildcard in wildcards:
                if holder == name or domain == wildcard or not domain.endswith(wildcard[1:]):
                    continue
                other = sites[holder]
                found.setdefault(name, []).append((("domain", domain), Problem(
                    site.source, "domains", f"{domain!r} is under the TLS wildcard"
                    f" {wildcard!r} of {other.source}; its connections would leave that"
                    " site: name a domain outside it, or drop it there")))
                found.setdefault(holder, []).append((("domain", wildcard), Problem(
                    other.source, "domains", f"{wildcard!r} covers {domain!r}, which the"
                    f" passthrough site {site.source} claims")))
    return found
