"""A thin client of Vendure's Admin GraphQL API (`POST {admin_api_url}`, JSON).

Authentication, one of:

- **bearer session**: `mutation login(username, password)`; with `authOptions.tokenMethod`
  including `'bearer'`, Vendure returns the session token in the `vendure-auth-token` response
  header (the header name is `authOptions.authTokenHeaderKey`), and every later request sends
  `Authorization: Bearer <token>`. A session ends when it has been idle longer than
  `authOptions.sessionDuration`, or at `logout`, or when an administrator deletes it; Vendure then
  treats the token as anonymous and answers admin operations with a GraphQL error whose
  `extensions.code` is `FORBIDDEN`. The client then logs in again, once, and repeats the request;
  a second `FORBIDDEN` means the administrator lacks a permission and is final.
- **API key** (Vendure ≥ 3.6, `tokenMethod` including `'api-key'`): the key is sent in the
  `vendure-api-key` header (`authOptions.apiKeyHeaderKey`) of every request; no login, and a
  `FORBIDDEN` is final.

`vendure-token` (`apiOptions.channelTokenKey`) selects the channel when the connector serves
another channel than the default one.

GraphQL answers are HTTP 200 with `errors[]` for failures in resolvers (Apollo); a request that
does not validate against the schema is HTTP 400 with `GRAPHQL_VALIDATION_FAILED`. Whole-call
failures map onto the push contract:

- 429 and 5xx, timeouts, connection errors, bodies that are not JSON: `TransientPushError`, with
  `Retry-After` when a proxy in front of Vendure sent one;
- `FORBIDDEN` / `UNAUTHORIZED` (or HTTP 401/403 from a proxy) after the one re-login:
  `PermanentPushError`, as are refused credentials;
- any other GraphQL error: `VendureError` with its `extensions.code` and message, for the caller
  to judge (`ENTITY_NOT_FOUND`, `USER_INPUT_ERROR`, `INTERNAL_SERVER_ERROR`, …). Vendure runs each
  mutation in one transaction, so a failed `updateProductVariants` changed nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from pydantic import SecretStr

from connectors._http import retry_after
from connectors.base import PermanentPushError, TransientPushError

__all__ = ["AUTH_CODES", "AdminClient", "VendureError"]

AUTH_CODES = frozenset({"FORBIDDEN", "UNAUTHORIZED", "UNAUTHENTICATED"})
_LOGIN = """
mutation SyncdLogin($username: String!, $password: String!) {
  login(username: $username, password: $password) {
    __typename
    ... on CurrentUser { id identifier }
    ... on ErrorResult { errorCode message }
  }
}
"""


class VendureError(Exception):
    """Vendure answered with GraphQL errors that are not about authentication."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


