"""A thin client of the WooCommerce REST API v3 (`{url}/wp-json/wc/v3`).

Authentication is HTTP Basic with the API key's consumer key and secret, which WooCommerce accepts
over HTTPS only (the configuration refuses plain http except on loopback, for the simulator).
Some web servers (Apache with PHP as CGI/FastCGI) drop the `Authorization` header before PHP sees
it; WooCommerce then answers 401 and the error says so.

Errors have the WordPress REST shape `{"code": "...", "message": "...", "data": {"status": N}}`.
Whole-call failures map onto the push contract:

- 429 and 5xx, timeouts, connection errors and bodies that are not JSON: `TransientPushError`,
  with the `Retry-After` seconds when the server (or a CDN / host in front of WordPress) sent one;
- 401 and 403: `PermanentPushError` (wrong or revoked key, or a read-only key);
- any other status: `WooError` with the code and message, for the caller to decide (413
  `woocommerce_rest_request_entity_too_large` means the site lowered its batch limit).

Collections are paginated (`per_page` ≤ 100) with `X-WP-Total`, `X-WP-TotalPages` and an RFC 8288
`Link` header; `next_params` follows `rel="next"`, re-applying its query string to our own base URL
(a site behind a proxy may advertise another scheme or host in its links).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from pydantic import SecretStr

from connectors._http import retry_after
from connectors.base import PermanentPushError, TransientPushError

__all__ = ["Response", "RestClient", "WooError", "next_params", "retry_after"]

_LINK = re.compile(r'<([^>]*)>\s*;([^,<]*)')
_REL_NEXT = re.compile(r'rel\s*=\s*"?([^";]*)"?', re.IGNORECASE)
_BOM = "\ufeff"


class WooError(Exception):
    """WooCommerce refused a call with a status the caller has to judge."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    data: Any


def next_params(headers: Mapping[str, str]) -> list[tuple[str, str]] | None:
    """The query of the `rel="next"` link, or None on the last page."""
    link = headers.get("Link")
    if not link:
        return None
    for match in _LINK.finditer(link):
        rel = _REL_NEXT.search(match.group(2))
        if rel is not None and "next" in rel.group(1).lower().split():
            return parse_qsl(urlsplit(match.group(1).strip()).query, keep_blank_values=True)
    return None


def _error(doc: Any) -> tuple[str, str]:
    if isinstance(doc, dict):
        code = doc.get("code")
        message = doc.get("message")
        return (str(code)[:100] if code is not None else "unknown",
                " ".join(str(message).split())[:300] if message is not None else "")
    return "unknown", ""


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace").lstrip(_BOM).strip()
    return json.loads(text)


class RestClient:
    """Calls `{api_root}/{path}` with Basic authentication."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession | None],
        api_root: str,
        consumer_key: SecretStr,
        consumer_secret: SecretStr,
        timeout: float,
    ) -> None:
        self._session = session
        self.api_root = api_root.rstrip("/")
        self._key = consumer_key
        self._secret = consumer_secret
        self.timeout = timeout
        self.calls = 0
        self.ok = True  # the last call reached WooCommerce and was authorised

    def _auth(self) -> str:
        pair = f"{self._key.get_secret_value()}:{self._secret.get_secret_value()}"
        return "Basic " + base64.b64encode(pair.encode()).decode("ascii")

    async def request(
        self, method: str, path: str, *,
        params: Mapping[str, str] | list[tuple[str, str]] | None = None,
        body: Any = None,
    ) -> Response:
        session = self._session()
        if session is None:
            raise TransientPushError("no HTTP session (connector not started)")
        url = f"{self.api_root}/{path.lstrip('/')}"
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json", "Authorization": self._auth()}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with session.request(
                method, url, params=params, data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout), allow_redirects=False,
            ) as resp:
                status = resp.status
                resp_headers = {k: v for k, v in resp.headers.items()}
                raw = await resp.read()
        except TimeoutError:
            self.ok = False
            raise TransientPushError(
                f"WooCommerce did not answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            self.ok = False
            raise TransientPushError(f"cannot reach WooCommerce: {type(exc).__name__}") from None
        self.calls += 1
        try:
            doc = _decode(raw) if raw else None
            parsed = True
        except ValueError:
            doc, parsed = None, False
        if status in (401, 403):
            self.ok = False
            code, message = _error(doc)
            raise PermanentPushError(
                f"WooCommerce refused the API key (HTTP {status} {code}: {message}; check the "
                "key, its Read/Write permission, and that the web server passes the "
                "Authorization header to PHP)"[:500])
        if status == 429 or status >= 500:
            code, _ = _error(doc)
            raise TransientPushError(f"WooCommerce answered HTTP {status} ({code})",
                                     retry_after(resp_headers))
        self.ok = True
        if 300 <= status < 400:
            where = urlsplit(resp_headers.get("Location", ""))
            raise WooError(status, "redirect",
                           f"the site redirects to {where.scheme}://{where.netloc}{where.path}; "
                           "set url to the site's final address")
        if not 200 <= status < 300:
            code, message = _error(doc)
            raise WooError(status, code, message)
        if not parsed:
            raise TransientPushError(
                "WooCommerce answered with a body that is not JSON (PHP notices printed before "
                "the JSON? set WP_DEBUG_DISPLAY to false)")
        return Response(status, resp_headers, doc)
