"""A simulator of the parts of Amazon's Selling Partner API that syncd uses, and of LWA.

What it implements, after the public documentation (developer-docs.amazon.com/sp-api and the
models in github.com/amzn/selling-partner-api-models):

- LWA: `POST /auth/o2/token` (form `grant_type=refresh_token`, `refresh_token`, `client_id`,
  `client_secret`) → `{"access_token", "refresh_token", "token_type": "bearer", "expires_in"}`.
  A wrong refresh token is 400 `{"error": "invalid_grant", ...}`, wrong client credentials 401
  `{"error": "invalid_client", ...}`. Tokens live `token_ttl` seconds (3600 on Amazon;
  configurable, and `expire_tokens()` ends them all at once).
- Every SP-API call needs `x-amz-access-token`: missing, unknown or expired, it is 403
  `{"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied.",
  "details": "The access token you provided has expired."}]}` (or "... is revoked, malformed or
  invalid.", "Access token is missing in the request header.").
- Rate limits: one token bucket per operation (`DEFAULT_LIMITS`, overridable). A call that finds
  the bucket empty is 429 `{"errors": [{"code": "QuotaExceeded", "message": "You exceeded your
  quota for the requested resource.", "details": ""}]}` *without* `x-amzn-RateLimit-Limit` (the
  models say that header is no longer returned on 429); 2xx, 400 and 404 answers carry it.
- Listings Items 2021-08-01: `PATCH /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=`
  with `{"productType", "patches": [{"op", "path", "value"}]}` → 200 `{"sku", "status":
  "ACCEPTED" | "INVALID", "submissionId", "issues"}`; a malformed request is 400 `InvalidInput`.
  As on Amazon, a PATCH of a SKU that has no listing yet is ACCEPTED (it creates an incomplete
  listing; see selling-partner-api-models issues #2797 and #4402). Accepted quantities apply at
  once (Amazon: within minutes). `GET …?includedData=fulfillmentAvailability` → `{"sku",
  "fulfillmentAvailability": [{"fulfillmentChannelCode": "DEFAULT", "quantity"}]}`; an unknown
  SKU is 404 `NOT_FOUND`.
- Feeds 2021-06-30: `POST /feeds/2021-06-30/documents` → 201 `{"feedDocumentId", "url"}` where the
  url is a pre-signed upload URL served by the simulator itself (`PUT` with the same
  Content-Type, else 403 like S3); `POST /feeds/2021-06-30/feeds` → 202 `{"feedId"}`, at most one
  per `feed_interval` seconds (429 QuotaExceeded otherwise); `GET /feeds/2021-06-30/feeds/{id}`
  goes `IN_QUEUE` → `IN_PROGRESS` → `DONE` after `feed_queue_delay` and `feed_process_delay`; a
  DONE feed names its `resultFeedDocumentId`; `GET /feeds/2021-06-30/documents/{id}` → `{"url",
  "compressionAlgorithm": "GZIP"}` (when `compress_reports`). The JSON_LISTINGS_FEED is checked
  against listings-feed-schema-v2 (≤ 25,000 messages, PATCH messages with productType and
  patches); the processing report follows listings-feed-processing-report-schema-v2; quantities
  of accepted messages apply when the feed is DONE. `fail_skus({sku: message})` makes those SKUs
  fail (an ERROR issue in a feed, INVALID on a PATCH); `fail_next_feed("FATAL")` ends the next
  feed FATAL (or CANCELLED).
- Orders 2026-01-01: `GET /orders/2026-01-01/orders` (searchOrders) with exactly one of
  `createdAfter` / `lastUpdatedAfter`, `marketplaceIds`, `fulfilledBy`, `fulfillmentStatuses`,
  `includedData` (the `fulfillment` block only with `FULFILLMENT`), `maxResultsPerPage` (1..100)
  and `paginationToken` (the other parameters must be repeated unchanged).

Test helpers: `add_listings`, `quantity`, `set_quantity` (a hand-made drift), `fail_skus`,
`fail_next` (5xx), `drain` (empty a bucket), `expire_tokens`, `add_order`, `set_status`; counters
`calls`, `patch_calls`, `get_calls`, `throttled`, `feeds_created`, `feed_polls`,
`token_exchanges`, `search_calls`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from connectors._http import serve_app

__all__ = [
    "DEFAULT_LIMITS",
    "AmazonSpSim",
    "create_app",
    "running_sim",
]

DEFAULT_LIMITS: dict[str, tuple[float, int]] = {
    "patchListingsItem": (5.0, 5),
    "getListingsItem": (5.0, 5),
    "createFeedDocument": (0.5, 15),
    "getFeed": (2.0, 15),
    "getFeedDocument": (0.0222, 10),
    "searchOrders": (0.0056, 20),
}
MAX_MESSAGES = 25_000
QUOTA_MESSAGE = "You exceeded your quota for the requested resource."
DENIED = "Access to requested resource is denied."
EXPIRED = "The access token you provided has expired."
# error messages Amazon sends, not credentials
INVALID_TOKEN = "The access token you provided is revoked, malformed or invalid."  # noqa: S105
MISSING_TOKEN = "Access token is missing in the request header."  # noqa: S105
_STATUS_ALIASES = {  # Orders v0 names, accepted by the helpers
    "Pending": "PENDING", "Unshipped": "UNSHIPPED", "PartiallyShipped": "PARTIALLY_SHIPPED",
    "Shipped": "SHIPPED", "Canceled": "CANCELLED", "Unfulfillable": "UNFULFILLABLE",
}
_FULFILLMENT_STATUSES = frozenset({"PENDING_AVAILABILITY", "PENDING", "UNSHIPPED",
                                   "PARTIALLY_SHIPPED", "SHIPPED", "CANCELLED", "UNFULFILLABLE"})
_PATCH_OPS = frozenset({"add", "replace", "merge", "delete"})
_UPLOAD_TTL = 300.0  # pre-signed URLs are valid for 5 minutes


def _now() -> datetime:
    ts = datetime.now(UTC)
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _digits(text: str, n: int) -> str:
    """`n` decimal digits derived from `text` (stable ids: ASINs, order item ids)."""
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return f"{value % 10**n:0{n}d}"


def _parse_time(value: str) -> datetime | None:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else None


class _Bucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class _Document:
    content_type: str
    content: bytes | None = None
    compression: str | None = None
    created: float = 0.0


@dataclass(slots=True)
class _Feed:
    feed_id: str
    feed_type: str
    marketplace_ids: list[str]
    document_id: str
    created_at: datetime
    created: float  # monotonic
    outcome: str = "DONE"  # DONE, FATAL or CANCELLED
    processed: bool = False
    result_document_id: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(slots=True)
class _Order:
    order_id: str
    lines: list[tuple[str, int]]
    status: str
    created: datetime
    updated: datetime
    marketplace_id: str
    fulfilled_by: str = "MERCHANT"
    items: list[str] = field(default_factory=list)  # orderItemIds


class AmazonSpSim:
    """State and rules of the simulated seller account."""

    def __init__(
        self,
        *,
        seller_id: str = "A2SIMSELLER0001",
        marketplace_ids: Sequence[str] = ("A13V1IB3VIYZZH",),
        client_id: str = "amzn1.application-oa2-client.sim",
        # the simulator's own made-up credentials
        client_secret: str = "sim-client-secret",  # noqa: S107
        refresh_token: str = "Atzr|sim-refresh-token",  # noqa: S107
        token_ttl: float = 3600.0,
        limits: Mapping[str, tuple[float, int]] | None = None,
        feed_interval: float = 120.0,
        feed_queue_delay: float = 1.0,
        feed_process_delay: float = 2.0,
        compress_reports: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seller_id = seller_id
        self.marketplace_ids = list(marketplace_ids)
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.token_ttl = token_ttl
        self.feed_interval = feed_interval
        self.feed_queue_delay = feed_queue_delay
        self.feed_process_delay = feed_process_delay
        self.compress_reports = compress_reports
        self.clock = clock
        self.limits = dict(DEFAULT_LIMITS)
        if limits:
            self.limits.update(limits)
        self._buckets = {op: _Bucket(r, b, clock) for op, (r, b) in self.limits.items()}
        self._signing_key = secrets.token_bytes(16)
        self.listings: dict[str, int | None] = {}
        self.failing: dict[str, str] = {}
        self.tokens: dict[str, float] = {}  # access token -> expiry (clock)
        self.documents: dict[str, _Document] = {}
        self.feeds: dict[str, _Feed] = {}
        self.orders: dict[str, _Order] = {}
        self._pages: dict[str, tuple[dict[str, str], int]] = {}
        self._fail_next: list[int] = []
        self._next_feed_outcome: str | None = None
        self._last_feed_created: float | None = None
        self._seq = 0
        # counters
        self.calls = 0
        self.calls_by_operation: Counter[str] = Counter()
        self.patch_calls = 0
        self.get_calls = 0
        self.search_calls = 0
        self.throttled = 0
        self.throttled_by_operation: Counter[str] = Counter()
        self.feeds_created = 0
        self.feed_polls = 0
        self.token_exchanges = 0
        self.uploads = 0
        self.refused_tokens = 0
        self.patch_times: list[float] = []  # arrival times (clock) of PATCHes, for rates

    # -- helpers for tests ---------------------------------------------------------------------

    def add_listings(self, skus: Iterable[str], quantity: int | None = 0) -> None:
        for sku in skus:
            self.listings[sku] = quantity

    def quantity(self, sku: str) -> int | None:
        self._advance()
        return self.listings.get(sku)

    def set_quantity(self, sku: str, quantity: int) -> None:
        """A hand-made change on Amazon's side (drift)."""
        self.listings[sku] = quantity

    def fail_skus(self, failures: Mapping[str, str]) -> None:
        """These SKUs fail from now on with `message` (an ERROR issue)."""
        self.failing.update(failures)

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """The next `n` SP-API calls (after authentication and rate limits) answer `status`."""
        self._fail_next.extend([status] * n)

    def fail_next_feed(self, outcome: str = "FATAL") -> None:
        if outcome not in ("FATAL", "CANCELLED"):
            raise ValueError("a feed can end FATAL or CANCELLED")
        self._next_feed_outcome = outcome

    def drain(self, operation: str) -> None:
        """Empty an operation's bucket (another application of ours just used it)."""
        bucket = self._buckets[operation]
        bucket.take()
        bucket.tokens = 0.0
        bucket.stamp = self.clock()

    def expire_tokens(self) -> None:
        """Every access token issued so far expires now."""
        now = self.clock()
        for token in self.tokens:
            self.tokens[token] = min(self.tokens[token], now)

    def add_order(self, order_id: str, lines: Sequence[tuple[str, int]],
                  status: str = "UNSHIPPED", *, fulfilled_by: str = "MERCHANT",
                  marketplace_id: str | None = None) -> None:
        now = _now()
        status = _STATUS_ALIASES.get(status, status)
        if status not in _FULFILLMENT_STATUSES:
            raise ValueError(f"unknown fulfillment status {status!r}")
        self.orders[order_id] = _Order(
            order_id, list(lines), status, now, now,
            marketplace_id or self.marketplace_ids[0], fulfilled_by,
            [f"{_digits(f'{order_id}:{i}', 14)}" for i in range(len(lines))])

    def set_status(self, order_id: str, status: str) -> None:
        status = _STATUS_ALIASES.get(status, status)
        if status not in _FULFILLMENT_STATUSES:
            raise ValueError(f"unknown fulfillment status {status!r}")
        order = self.orders[order_id]
        order.status = status
        order.updated = max(_now(), order.updated)

    def patch_rate(self) -> float:
        """PATCHes per second seen, from the first to the last."""
        t = self.patch_times
        if len(t) < 2 or t[-1] == t[0]:
            return 0.0
        return (len(t) - 1) / (t[-1] - t[0])

    # -- internals -----------------------------------------------------------------------------

    def _next_id(self, prefix: str = "") -> str:
        self._seq += 1
        return f"{prefix}{self._seq:010d}"

    def _sign(self, path: str, expires: int) -> str:
        msg = f"{path}\n{expires}".encode()
        return hmac.new(self._signing_key, msg, hashlib.sha256).hexdigest()

    def _advance(self) -> None:
        """Feeds whose time has come are processed (lazily, on every request)."""
        now = self.clock()
        for feed in self.feeds.values():
            if not feed.processed and now >= feed.created + self.feed_queue_delay \
                    + self.feed_process_delay:
                self._process(feed)

    def _status(self, feed: _Feed) -> str:
        if feed.processed:
            return feed.outcome
        elapsed = self.clock() - feed.created
        if elapsed < self.feed_queue_delay:
            return "IN_QUEUE"
        if feed.started_at is None:
            feed.started_at = _now()
        return "IN_PROGRESS"

    def _store_result(self, report: dict[str, Any]) -> str:
        raw = json.dumps(report, separators=(",", ":")).encode()
        doc_id = f"amzn1.tortuga.4.eu.{uuid.uuid4()}"
        if self.compress_reports:
            self.documents[doc_id] = _Document("application/json", gzip.compress(raw), "GZIP",
                                               self.clock())
        else:
            self.documents[doc_id] = _Document("application/json", raw, None, self.clock())
        return doc_id

    def _process(self, feed: _Feed) -> None:
        feed.processed = True
        feed.started_at = feed.started_at or _now()
        feed.ended_at = _now()
        if feed.outcome == "CANCELLED":
            return
        header = {"sellerId": self.seller_id, "version": "2.0", "feedId": feed.feed_id}
        if feed.outcome == "FATAL":
            feed.result_document_id = self._store_result({
                "header": header,
                "issues": [{"severity": "ERROR", "message": "Feed processing failed (simulated)."}],
                "summary": {"errors": 1, "warnings": 0, "messagesProcessed": 0,
                            "messagesAccepted": 0, "messagesInvalid": 0},
            })
            return
        doc = self.documents.get(feed.document_id)
        issues: list[dict[str, Any]] = []

        def fatal(message: str) -> None:
            feed.outcome = "FATAL"
            feed.result_document_id = self._store_result({
                "header": header, "issues": [{"severity": "ERROR", "message": message}],
                "summary": {"errors": 1, "warnings": 0, "messagesProcessed": 0,
                            "messagesAccepted": 0, "messagesInvalid": 0}})

        try:
            content = json.loads((doc.content or b"") if doc else b"")
        except (ValueError, UnicodeDecodeError):
            fatal("The feed is not valid JSON.")
            return
        if not isinstance(content, dict) or not isinstance(content.get("messages"), list) \
                or not isinstance(content.get("header"), dict):
            fatal("The feed does not match the JSON_LISTINGS_FEED schema (header, messages).")
            return
        head = content["header"]
        messages = content["messages"]
        if head.get("version") != "2.0" or head.get("sellerId") != self.seller_id:
            fatal("The feed header names another seller or version.")
            return
        if not 1 <= len(messages) <= MAX_MESSAGES:
            fatal(f"A JSON_LISTINGS_FEED holds 1 to {MAX_MESSAGES} messages.")
            return
        accepted = invalid = 0
        ids: set[int] = set()
        for msg in messages:
            mid = msg.get("messageId") if isinstance(msg, dict) else None
            sku = msg.get("sku") if isinstance(msg, dict) else None
            problem = self._check_message(msg, ids)
            if isinstance(mid, int) and not isinstance(mid, bool):
                ids.add(mid)
            if problem is None and isinstance(sku, str) and sku in self.failing:
                problem = ("99001", self.failing[sku])
            if problem is not None:
                issue: dict[str, Any] = {"code": problem[0], "severity": "ERROR",
                                         "message": problem[1]}
                if isinstance(mid, int):
                    issue["messageId"] = mid
                if isinstance(sku, str):
                    issue["sku"] = sku
                issues.append(issue)
                invalid += 1
                continue
            assert isinstance(msg, dict) and isinstance(sku, str)
            self._apply_patches(sku, msg["patches"])
            accepted += 1
        feed.result_document_id = self._store_result({
            "header": header, "issues": issues,
            "summary": {"errors": len(issues), "warnings": 0,
                        "messagesProcessed": accepted + invalid, "messagesAccepted": accepted,
                        "messagesInvalid": invalid},
        })

    @staticmethod
    def _check_patches(patches: Any) -> tuple[str, str] | None:
        if not isinstance(patches, list) or not patches:
            return ("4000001", "'patches' must be a non-empty array.")
        for p in patches:
            if not isinstance(p, dict) or p.get("op") not in _PATCH_OPS \
                    or not isinstance(p.get("path"), str) or not p["path"].startswith("/"):
                return ("4000001", "A patch operation needs 'op' (add, replace, merge, delete) "
                                   "and a 'path'.")
            if p["path"] == "/attributes/fulfillment_availability" and p["op"] != "delete":
                value = p.get("value")
                if not isinstance(value, list) or not value:
                    return ("90220", "'fulfillment_availability' is required but not supplied.")
                for entry in value:
                    if not isinstance(entry, dict) or not isinstance(
                            entry.get("fulfillment_channel_code"), str):
                        return ("90220", "'fulfillment_channel_code' is required but not "
                                         "supplied.")
                    qty = entry.get("quantity")
                    if qty is not None and (isinstance(qty, bool) or not isinstance(qty, int)
                                            or qty < 0):
                        return ("99022", "The value of 'quantity' must be a whole number of at "
                                         "least 0.")
        return None

    def _check_message(self, msg: Any, ids: set[int]) -> tuple[str, str] | None:
        if not isinstance(msg, dict):
            return ("4000001", "The message is not an object.")
        mid = msg.get("messageId")
        if isinstance(mid, bool) or not isinstance(mid, int) or not 1 <= mid <= 2147483647:
            return ("4000001", "'messageId' must be an integer from 1 to 2147483647.")
        if mid in ids:
            return ("4000001", f"messageId {mid} is not unique in this feed.")
        if not isinstance(msg.get("sku"), str) or not msg["sku"]:
            return ("4000001", "'sku' is required.")
        if msg.get("operationType") != "PATCH":
            return ("4000001", "The simulator supports operationType PATCH only.")
        if not isinstance(msg.get("productType"), str) or not msg["productType"]:
            return ("4000001", "'productType' is required for PATCH.")
        return self._check_patches(msg.get("patches"))

    def _apply_patches(self, sku: str, patches: list[dict[str, Any]]) -> None:
        if sku not in self.listings:
            self.listings[sku] = None  # Amazon accepts it and creates an incomplete listing
        for p in patches:
            if p["path"] != "/attributes/fulfillment_availability":
                continue
            if p["op"] == "delete":
                self.listings[sku] = None
                continue
            for entry in p["value"]:
                if entry.get("fulfillment_channel_code") == "DEFAULT" \
                        and isinstance(entry.get("quantity"), int):
                    self.listings[sku] = entry["quantity"]