def _errors(doc: Any) -> list[tuple[str, str]]:
    """`(extensions.code, message)` of each GraphQL error ("" when a part is missing)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return []
    out: list[tuple[str, str]] = []
    for err in doc["errors"]:
        if not isinstance(err, dict):
            out.append(("", str(err)[:200]))
            continue
        ext = err.get("extensions")
        code = ext.get("code") if isinstance(ext, dict) else None
        message = err.get("message")
        out.append(
            (
                str(code)[:60] if code is not None else "",
                " ".join(str(message).split())[:300] if message is not None else "",
            )
        )
    return out


class AdminClient:
    """Runs Admin API operations, logging in (and in again) as needed."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession | None],
        url: str,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
        api_key: SecretStr | None = None,
        api_key_header: str = "vendure-api-key",
        auth_token_header: str = "vendure-auth-token",  # noqa: S107 (a header name)
        channel_token: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        if api_key is None and (username is None or password is None):
            raise ValueError("either username and password, or api_key")
        self._session = session
        self.url = url
        self._username = username
        self._password = password
        self._api_key = api_key
        self._api_key_header = api_key_header
        self._auth_token_header = auth_token_header
        self._channel_token = channel_token
        self.timeout = timeout
        self._token: str | None = None
        self._login_lock = asyncio.Lock()
        self.calls = 0
        self.logins = 0
        self.ok = True  # the last call reached Vendure and was authorised

    @property
    def uses_api_key(self) -> bool:
        return self._api_key is not None

    def _headers(self, token: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self._channel_token:
            headers["vendure-token"] = self._channel_token
        if self._api_key is not None:
            headers[self._api_key_header] = self._api_key.get_secret_value()
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _post(
        self, query: str, variables: Mapping[str, Any] | None, token: str | None
    ) -> tuple[int, dict[str, str], Any]:
        session = self._session()
        if session is None:
            raise TransientPushError("no HTTP session (connector not started)")
        body = json.dumps(
            {"query": query, "variables": dict(variables or {})}, separators=(",", ":")
        ).encode()
        try:
            async with session.post(
                self.url,
                data=body,
                headers=self._headers(token),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                headers = {k.lower(): v for k, v in resp.headers.items()}
                raw = await resp.read()
        except TimeoutError:
            self.ok = False
            raise TransientPushError(f"Vendure did not answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            self.ok = False
            raise TransientPushError(f"cannot reach Vendure: {type(exc).__name__}") from None
        self.calls += 1
        if status == 429 or status >= 500:
            raise TransientPushError(f"Vendure answered HTTP {status}", retry_after(headers))
        if 300 <= status < 400:
            raise PermanentPushError(
                f"Vendure redirects (HTTP {status}); set admin_api_url to the final address"
            )
        try:
            doc = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            if status in (401, 403):
                doc = None
            else:
                raise TransientPushError(
                    f"Vendure answered HTTP {status} with a body that is not JSON"
                ) from None
        return status, headers, doc

    async def _ensure_token(self) -> str | None:
        if self._api_key is not None:
            return None
        if self._token is None:
            await self.login()
        return self._token

    async def login(self, stale: str | None = None) -> None:
        """Log in with the username and password. With `stale`, only when that token is still
        the current one (a concurrent caller may have logged in already)."""
        if self._api_key is not None:
            return
        async with self._login_lock:
            if self._token is not None and self._token != stale:
                return
            assert self._username is not None and self._password is not None
            status, headers, doc = await self._post(
                _LOGIN,
                {"username": self._username, "password": self._password.get_secret_value()},
                None,
            )
            errors = _errors(doc)
            data = doc.get("data") if isinstance(doc, dict) else None
            result = data.get("login") if isinstance(data, dict) else None
            if errors or not isinstance(result, dict):
                self.ok = False
                code, message = errors[0] if errors else ("", f"HTTP {status}")
                raise PermanentPushError(f"Vendure login failed ({code or 'error'}: {message})")
            if result.get("__typename") != "CurrentUser":
                self.ok = False
                raise PermanentPushError(
                    "Vendure refused the credentials "
                    f"({str(result.get('errorCode') or result.get('__typename'))[:60]})"
                )
            token = headers.get(self._auth_token_header.lower())
            if not token:
                self.ok = False
                raise PermanentPushError(
                    f"Vendure logged in but sent no {self._auth_token_header} header: its "
                    "authOptions.tokenMethod must include 'bearer'"
                )
            self._token = token.strip()
            self.logins += 1

    def forget_token(self) -> None:
        """Drop the session token (the next call logs in)."""
        self._token = None

    async def execute(
        self, query: str, variables: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The `data` of one operation. See the module docstring for the errors."""
        for attempt in (1, 2):
            token = await self._ensure_token()
            status, _headers, doc = await self._post(query, variables, token)
            errors = _errors(doc)
            denied = status in (401, 403) or any(code in AUTH_CODES for code, _ in errors)
            if denied:
                if self._api_key is None and attempt == 1:
                    await self.login(stale=token)  # the session expired or was revoked
                    continue
                self.ok = False
                message = next((m for c, m in errors if c in AUTH_CODES), f"HTTP {status}")
                raise PermanentPushError(
                    "Vendure refused the request ("
                    + ("API key" if self._api_key is not None else "fresh session")
                    + f"): {message}; check the administrator's permissions "
                    "(ReadCatalog, UpdateCatalog, ReadOrder)"[:500]
                )
            self.ok = True
            if errors:
                code, message = errors[0]
                raise VendureError(code or "GRAPHQL_ERROR", message)
            if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
                raise TransientPushError(f"Vendure answered HTTP {status} without data")
            data: dict[str, Any] = doc["data"]
            return data
        raise AssertionError("unreachable")  # pragma: no cover
