"""A thin client of the Square API (`/v2`), with retries of what Square says is worth retrying.

Every request carries `Authorization: Bearer <access token>` and `Square-Version`. Errors come back
as `{"errors": [{"category", "code", "detail", "field"}]}` with a 4xx/5xx status
(developer.squareup.com, "Handling errors"). Square does not publish its rate limits: a request
over them is answered `429` with `RATE_LIMIT_ERROR` / `RATE_LIMITED`, and the documented remedy is
"a retry mechanism with an exponential backoff schedule ... and a randomized delay (jitter)".

So: 429, 5xx, timeouts and connection errors are retried here with exponential backoff and jitter
(at least any `Retry-After` the answer carries), up to `max_attempts`; then `SquareError` with
`transient=True`. `401`/`403` (a revoked or under-scoped token) and other 4xx are not retried:
`SquareError` with `transient=False`. The access token never appears in an error or a log line.

Endpoints used (all read-only: a Square POS is a stock *source* for syncd):

- `GET /v2/catalog/list?types=ITEM_VARIATION[&cursor=]` → `objects[]`, `cursor` (ListCatalog);
- `POST /v2/catalog/batch-retrieve` `{"object_ids": [...]}` → `objects[]`
  (BatchRetrieveCatalogObjects: the few variations a notification names that are not known yet);
- `POST /v2/inventory/counts/batch-retrieve` `{"location_ids", "states", "updated_after",
  "cursor", "limit"}` → `counts[]`, `cursor` (BatchRetrieveInventoryCounts, newest first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
from pydantic import SecretStr

from connectors._http import retry_after as _retry_after

__all__ = ["MAX_RETRIEVE_IDS", "PAGE_LIMIT", "SquareClient", "SquareError"]

log = logging.getLogger("connectors.square")

PAGE_LIMIT = 1000  # BatchRetrieveInventoryCounts: records per page
MAX_RETRIEVE_IDS = 1000  # BatchRetrieveCatalogObjects: object_ids per call
_MAX_PAGES = 100_000  # a cursor that never ends is a bug on one side or the other


class SquareError(Exception):
    """A call that did not succeed. `transient`: worth trying again later."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "",
                 transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.transient = transient


def _errors(raw: bytes) -> tuple[str, str]:
    """(first error code, "CODE: detail; ...") of a Square error body, best effort."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "", ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return "", ""
    parts: list[str] = []
    first = ""
    for err in errors:
        if not isinstance(err, dict):
            continue
        code = str(err.get("code") or "")
        first = first or code
        detail = str(err.get("detail") or "")
        field = err.get("field")
        parts.append(f"{code}: {detail}" + (f" ({field})" if field else ""))
    return first, "; ".join(parts)[:300]


class SquareClient:
    """Requests to `{base_url}/v2/...`. The session is looked up on every call (the connector
    may get its own when the daemon gives none)."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession | None],
        base_url: str,
        access_token: SecretStr,
        square_version: str,
        timeout: float,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self.square_version = square_version
        self.timeout = timeout
        self._sleep = sleep
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        # counters (read by tests and logs)
        self.calls = 0
        self.rate_limited = 0
        self.backoffs: list[float] = []

    def backoff(self, attempt: int, at_least: float | None = None) -> float:
        """Exponential with jitter: uniform in [ceiling/2, ceiling], ceiling = base·2^(n−1)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt - 1, 30))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        return max(delay, at_least or 0.0)

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One API call, retried on 429/5xx/network errors; returns the JSON object answered."""
        url = f"{self.base_url}{path}"
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {
            "Authorization": f"Bearer {self._token.get_secret_value()}",
            "Square-Version": self.square_version,
            "Accept": "application/json",
        }
        if data is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            attempt += 1
            session = self._session()
            if session is None:
                raise SquareError("no HTTP session (connector not started)", transient=True)
            retry_after: float | None = None
            try:
                async with session.request(
                    method, url, params=dict(params) if params else None, data=data,
                    headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp:
                    status = resp.status
                    retry_after = _retry_after(resp.headers)
                    raw = await resp.read()
            except TimeoutError:
                failure = SquareError(f"Square did not answer within {self.timeout:g}s",
                                      transient=True)
            except aiohttp.ClientError as exc:
                failure = SquareError(f"cannot reach Square: {type(exc).__name__}",
                                      transient=True)
            else:
                self.calls += 1
                if status == 200:
                    try:
                        doc = json.loads(raw)
                    except (ValueError, UnicodeDecodeError, RecursionError):
                        doc = None
                    if isinstance(doc, dict):
                        return doc
                    failure = SquareError("Square answered with a body that is not a JSON "
                                          "object", status=status, transient=True)
                else:
                    code, text = _errors(raw)
                    message = f"Square answered HTTP {status}" + (f": {text}" if text else "")
                    if status == 429:
                        self.rate_limited += 1
                        failure = SquareError(message, status=status, code=code or "RATE_LIMITED",
                                              transient=True)
                    elif status >= 500:
                        failure = SquareError(message, status=status, code=code, transient=True)
                    else:  # 401/403: the token; other 4xx: our request. Retrying won't help.
                        raise SquareError(message, status=status, code=code)
            if attempt >= self.max_attempts:
                raise failure
            delay = self.backoff(attempt, retry_after)
            self.backoffs.append(delay)
            log.info("%s %s: %s; retrying in %.2fs", method, path, failure, delay)
            await self._sleep(delay)

    # -- catalog ---------------------------------------------------------------------------------

    async def list_variations(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Every `ITEM_VARIATION` of the catalog, one page at a time (ListCatalog)."""
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            params = {"types": "ITEM_VARIATION"}
            if cursor:
                params["cursor"] = cursor
            doc = await self.request("GET", "/v2/catalog/list", params=params)
            yield [o for o in doc.get("objects") or () if isinstance(o, dict)]
            cursor = _next_cursor(doc, seen)
            if cursor is None:
                return
        raise SquareError("ListCatalog did not end", transient=True)

    async def retrieve_objects(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The catalog objects of `ids` that exist (BatchRetrieveCatalogObjects)."""
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), MAX_RETRIEVE_IDS):
            doc = await self.request("POST", "/v2/catalog/batch-retrieve", body={
                "object_ids": list(ids[i : i + MAX_RETRIEVE_IDS]),
                "include_related_objects": False,
            })
            out.extend(o for o in doc.get("objects") or () if isinstance(o, dict))
        return out

    # -- inventory -------------------------------------------------------------------------------

    async def inventory_counts(
        self, location_ids: Sequence[str], *, updated_after: str | None = None,
        states: Sequence[str] = ("IN_STOCK",), limit: int = PAGE_LIMIT,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Current counts at `location_ids`, newest first, one page at a time
        (BatchRetrieveInventoryCounts)."""
        query: dict[str, Any] = {"location_ids": list(location_ids), "states": list(states),
                                 "limit": limit}
        if updated_after is not None:
            query["updated_after"] = updated_after
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            body = {**query, "cursor": cursor} if cursor else query
            doc = await self.request("POST", "/v2/inventory/counts/batch-retrieve", body=body)
            yield [c for c in doc.get("counts") or () if isinstance(c, dict)]
            cursor = _next_cursor(doc, seen)
            if cursor is None:
                return
        raise SquareError("BatchRetrieveInventoryCounts did not end", transient=True)


def _next_cursor(doc: Mapping[str, Any], seen: set[str]) -> str | None:
    cursor = doc.get("cursor")
    if not isinstance(cursor, str) or not cursor:
        return None
    if cursor in seen:
        raise SquareError("Square returned the same cursor twice", transient=True)
    seen.add(cursor)
    return cursor