# -- HTTP ---------------------------------------------------------------------------------------


def _errors(status: int, code: str, message: str, details: str = "",
            headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"errors": [{"code": code, "message": message, "details": details}]},
                             status=status, headers=dict(headers or {}))


def create_app(sim: AmazonSpSim) -> web.Application:
    routes = web.RouteTableDef()

    def request_id() -> dict[str, str]:
        return {"x-amzn-RequestId": str(uuid.uuid4())}

    def limited(operation: str, response: web.Response) -> web.Response:
        """Add the usage-plan header to a 2xx / 400 / 404 answer."""
        rate = sim.limits.get(operation)
        if operation == "createFeed" and sim.feed_interval > 0:
            rate = (round(1.0 / sim.feed_interval, 4), 1)
        if rate is not None and response.status in (200, 201, 202, 400, 404):
            response.headers["x-amzn-RateLimit-Limit"] = f"{rate[0]:g}"
        return response

    def gate(request: web.Request, operation: str) -> web.Response | None:
        """Authentication, rate limit and injected failures, in Amazon's order."""
        sim.calls += 1
        sim.calls_by_operation[operation] += 1
        token = request.headers.get("x-amz-access-token")
        if not token:
            sim.refused_tokens += 1
            return _errors(403, "Unauthorized", DENIED, MISSING_TOKEN, request_id())
        expiry = sim.tokens.get(token)
        if expiry is None:
            sim.refused_tokens += 1
            return _errors(403, "Unauthorized", DENIED, INVALID_TOKEN, request_id())
        if sim.clock() >= expiry:
            sim.refused_tokens += 1
            return _errors(403, "Unauthorized", DENIED, EXPIRED, request_id())
        bucket = sim._buckets.get(operation)
        if bucket is not None and not bucket.take():
            sim.throttled += 1
            sim.throttled_by_operation[operation] += 1
            return _errors(429, "QuotaExceeded", QUOTA_MESSAGE, "", request_id())
        if sim._fail_next:
            status = sim._fail_next.pop(0)
            return _errors(status, "InternalFailure",
                           "We encountered an internal error. Please try again.", "",
                           request_id())
        sim._advance()
        return None

    async def json_body(request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return None

    def invalid_input(operation: str, details: str) -> web.Response:
        return limited(operation, _errors(
            400, "InvalidInput", "Request has missing or invalid parameters and cannot be parsed.",
            details, request_id()))

    def marketplaces(request: web.Request, operation: str) -> list[str] | web.Response:
        raw = request.query.get("marketplaceIds", "")
        ids = [m for m in raw.split(",") if m]
        if not ids:
            return invalid_input(operation, "Missing required 'marketplaceIds'.")
        unknown = [m for m in ids if m not in sim.marketplace_ids]
        if unknown:
            return invalid_input(operation, f"Invalid marketplaceIds: {', '.join(unknown)}.")
        return ids

    # -- LWA ------------------------------------------------------------------------------------

    @routes.post("/auth/o2/token")
    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type",
                                      "error_description": "Unsupported grant type"}, status=400)
        if form.get("client_id") != sim.client_id or form.get("client_secret") != \
                sim.client_secret:
            return web.json_response({"error": "invalid_client",
                                      "error_description": "Client authentication failed"},
                                     status=401)
        if form.get("refresh_token") != sim.refresh_token:
            return web.json_response({
                "error": "invalid_grant",
                "error_description": "The request has an invalid grant parameter : "
                                     "refresh_token"}, status=400)
        access = "Atza|" + secrets.token_urlsafe(24)
        sim.tokens[access] = sim.clock() + sim.token_ttl
        sim.token_exchanges += 1
        return web.json_response({"access_token": access, "refresh_token": sim.refresh_token,
                                  "token_type": "bearer", "expires_in": int(sim.token_ttl)})

    # -- Listings Items -------------------------------------------------------------------------

    @routes.patch("/listings/2021-08-01/items/{seller}/{sku}")
    async def patch_item(request: web.Request) -> web.Response:
        op = "patchListingsItem"
        refused = gate(request, op)
        if refused is not None:
            return refused
        sim.patch_calls += 1
        sim.patch_times.append(sim.clock())
        sku = request.match_info["sku"]
        if request.match_info["seller"] != sim.seller_id:
            return invalid_input(op, "The sellerId is not the seller of this authorisation.")
        mids = marketplaces(request, op)
        if isinstance(mids, web.Response):
            return mids
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("productType"), str) \
                or not isinstance(body.get("patches"), list) or not body["patches"]:
            return invalid_input(op, "The body needs 'productType' and 'patches'.")
        if any(not isinstance(p, dict) or p.get("op") not in _PATCH_OPS
               or not isinstance(p.get("path"), str) for p in body["patches"]):
            return invalid_input(op, "Each patch needs 'op' and 'path'.")
        problem = sim._check_patches(body["patches"])
        if problem is None and sku in sim.failing:
            problem = ("99001", sim.failing[sku])
        submission = uuid.uuid4().hex
        if problem is not None:
            return limited(op, web.json_response({
                "sku": sku, "status": "INVALID", "submissionId": submission,
                "issues": [{"code": problem[0], "message": problem[1], "severity": "ERROR",
                            "attributeNames": ["fulfillment_availability"]}],
            }, headers=request_id()))
        sim._apply_patches(sku, body["patches"])
        return limited(op, web.json_response(
            {"sku": sku, "status": "ACCEPTED", "submissionId": submission, "issues": []},
            headers=request_id()))

    @routes.get("/listings/2021-08-01/items/{seller}/{sku}")
    async def get_item(request: web.Request) -> web.Response:
        op = "getListingsItem"
        refused = gate(request, op)
        if refused is not None:
            return refused
        sim.get_calls += 1
        sku = request.match_info["sku"]
        mids = marketplaces(request, op)
        if isinstance(mids, web.Response):
            return mids
        if request.match_info["seller"] != sim.seller_id or sku not in sim.listings:
            return limited(op, _errors(
                404, "NOT_FOUND", f"SKU '{sku}' not found in marketplace {mids[0]}", "",
                request_id()))
        included = set(request.query.get("includedData", "summaries").split(","))
        doc: dict[str, Any] = {"sku": sku}
        if "summaries" in included:
            doc["summaries"] = [{"marketplaceId": m, "productType": "PRODUCT",
                                 "status": ["BUYABLE"], "itemName": sku} for m in mids]
        if "fulfillmentAvailability" in included:
            qty = sim.listings[sku]
            entry: dict[str, Any] = {"fulfillmentChannelCode": "DEFAULT"}
            if qty is not None:
                entry["quantity"] = qty
            doc["fulfillmentAvailability"] = [entry]
        return limited(op, web.json_response(doc, headers=request_id()))

    # -- Feeds ----------------------------------------------------------------------------------

    @routes.post("/feeds/2021-06-30/documents")
    async def create_document(request: web.Request) -> web.Response:
        op = "createFeedDocument"
        refused = gate(request, op)
        if refused is not None:
            return refused
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("contentType"), str) \
                or not body["contentType"]:
            return invalid_input(op, "'contentType' is required.")
        doc_id = f"amzn1.tortuga.4.eu.{uuid.uuid4()}"
        sim.documents[doc_id] = _Document(body["contentType"], created=sim.clock())
        expires = int(time.time() + _UPLOAD_TTL)
        path = f"/s3/feed-documents/{doc_id}"
        url = (f"{request.url.origin()}{path}?X-Amz-Expires={expires}"
               f"&X-Amz-Signature={sim._sign(path, expires)}")
        return limited(op, web.json_response({"feedDocumentId": doc_id, "url": url}, status=201,
                                             headers=request_id()))

    def s3_error(status: int, code: str, message: str) -> web.Response:
        return web.Response(status=status, content_type="application/xml",
                            text=f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}"
                                 f"</Code><Message>{message}</Message></Error>")

    def signed(request: web.Request) -> bool:
        try:
            expires = int(request.query.get("X-Amz-Expires", ""))
        except ValueError:
            return False
        given = request.query.get("X-Amz-Signature", "")
        return expires >= time.time() and hmac.compare_digest(
            given, sim._sign(request.path, expires))

    @routes.put("/s3/feed-documents/{doc}")
    async def upload(request: web.Request) -> web.Response:
        doc = sim.documents.get(request.match_info["doc"])
        if doc is None or not signed(request):
            return s3_error(403, "AccessDenied", "Request has expired or is not signed.")
        if request.headers.get("Content-Type") != doc.content_type:
            return s3_error(403, "SignatureDoesNotMatch",
                            "The Content-Type does not match the one the URL was signed for.")
        doc.content = await request.read()
        sim.uploads += 1
        return web.Response(status=200)

    @routes.get("/s3/feed-documents/{doc}")
    async def download(request: web.Request) -> web.Response:
        doc = sim.documents.get(request.match_info["doc"])
        if doc is None or doc.content is None or not signed(request):
            return s3_error(403, "AccessDenied", "Request has expired or is not signed.")
        return web.Response(body=doc.content, content_type="application/octet-stream")

    @routes.post("/feeds/2021-06-30/feeds")
    async def create_feed(request: web.Request) -> web.Response:
        op = "createFeed"
        refused = gate(request, op)
        if refused is not None:
            return refused
        now = sim.clock()
        if sim._last_feed_created is not None \
                and now - sim._last_feed_created < sim.feed_interval:
            sim.throttled += 1
            sim.throttled_by_operation[op] += 1
            return _errors(429, "QuotaExceeded", QUOTA_MESSAGE, "", request_id())
        body = await json_body(request)
        if not isinstance(body, dict):
            return invalid_input(op, "The body is not a CreateFeedSpecification.")
        feed_type, mids, doc_id = (body.get("feedType"), body.get("marketplaceIds"),
                                   body.get("inputFeedDocumentId"))
        if feed_type != "JSON_LISTINGS_FEED":
            return invalid_input(op, f"Invalid feedType {feed_type!r} (the simulator knows "
                                     "JSON_LISTINGS_FEED).")
        if not isinstance(mids, list) or not mids or any(m not in sim.marketplace_ids
                                                         for m in mids):
            return invalid_input(op, "Invalid or missing marketplaceIds.")
        doc = sim.documents.get(doc_id) if isinstance(doc_id, str) else None
        if doc is None or doc.content is None or not isinstance(doc_id, str):
            return invalid_input(op, "inputFeedDocumentId names no uploaded document.")
        sim._last_feed_created = now
        feed_id = sim._next_id("5")
        outcome = sim._next_feed_outcome or "DONE"
        sim._next_feed_outcome = None
        sim.feeds[feed_id] = _Feed(feed_id, feed_type, list(mids), doc_id, _now(), now, outcome)
        sim.feeds_created += 1
        return limited(op, web.json_response({"feedId": feed_id}, status=202,
                                             headers=request_id()))

    @routes.get("/feeds/2021-06-30/feeds/{feed}")
    async def get_feed(request: web.Request) -> web.Response:
        op = "getFeed"
        refused = gate(request, op)
        if refused is not None:
            return refused
        sim.feed_polls += 1
        feed = sim.feeds.get(request.match_info["feed"])
        if feed is None:
            return limited(op, _errors(404, "NotFound", "The feed was not found.", "",
                                       request_id()))
        status = sim._status(feed)
        doc: dict[str, Any] = {"feedId": feed.feed_id, "feedType": feed.feed_type,
                               "marketplaceIds": feed.marketplace_ids,
                               "createdTime": _iso(feed.created_at), "processingStatus": status}
        if feed.started_at is not None and status != "IN_QUEUE":
            doc["processingStartTime"] = _iso(feed.started_at)
        if feed.processed:
            if feed.ended_at is not None:
                doc["processingEndTime"] = _iso(feed.ended_at)
            if feed.result_document_id is not None:
                doc["resultFeedDocumentId"] = feed.result_document_id
        return limited(op, web.json_response(doc, headers=request_id()))

    @routes.get("/feeds/2021-06-30/documents/{doc}")
    async def get_document(request: web.Request) -> web.Response:
        op = "getFeedDocument"
        refused = gate(request, op)
        if refused is not None:
            return refused
        doc_id = request.match_info["doc"]
        doc = sim.documents.get(doc_id)
        if doc is None or doc.content is None:
            return limited(op, _errors(404, "NotFound", "The feed document was not found.", "",
                                       request_id()))
        expires = int(time.time() + _UPLOAD_TTL)
        path = f"/s3/feed-documents/{doc_id}"
        out: dict[str, Any] = {
            "feedDocumentId": doc_id,
            "url": f"{request.url.origin()}{path}?X-Amz-Expires={expires}"
                   f"&X-Amz-Signature={sim._sign(path, expires)}",
        }
        if doc.compression:
            out["compressionAlgorithm"] = doc.compression
        return limited(op, web.json_response(out, headers=request_id()))

    # -- Orders ---------------------------------------------------------------------------------

    def order_json(order: _Order, included: set[str]) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "orderId": order.order_id,
            "createdTime": _iso(order.created),
            "lastUpdatedTime": _iso(order.updated),
            "salesChannel": {"channelName": "AMAZON", "marketplaceId": order.marketplace_id},
            "orderItems": [
                {"orderItemId": item_id, "quantityOrdered": qty,
                 "product": {"asin": f"B0{_digits(sku, 8)}", "sellerSku": sku}}
                for item_id, (sku, qty) in zip(order.items, order.lines, strict=True)
            ],
        }
        if "FULFILLMENT" in included:
            doc["fulfillment"] = {"fulfillmentStatus": order.status,
                                  "fulfilledBy": order.fulfilled_by}
        return doc

    @routes.get("/orders/2026-01-01/orders")
    async def search_orders(request: web.Request) -> web.Response:
        op = "searchOrders"
        refused = gate(request, op)
        if refused is not None:
            return refused
        sim.search_calls += 1
        q = {k: v for k, v in request.query.items()}
        try:
            size = int(q.get("maxResultsPerPage", "100"))
        except ValueError:
            size = 0
        if not 1 <= size <= 100:
            return invalid_input(op, "maxResultsPerPage must be between 1 and 100.")
        included = set(filter(None, q.get("includedData", "").split(",")))
        token = q.pop("paginationToken", None)
        fixed = {k: v for k, v in q.items() if k not in ("maxResultsPerPage", "includedData")}
        offset = 0
        if token is not None:
            saved = sim._pages.pop(token, None)
            if saved is None:
                return invalid_input(op, "Invalid paginationToken.")
            if saved[0] != fixed:
                return invalid_input(op, "Parameters must be the same as in the request that "
                                         "returned the paginationToken.")
            offset = saved[1]
        if ("createdAfter" in q) == ("lastUpdatedAfter" in q):
            return invalid_input(op, "Exactly one of createdAfter and lastUpdatedAfter is "
                                     "required.")
        bounds: dict[str, datetime] = {}
        for key in ("createdAfter", "createdBefore", "lastUpdatedAfter", "lastUpdatedBefore"):
            if key in q:
                parsed = _parse_time(q[key])
                if parsed is None:
                    return invalid_input(op, f"{key} is not an ISO 8601 date-time.")
                bounds[key] = parsed
        if "createdAfter" in q and ("lastUpdatedBefore" in q):
            return invalid_input(op, "lastUpdatedBefore cannot go with createdAfter.")
        if "lastUpdatedAfter" in q and ("createdBefore" in q):
            return invalid_input(op, "createdBefore cannot go with lastUpdatedAfter.")
        mids = set(filter(None, q.get("marketplaceIds", "").split(",")))
        by = set(filter(None, q.get("fulfilledBy", "").split(",")))
        statuses = set(filter(None, q.get("fulfillmentStatuses", "").split(",")))
        found = []
        for order in sim.orders.values():
            if "lastUpdatedAfter" in bounds and order.updated < bounds["lastUpdatedAfter"]:
                continue
            if "lastUpdatedBefore" in bounds and order.updated > bounds["lastUpdatedBefore"]:
                continue
            if "createdAfter" in bounds and order.created < bounds["createdAfter"]:
                continue
            if "createdBefore" in bounds and order.created > bounds["createdBefore"]:
                continue
            if mids and order.marketplace_id not in mids:
                continue
            if by and order.fulfilled_by not in by:
                continue
            if statuses and order.status not in statuses:
                continue
            found.append(order)
        found.sort(key=lambda o: (o.updated, o.order_id))
        page = found[offset: offset + size]
        doc: dict[str, Any] = {"orders": [order_json(o, included) for o in page]}
        if offset + size < len(found):
            next_token = secrets.token_urlsafe(16)
            sim._pages[next_token] = (fixed, offset + size)
            doc["pagination"] = {"nextToken": next_token}
        return limited(op, web.json_response(doc, headers=request_id()))

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(routes)
    return app


@contextlib.asynccontextmanager
async def running_sim(sim: AmazonSpSim, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `sim` on a free loopback port; yields its base URL (`http://127.0.0.1:PORT`). The
    SP-API endpoint is that URL and the LWA token URL is `{url}/auth/o2/token`."""
    async with serve_app(create_app(sim), host) as url:
        yield url


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m connectors.amazon_sp.sim --port 8082 --skus 1000`: an Amazon seller account to
    point an `amazon_sp` connector at (`endpoint = "http://127.0.0.1:8082"`, `token_url =
    "http://127.0.0.1:8082/auth/o2/token"`)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--skus", type=int, default=100, help="listings SKU-00000, SKU-00001, …")
    parser.add_argument("--refresh-token", default="Atzr|sim-refresh-token")
    parser.add_argument("--client-secret", default="sim-client-secret")
    parser.add_argument("--feed-delay", type=float, default=3.0,
                        help="seconds a feed spends IN_PROGRESS")
    args = parser.parse_args(argv)
    sim = AmazonSpSim(refresh_token=args.refresh_token, client_secret=args.client_secret,
                      feed_process_delay=args.feed_delay)
    sim.add_listings(f"SKU-{i:05d}" for i in range(args.skus))
    web.run_app(create_app(sim), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
