"""A simulator of the parts of the Square API a stock source uses, and of its inventory webhooks.

What it implements, after the public documentation (developer.squareup.com):

- Authentication: `Authorization: Bearer <access token>`; a missing or wrong token is HTTP 401
  `{"errors": [{"category": "AUTHENTICATION_ERROR", "code": "UNAUTHORIZED", "detail": ...}]}`.
  `Square-Version` is accepted and recorded (`versions`); a malformed one is a 400.
- Errors: always `{"errors": [{"category", "code", "detail"[, "field"]}]}`. `rate_limit_next(n)`
  answers the next n calls `429` `RATE_LIMIT_ERROR` / `RATE_LIMITED`; `fail_next(n, status)`
  answers 500 `INTERNAL_SERVER_ERROR` or 503 `SERVICE_UNAVAILABLE` (`API_ERROR`).
- `GET /v2/catalog/list?types=ITEM_VARIATION[&cursor=]` (ListCatalog): `objects` with
  `item_variation_data.sku`, `catalog_page_size` per page, `cursor` until the last page.
- `POST /v2/catalog/batch-retrieve` (BatchRetrieveCatalogObjects): the objects of `object_ids`
  that exist (≤ 1000 ids).
- `POST /v2/inventory/counts/batch-retrieve` (BatchRetrieveInventoryCounts): filters
  `catalog_object_ids`, `location_ids`, `states`, `updated_after` (counts whose `calculated_at`
  is after it); `limit` 1–1000 (default 1000); newest `calculated_at` first; `cursor` paging
  bound to the query it came from (another query with it: `INVALID_CURSOR`).
- Webhooks: `notification()` builds the documented `inventory.count.updated` body and
  `send_webhook()` POSTs it signed like Square: `x-square-hmacsha256-signature` = base64
  HMAC-SHA256(signature key, notification URL + raw body).

Test helpers: `add_variation`, `remove_variation` (its counts stay: a client must cope with counts
of objects it cannot find in the catalog), `set_count` (records the change time as
`calculated_at`, or the time given), `count_payload` (a count without changing the state),
`rate_limit_next`, `fail_next`, `heal`, counters (`calls`, `rate_limited`, `requests`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from connectors._http import serve_app

from .mapping import COUNT_UPDATED, IN_STOCK, ITEM_VARIATION, SIGNATURE_HEADER, sign

__all__ = ["INVENTORY_STATES", "SquareSim", "WebhookResult", "create_app", "running_sim"]

INVENTORY_STATES = frozenset({
    "CUSTODIAL", "IN_STOCK", "SOLD", "RETURNED_BY_CUSTOMER", "RESERVED_FOR_SALE", "SOLD_ONLINE",
    "ORDERED_FROM_VENDOR", "RECEIVED_FROM_VENDOR", "IN_TRANSIT_TO", "NONE", "WASTE",
    "UNLINKED_RETURN", "COMPOSED", "DECOMPOSED", "SUPPORTED_BY_NEWER_VERSION", "IN_TRANSIT",
})
MAX_COUNTS_LIMIT = 1000
MAX_RETRIEVE = 1000
AUTH_DETAIL = "This request could not be authorized."
_VERSION = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def iso(ts: datetime) -> str:
    """Square's RFC 3339 form: UTC, milliseconds, `Z`."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(value: str) -> datetime:
    ts = datetime.fromisoformat(value)
    if ts.tzinfo is None:
        raise ValueError("no zone")
    return ts


class _ApiError(Exception):
    def __init__(self, status: int, category: str, code: str, detail: str,
                 field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.body: dict[str, Any] = {"category": category, "code": code, "detail": detail}
        if field:
            self.body["field"] = field

    def response(self) -> web.Response:
        return web.json_response({"errors": [self.body]}, status=self.status)


def _invalid(code: str, detail: str, field: str | None = None) -> _ApiError:
    return _ApiError(400, "INVALID_REQUEST_ERROR", code, detail, field)


@dataclass(slots=True)
class _Variation:
    id: str
    sku: str | None
    item_id: str
    name: str
    version: int
    updated_at: str

    def as_object(self) -> dict[str, Any]:
        data: dict[str, Any] = {"item_id": self.item_id, "name": self.name,
                                "ordinal": 1, "pricing_type": "FIXED_PRICING",
                                "price_money": {"amount": 1000, "currency": "EUR"},
                                "track_inventory": True, "sellable": True, "stockable": True}
        if self.sku is not None:
            data["sku"] = self.sku
        return {"type": ITEM_VARIATION, "id": self.id, "updated_at": self.updated_at,
                "version": self.version, "is_deleted": False, "present_at_all_locations": True,
                "item_variation_data": data}


@dataclass(slots=True)
class _Count:
    quantity: str
    calculated_at: datetime


@dataclass(slots=True)
class WebhookResult:
    status: int
    body: str
    event_id: str


def _square_id(prefix: str = "") -> str:
    raw = base64.b32encode(uuid.uuid4().bytes).decode().rstrip("=")
    return (prefix + raw)[:24]


def _cursor(offset: int, query: Any) -> str:
    digest = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "q": digest}).encode()).decode()


