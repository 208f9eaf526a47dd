"""One ACME order for one site, with certbot's `acme` library: the account (its key
created once, kept in the state folder at 0600), a fresh ECDSA P-256 key for the site,
the HTTP-01 challenges answered through Envoy, and the certificate downloaded.

Runs in the issuer's worker thread, never in the daemon's loop. Every request is bounded
(`REQUEST_TIMEOUT_S`), every poll by the order's deadline, and a failure comes out as an
`OrderFailed` saying what happened in the user's words, with the server's `Retry-After`
when it sent one.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from controlplane import __version__
from controlplane.issuing import store
from controlplane.issuing.failures import REQUEST_TIMEOUT_S, OrderFailed
from controlplane.settings import Settings

Publish = Callable[[dict[str, str], float], None]
"""Put these answers (token -> key authorization) in front of Envoy and return once Envoy
confirmed them; raises OrderFailed when it does not by the deadline (monotonic)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Issued:
    chain: bytes
    key: bytes


class _RetryAfter:
    """Keeps the last `Retry-After` the server sent with an error (a requests hook)."""

    def __init__(self) -> None:
        self.seconds: float | None = None

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.status_code >= 400 and "Retry-After" in response.headers:
            at = client.ClientV2.retry_after(response, 0)
            self.seconds = max(0.0, (at - datetime.datetime.now()).total_seconds())


def account_key(settings: Settings) -> JWKEC:
    """The account key: read from `STATE/acme/account.json`, or created there once."""
    found = store.load_json(settings, store.ACCOUNT_FILE).get("key")
    if isinstance(found, dict):
        key = JWK.from_json(found)
        if isinstance(key, JWKEC):
            return key
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    store.save_json(settings, store.ACCOUNT_FILE, {"key": key.to_json()})
    return key


def connect(settings: Settings, hook: _RetryAfter) -> client.ClientV2:
    """A client registered with the directory (an existing account is found by its key);
    `hook` keeps the server's last Retry-After."""
    net = _network(settings, account_key(settings))
    net.session.hooks["response"].append(hook)
    acme = client.ClientV2(client.ClientV2.get_directory(settings.acme_directory, net), net)
    terms = acme.directory.meta.terms_of_service
    if not settings.acme_agree_terms:
        raise OrderFailed("terms", f"the ACME server's terms of service ({terms}) are not"
                          " agreed to: read them, then set acme_agree_terms: true")
    registration = messages.NewRegistration.from_data(
        email=settings.acme_email, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as known:  # this key has an account: use it
        net.account = messages.RegistrationResource(uri=known.location,
                                                    body=messages.Registration())
    return acme


def renewal_info(settings: Settings, chain: bytes) -> tuple[float | None, float]:
    """When the server suggests renewing (ARI; None when it offers no renewal info), and
    when to ask again (Unix times); raises OrderFailed."""
    try:
        net = _network(settings, None)
        acme = client.ClientV2(client.ClientV2.get_directory(settings.acme_directory, net), net)
        at, again = acme.renewal_time(chain)
    except Exception as exc:
        raise describe(exc, settings, None) from exc
    return (at.timestamp() if at is not None else None), again.timestamp()


def _network(settings: Settings, key: JWK | None) -> client.ClientNetwork:
    """Requests bounded in time, verified against `acme_directory_ca` when set (the
    library hands `verify_ssl` to requests' `verify`, which takes a bundle's path)."""
    ca = settings.acme_directory_ca
    verify = cast(bool, str(ca.absolute()) if ca is not None else True)
    return client.ClientNetwork(key, alg=ES256, verify_ssl=verify, timeout=REQUEST_TIMEOUT_S,
                                user_agent=f"controlplane/{__version__}")


def new_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def order(settings: Settings, domains: tuple[str, ...], publish: Publish,
          deadline: float, stop: threading.Event) -> Issued:
    """Order a certificate for `domains`; raises OrderFailed."""
    hook = _RetryAfter()
    try:
        return _order(connect(settings, hook), domains, publish, deadline, stop)
    except OrderFailed:
        raise
    except Exception as exc:
        raise describe(exc, settings, hook.seconds) from exc


def _order(acme: client.ClientV2, domains: tuple[str, ...], publish: Publish,
           deadline: float, stop: threading.Event) -> Issued:
    key = new_key()
    placed = acme.new_order(crypto_util.make_csr(key, list(domains)))
    answers, pending = {}, []
    account = acme.net.key
    assert account is not None
    for authorization in placed.authorizations:
        if authorization.body.status == messages.STATUS_VALID:
            continue  # validated recently: the server reuses it
        name = authorization.body.identifier.value
        challenge = next((c for c in authorization.body.challenges
                          if isinstance(c.chall, challenges.HTTP01)), None)
        if challenge is None:
            raise OrderFailed("invalid", f"the ACME server offers no HTTP-01 challenge for"
                              f" {name}")
        response, validation = challenge.response_and_validation(account)
        answers[challenge.chall.encode("token")] = validation
        pending.append((challenge, response))
    if pending:
        publish(answers, deadline)
        for challenge, response in pending:
            if stop.is_set():
                raise OrderFailed("stopped", "the daemon is stopping")
            acme.answer_challenge(challenge, response)
    wall = datetime.datetime.now() + datetime.timedelta(
        seconds=max(1.0, deadline - time.monotonic()))
    done = acme.poll_and_finalize(placed, wall)
    return Issued(chain=done.fullchain_pem.encode(), key=key)


def describe(exc: BaseException, settings: Settings, retry_after: float | None) -> OrderFailed:
    """An exception of the ACME library or the network, as a reason a user can act on."""
    where = settings.acme_directory
    if isinstance(exc, errors.ValidationError):
        details = []
        for authorization in exc.failed_authzrs:
            for challenge in authorization.body.challenges:
                if challenge.error is not None:
                    details.append(f"{authorization.body.identifier.value}:"
                                   f" {challenge.error.detail or challenge.error.code}")
        return OrderFailed("invalid", "the ACME server could not validate the HTTP-01"
                           f" challenge ({'; '.join(details)}); check that port 80 of each"
                           " domain reaches this Envoy's HTTP listener")
    if isinstance(exc, messages.Error):
        result = "rate_limited" if exc.code == "rateLimited" else "refused"
        return OrderFailed(result, f"the ACME server refused: {exc.detail or exc.code}"
                           f" ({exc.typ})", retry_after)
    if isinstance(exc, errors.TimeoutError):
        return OrderFailed("timeout", "the ACME server did not finish the order in time")
    if isinstance(exc, requests.exceptions.SSLError):
        return OrderFailed("unreachable", f"{where}: its HTTPS certificate is not trusted"
                           f" ({exc}); for a private ACME server set acme_directory_ca")
    if isinstance(exc, requests.exceptions.RequestException):
        return OrderFailed("unreachable", f"{where}: cannot reach the ACME server:"
                           f" {type(exc).__name__}: {_short(exc)}", retry_after)
    return OrderFailed("error", f"{type(exc).__name__}: {_short(exc)}", retry_after)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."
