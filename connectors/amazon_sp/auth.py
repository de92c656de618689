"""Login with Amazon (LWA): the refresh token exchanged for short-lived access tokens, cached.

The contract (developer-docs.amazon.com/sp-api, "Connect to the SP-API", step 1):

    POST https://api.amazon.com/auth/o2/token
    Content-Type: application/x-www-form-urlencoded
    grant_type=refresh_token&refresh_token=Atzr|...&client_id=...&client_secret=...

    200 {"access_token": "Atza|...", "token_type": "bearer", "expires_in": 3600,
         "refresh_token": "Atzr|..."}

An access token is valid for one hour and goes in the `x-amz-access-token` header of every SP-API
call. Refusals are OAuth 2 error bodies: 400 `{"error": "invalid_grant", "error_description":
"The request has an invalid grant parameter : refresh_token"}` (refresh token revoked or wrong),
401 `{"error": "invalid_client", ...}` (client id / secret wrong), 400 `invalid_request` /
`unsupported_grant_type`. These will not heal by retrying: `PermanentPushError`. 429 and 5xx,
timeouts and connection errors are transient.

`LwaAuth.token()` returns the cached token until `REFRESH_MARGIN` (60 s) before it expires, so a
call never leaves with a token about to die in flight. Concurrent callers share one exchange (a
lock). When SP-API refuses a token anyway (403 "The access token you provided has expired.", a
revoked token), the client calls `invalidate(token)` and asks again: exactly one new exchange,
however many concurrent calls saw the refusal.

Tokens and secrets never appear in logs or errors: messages are built from LWA's error *codes*,
and anything echoed back is scrubbed of the secrets we hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from pydantic import SecretStr

from connectors._http import retry_after as _retry_after
from connectors.base import PermanentPushError, TransientPushError

__all__ = ["REFRESH_MARGIN", "LwaAuth"]

log = logging.getLogger("connectors.amazon_sp")

REFRESH_MARGIN = 60.0  # seconds before expiry at which a cached access token is replaced
_DEFAULT_TTL = 3600.0  # "An LWA access token expires one hour after it is issued."
_PERMANENT = {
    "invalid_grant": "LWA refused the refresh token (invalid_grant): the authorisation was "
                     "revoked or the refresh token is wrong; authorise the application again",
    "invalid_client": "LWA refused the client credentials (invalid_client): check client_id and "
                      "client_secret",
    "unauthorized_client": "LWA: this client may not use the refresh_token grant "
                           "(unauthorized_client)",
    "invalid_request": "LWA refused the token request (invalid_request)",
    "unsupported_grant_type": "LWA refused the token request (unsupported_grant_type)",
    "invalid_scope": "LWA refused the token request (invalid_scope)",
}


class LwaAuth:
    """Exchanges the refresh token for access tokens and caches them."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession | None],
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        refresh_token: SecretStr,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self.token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self.timeout = timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.exchanges = 0  # successful token exchanges (tests, metrics)
        self.ok = True  # the last exchange (if any) succeeded

    def _fresh(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at - REFRESH_MARGIN

    def invalidate(self, token: str) -> None:
        """SP-API refused `token`: forget it (if it is still the cached one)."""
        if self._token == token:
            self._token = None
            self._expires_at = 0.0

    def scrub(self, text: str) -> str:
        """`text` with every secret we hold replaced (defence in depth for error messages)."""
        for secret in (self._client_secret.get_secret_value(),
                       self._refresh_token.get_secret_value(), self._token):
            if secret:
                text = text.replace(secret, "***")
        return text

    async def token(self) -> str:
        """A valid access token: the cached one, or a new one from LWA."""
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if self._fresh():  # another caller exchanged while we waited
                assert self._token is not None
                return self._token
            token, ttl = await self._exchange()
            self._token = token
            self._expires_at = self._clock() + ttl
            return token

    async def _exchange(self) -> tuple[str, float]:
        try:
            return await self._request_token()
        except (TransientPushError, PermanentPushError):
            self.ok = False
            raise

    async def _request_token(self) -> tuple[str, float]:
        session = self._session()
        if session is None:
            raise TransientPushError("no HTTP session (connector not started)")
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token.get_secret_value(),
            "client_id": self._client_id,
            "client_secret": self._client_secret.get_secret_value(),
        }
        try:
            async with session.post(
                self.token_url, data=form, headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers)
                raw = await resp.read()
        except TimeoutError:
            raise TransientPushError(
                f"LWA token endpoint did not answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise TransientPushError(
                f"cannot reach the LWA token endpoint: {type(exc).__name__}") from None
        doc: Any
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if status == 200 and isinstance(doc, dict):
            token = doc.get("access_token")
            expires_in = doc.get("expires_in", _DEFAULT_TTL)
            if isinstance(token, str) and token:
                ttl = float(expires_in) if isinstance(expires_in, int | float) and not \
                    isinstance(expires_in, bool) and expires_in > 0 else _DEFAULT_TTL
                self.exchanges += 1
                self.ok = True
                log.info("LWA access token obtained (valid %.0fs)", ttl)
                return token, ttl
            raise TransientPushError("LWA answered 200 without an access token")
        if status == 429:
            raise TransientPushError("LWA token endpoint throttled the exchange", retry_after)
        if status >= 500:
            raise TransientPushError(f"LWA token endpoint answered HTTP {status}", retry_after)
        code = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(code, str) and code in _PERMANENT:
            raise PermanentPushError(_PERMANENT[code])
        shown = self.scrub(str(code))[:80] if code else "no error code"
        raise PermanentPushError(f"LWA refused the token request (HTTP {status}, {shown})")