def _uncursor(cursor: Any, query: Any) -> int:
    digest = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]
    try:
        doc = json.loads(base64.urlsafe_b64decode(str(cursor).encode()))
        offset = int(doc["o"])
        same = doc["q"] == digest
    except (ValueError, KeyError, TypeError):
        raise _invalid("INVALID_CURSOR", "The cursor is not valid.", "cursor") from None
    if not same or offset < 0:
        raise _invalid("INVALID_CURSOR", "The cursor does not belong to this query.", "cursor")
    return offset


class SquareSim:
    def __init__(self, access_token: str = "sq-simulator-token", *,  # noqa: S107 - its own
                 locations: Iterable[str] = ("L-PARIS", "L-LILLE"),
                 merchant_id: str = "MLSIMULATOR01", catalog_page_size: int = 100) -> None:
        self.access_token = access_token
        self.locations = list(locations)
        self.merchant_id = merchant_id
        self.catalog_page_size = catalog_page_size
        self._variations: dict[str, _Variation] = {}
        self._counts: dict[tuple[str, str, str], _Count] = {}
        self._last_change: datetime | None = None
        self._rate_limit = 0
        self._failures: list[int] = []
        self.calls = 0
        self.rate_limited = 0
        self.unauthorized = 0
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, body or query)
        self.versions: list[str] = []

    # -- test helpers ---------------------------------------------------------------------------

    def add_variation(self, sku: str | None, *, variation_id: str | None = None,
                      name: str = "Regular") -> str:
        vid = variation_id or _square_id()
        self._variations[vid] = _Variation(vid, sku, _square_id("I"), name, 1,
                                           iso(datetime.now(UTC)))
        return vid

    def add_variations(self, skus: Iterable[str]) -> list[str]:
        return [self.add_variation(s) for s in skus]

    def remove_variation(self, variation_id: str) -> None:
        self._variations.pop(variation_id, None)

    def set_sku(self, variation_id: str, sku: str | None) -> None:
        v = self._variations[variation_id]
        v.sku, v.version, v.updated_at = sku, v.version + 1, iso(datetime.now(UTC))

    def variation_id(self, sku: str) -> str:
        for v in self._variations.values():
            if v.sku == sku:
                return v.id
        raise KeyError(sku)

    def _vid(self, sku_or_id: str) -> str:
        return sku_or_id if sku_or_id in self._variations else self.variation_id(sku_or_id)

    def _change_time(self, at: datetime | str | None) -> datetime:
        if at is not None:
            return _parse(at) if isinstance(at, str) else at
        now = datetime.now(UTC)
        if self._last_change is not None and now <= self._last_change:
            now = self._last_change + timedelta(milliseconds=1)
        self._last_change = now
        return now

    def count_payload(self, sku_or_id: str, location_id: str, quantity: int | str, *,
                      at: datetime | str | None = None, state: str = IN_STOCK) -> dict[str, Any]:
        """An `InventoryCount` as Square shows it, without changing the simulator's stock."""
        vid = self._vid(sku_or_id)
        when = self._change_time(at)
        return {"catalog_object_id": vid, "catalog_object_type": ITEM_VARIATION,
                "state": state, "location_id": location_id, "quantity": str(quantity),
                "calculated_at": iso(when)}

    def set_count(self, sku_or_id: str, location_id: str, quantity: int | str, *,
                  at: datetime | str | None = None, state: str = IN_STOCK) -> dict[str, Any]:
        """Set the stock of a variation (by SKU or id) at a location, as of now (or `at`).
        Returns the `InventoryCount`, ready for `send_webhook`."""
        count = self.count_payload(sku_or_id, location_id, quantity, at=at, state=state)
        self._counts[(count["catalog_object_id"], location_id, state)] = _Count(
            count["quantity"], _parse(count["calculated_at"]))
        return count

    def quantity(self, sku_or_id: str, location_id: str, state: str = IN_STOCK) -> str | None:
        c = self._counts.get((self._vid(sku_or_id), location_id, state))
        return c.quantity if c else None

    def rate_limit_next(self, n: int) -> None:
        """Answer the next `n` API calls 429 RATE_LIMITED."""
        self._rate_limit += n

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next `n` API calls with a 5xx."""
        self._failures.extend([status] * n)

    def heal(self) -> None:
        """Forget pending rate limits and failures."""
        self._rate_limit = 0
        self._failures.clear()

    # -- HTTP -----------------------------------------------------------------------------------

    def _gate(self, request: web.Request) -> None:
        self.calls += 1
        if self._rate_limit > 0:
            self._rate_limit -= 1
            self.rate_limited += 1
            raise _ApiError(429, "RATE_LIMIT_ERROR", "RATE_LIMITED",
                            "Your application has been rate limited.")
        if self._failures:
            status = self._failures.pop(0)
            code = "SERVICE_UNAVAILABLE" if status == 503 else "INTERNAL_SERVER_ERROR"
            raise _ApiError(status, "API_ERROR", code, "Square is not available right now.")
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            self.unauthorized += 1
            raise _ApiError(401, "AUTHENTICATION_ERROR", "UNAUTHORIZED", AUTH_DETAIL)
        version = request.headers.get("Square-Version")
        if version is not None:
            if not _VERSION.fullmatch(version):
                raise _invalid("INVALID_SQUARE_VERSION_FORMAT",
                               f"Invalid Square-Version format: {version[:40]}")
            self.versions.append(version)

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            doc = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise _invalid("BAD_REQUEST", "The request body is not valid JSON.") from None
        if not isinstance(doc, dict):
            raise _invalid("BAD_REQUEST", "The request body must be a JSON object.")
        return doc

    async def list_catalog(self, request: web.Request) -> web.Response:
        try:
            self._gate(request)
            query = dict(request.query)
            self.requests.append(("GET", request.path, query))
            types = {t.strip().upper() for t in query.get("types", "").split(",") if t.strip()}
            objects = [v for v in sorted(self._variations.values(), key=lambda v: v.id)
                       if not types or ITEM_VARIATION in types]
            key = sorted(types)
            offset = _uncursor(query["cursor"], key) if query.get("cursor") else 0
            page = objects[offset : offset + self.catalog_page_size]
            out: dict[str, Any] = {"objects": [v.as_object() for v in page]}
            if offset + len(page) < len(objects):
                out["cursor"] = _cursor(offset + len(page), key)
            return web.json_response(out)
        except _ApiError as exc:
            return exc.response()

    async def retrieve_catalog(self, request: web.Request) -> web.Response:
        try:
            self._gate(request)
            body = await self._json(request)
            self.requests.append(("POST", request.path, body))
            ids = body.get("object_ids")
            if not isinstance(ids, list) or not ids:
                raise _invalid("MISSING_REQUIRED_PARAMETER", "object_ids is required.",
                               "object_ids")
            if len(ids) > MAX_RETRIEVE:
                raise _invalid("VALUE_TOO_HIGH", f"At most {MAX_RETRIEVE} object_ids.",
                               "object_ids")
            if not all(isinstance(i, str) for i in ids):
                raise _invalid("INVALID_VALUE", "object_ids must be strings.", "object_ids")
            found = [self._variations[i].as_object() for i in dict.fromkeys(ids)
                     if i in self._variations]
            return web.json_response({"objects": found})
        except _ApiError as exc:
            return exc.response()

    async def batch_retrieve_counts(self, request: web.Request) -> web.Response:
        try:
            self._gate(request)
            body = await self._json(request)
            self.requests.append(("POST", request.path, body))
            ids = _str_list(body, "catalog_object_ids")
            locs = _str_list(body, "location_ids")
            states = _str_list(body, "states")
            for i, s in enumerate(states or ()):
                if s not in INVENTORY_STATES:
                    raise _invalid("INVALID_ENUM_VALUE", f"Invalid InventoryState {s!r}.",
                                   f"states[{i}]")
            after: datetime | None = None
            if body.get("updated_after") is not None:
                try:
                    after = _parse(str(body["updated_after"]))
                except ValueError:
                    raise _invalid("INVALID_TIME", "updated_after is not an RFC 3339 time.",
                                   "updated_after") from None
            limit = body.get("limit", MAX_COUNTS_LIMIT)
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise _invalid("INVALID_VALUE", "limit must be an integer.", "limit")
            if limit < 1:
                raise _invalid("VALUE_TOO_LOW", "limit must be at least 1.", "limit")
            if limit > MAX_COUNTS_LIMIT:
                raise _invalid("VALUE_TOO_HIGH", f"limit must be at most {MAX_COUNTS_LIMIT}.",
                               "limit")
            selected = [
                (key, c) for key, c in self._counts.items()
                if (ids is None or key[0] in ids)
                and (locs is None or key[1] in locs)
                and (states is None or key[2] in states)
                and (after is None or c.calculated_at > after)
            ]
            selected.sort(key=lambda kc: (-kc[1].calculated_at.timestamp(), kc[0]))
            query = {k: body.get(k) for k in ("catalog_object_ids", "location_ids", "states",
                                              "updated_after", "limit")}
            offset = _uncursor(body["cursor"], query) if body.get("cursor") else 0
            page = selected[offset : offset + limit]
            out: dict[str, Any] = {"counts": [
                {"catalog_object_id": vid, "catalog_object_type": ITEM_VARIATION,
                 "state": state, "location_id": loc, "quantity": c.quantity,
                 "calculated_at": iso(c.calculated_at)}
                for (vid, loc, state), c in page
            ]}
            if offset + len(page) < len(selected):
                out["cursor"] = _cursor(offset + len(page), query)
            return web.json_response(out)
        except _ApiError as exc:
            return exc.response()

    # -- webhooks -------------------------------------------------------------------------------

    def notification(self, counts: Sequence[Mapping[str, Any]],
                     event_id: str | None = None) -> dict[str, Any]:
        """The documented `inventory.count.updated` body for `counts` (≤ 100)."""
        return {
            "merchant_id": self.merchant_id,
            "type": COUNT_UPDATED,
            "event_id": event_id or str(uuid.uuid4()),
            "created_at": iso(datetime.now(UTC)),
            "data": {"type": "inventory", "id": str(uuid.uuid4()),
                     "object": {"inventory_counts": [dict(c) for c in counts]}},
        }

    async def send_webhook(
        self, url: str, notification_url: str, signature_key: str,
        counts: Sequence[Mapping[str, Any]] | Mapping[str, Any] | bytes, *,
        event_id: str | None = None, signature: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> WebhookResult:
        """POST a notification to `url` the way Square does, signed for `notification_url` (the
        URL of the subscription, which a proxy may forward to `url`). `counts` is a list of
        `InventoryCount`s, a whole notification, or raw bytes."""
        if isinstance(counts, bytes):
            body, eid = counts, event_id or ""
        else:
            payload = counts if isinstance(counts, Mapping) else self.notification(counts,
                                                                                   event_id)
            body = json.dumps(payload).encode()
            eid = str(payload.get("event_id", ""))
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature if signature is not None
            else sign(signature_key.encode(), notification_url, body),
            "square-environment": "Sandbox",
        }
        own = session is None
        http = session or aiohttp.ClientSession()
        try:
            async with http.post(url, data=body, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=15)) as resp:
                return WebhookResult(resp.status, await resp.text(), eid)
        finally:
            if own:
                await http.close()


def _str_list(body: Mapping[str, Any], key: str) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid("INVALID_VALUE", f"{key} must be a list of strings.", key)
    return value


SIM: web.AppKey[SquareSim] = web.AppKey("square_sim", SquareSim)


def create_app(sim: SquareSim | None = None) -> web.Application:
    state = sim if sim is not None else SquareSim()
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[SIM] = state
    app.router.add_get("/v2/catalog/list", state.list_catalog)
    app.router.add_post("/v2/catalog/batch-retrieve", state.retrieve_catalog)
    app.router.add_post("/v2/inventory/counts/batch-retrieve", state.batch_retrieve_counts)
    return app


@contextlib.asynccontextmanager
async def running_sim(sim: SquareSim, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `sim` on a free loopback port; yields its base URL (`http://127.0.0.1:PORT`)."""
    async with serve_app(create_app(sim), host) as url:
        yield url


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m connectors.square.sim --port 8082 --skus 100`: a Square seller to point a
    `square` connector at (`base_url = "http://127.0.0.1:8082"`)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--skus", type=int, default=100, help="variations SKU-00000, …")
    parser.add_argument("--token", default="sq-simulator-token")
    args = parser.parse_args(argv)
    sim = SquareSim(access_token=args.token)
    for i in range(args.skus):
        sku = f"SKU-{i:05d}"
        sim.add_variation(sku)
        for loc in sim.locations:
            sim.set_count(sku, loc, 10)
    web.run_app(create_app(sim), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
