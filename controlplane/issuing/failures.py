"""How an ACME order fails, in the user's words, and the bound on each request: kept
apart from `ordering` so that the issuer (and every command that imports the daemon)
loads the ACME library and `requests` only when an order runs."""

from __future__ import annotations

REQUEST_TIMEOUT_S = 10
"""Each request to the ACME server (a dead server costs at most this per step)."""


class OrderFailed(Exception):
    """An order that did not end with a certificate, by `result` (a metrics label)."""

    def __init__(self, result: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason
        self.retry_after = retry_after
