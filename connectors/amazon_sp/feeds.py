"""Bulk quantities through the Feeds API (2021-06-30) and a `JSON_LISTINGS_FEED`.

The documented sequence (developer-docs.amazon.com/sp-api, "Feeds API v2021-06-30 Use Case
Guide"; schemas in github.com/amzn/selling-partner-api-models, `schemas/feeds/`):

1. `POST /feeds/2021-06-30/documents` `{"contentType": "application/json; charset=UTF-8"}`
   → 201 `{"feedDocumentId", "url"}` (a pre-signed upload URL, valid for 5 minutes).
2. `PUT {url}` with the feed content and the same `Content-Type` (no SP-API token: it is S3).
3. `POST /feeds/2021-06-30/feeds` `{"feedType": "JSON_LISTINGS_FEED", "marketplaceIds": [...],
   "inputFeedDocumentId"}` → 202 `{"feedId"}`. createFeed: 0.0083/s, burst 15; for
   JSON_LISTINGS_FEED, five submissions per five minutes per region (changelog of May 2025,
   which also raised the size from 10,000 to 25,000 messages per feed).
4. `GET /feeds/2021-06-30/feeds/{feedId}` until `processingStatus` is `DONE`, `CANCELLED` or
   `FATAL` (`IN_QUEUE` → `IN_PROGRESS` → …). A DONE feed names its `resultFeedDocumentId`.
5. `GET /feeds/2021-06-30/documents/{id}` → `{"feedDocumentId", "url",
   "compressionAlgorithm"?}`; `GET {url}` gives the processing report (gzip when
   `compressionAlgorithm` is `GZIP`).

The feed (listings-feed-schema-v2):
`{"header": {"sellerId", "version": "2.0", "issueLocale"}, "messages": [{"messageId": 1, "sku",
"operationType": "PATCH", "productType", "patches": [{"op": "merge", "path":
"/attributes/fulfillment_availability", "value": [{"fulfillment_channel_code": "DEFAULT",
"quantity": N}]}]}, …]}`.

The processing report (listings-feed-processing-report-schema-v2):
`{"header": {"sellerId", "version", "feedId"}, "issues": [{"messageId"?, "sku"?, "code"?,
"severity": "ERROR" | "WARNING" | "INFO", "message", "attributeName"?}], "summary": {"errors",
"warnings", "messagesProcessed", "messagesAccepted", "messagesInvalid"}}`. A message with an
`ERROR` issue was not accepted; every other message was ("the associated updates are being
applied"). An issue without `messageId` concerns the feed as a whole.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from connectors.base import TransientPushError

from .client import SpApiClient, error_text

__all__ = [
    "CONTENT_TYPE",
    "FEED_TYPE",
    "MAX_MESSAGES",
    "FeedClient",
    "Report",
    "build_feed",
    "parse_report",
    "quantity_patches",
]

log = logging.getLogger("connectors.amazon_sp")

FEED_TYPE = "JSON_LISTINGS_FEED"
CONTENT_TYPE = "application/json; charset=UTF-8"
MAX_MESSAGES = 25_000
TERMINAL = frozenset({"DONE", "CANCELLED", "FATAL"})
_MAX_REPORT_BYTES = 512 * 1024 * 1024


def quantity_patches(quantity: int) -> list[dict[str, Any]]:
    """The JSON Patch that sets the merchant-fulfilled quantity of a listing."""
    return [{
        "op": "merge",
        "path": "/attributes/fulfillment_availability",
        "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": quantity}],
    }]


def build_feed(seller_id: str, product_type: str, lines: Sequence[tuple[str, int]],
               issue_locale: str = "en_US") -> bytes:
    """A JSON_LISTINGS_FEED of one PATCH message per (sku, quantity); message ids are 1..n in
    the order given."""
    if len(lines) > MAX_MESSAGES:
        raise ValueError(f"a {FEED_TYPE} holds at most {MAX_MESSAGES} messages")
    doc = {
        "header": {"sellerId": seller_id, "version": "2.0", "issueLocale": issue_locale},
        "messages": [
            {"messageId": i, "sku": sku, "operationType": "PATCH", "productType": product_type,
             "patches": quantity_patches(qty)}
            for i, (sku, qty) in enumerate(lines, start=1)
        ],
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(slots=True)
class Report:
    """What a processing report says: ERROR messages by message id, feed-level errors, counts."""

    errors: dict[int, list[str]] = field(default_factory=dict)
    feed_errors: list[str] = field(default_factory=list)
    warnings: int = 0
    processed: int | None = None
    accepted: int | None = None
    invalid: int | None = None


def _issue_text(issue: dict[str, Any]) -> str:
    message = str(issue.get("message") or "no message")
    code = issue.get("code")
    return f"{message} (code {code})" if code else message


def parse_report(raw: bytes, compression: str | None = None) -> Report:
    """Read a processing report (raises ValueError when it is not one)."""
    if compression:
        if compression.upper() != "GZIP":
            raise ValueError(f"unknown compressionAlgorithm {compression!r}")
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"the report is not valid gzip: {exc}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the report is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("issues", []), list):
        raise ValueError("the report is not a JSON listings processing report")
    report = Report()
    for issue in doc.get("issues") or ():
        if not isinstance(issue, dict):
            continue
        severity = str(issue.get("severity", "")).upper()
        if severity == "WARNING":
            report.warnings += 1
        if severity != "ERROR":
            continue
        mid = issue.get("messageId")
        if isinstance(mid, int) and not isinstance(mid, bool):
            report.errors.setdefault(mid, []).append(_issue_text(issue))
        else:
            report.feed_errors.append(_issue_text(issue))
    summary = doc.get("summary")
    if isinstance(summary, dict):
        for attr, key in (("processed", "messagesProcessed"), ("accepted", "messagesAccepted"),
                          ("invalid", "messagesInvalid")):
            value = summary.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(report, attr, value)
    return report


@dataclass(slots=True)
class FeedStatus:
    feed_id: str
    status: str  # IN_QUEUE / IN_PROGRESS / DONE / CANCELLED / FATAL, or WAITING (our timeout)
    result_document_id: str | None = None
    polls: int = 0


class FeedClient:
    """Creates JSON_LISTINGS_FEEDs, waits for them and reads their processing reports."""

    def __init__(
        self,
        client: SpApiClient,
        marketplace_ids: Sequence[str],
        min_interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.marketplace_ids = list(marketplace_ids)
        self.min_interval = min_interval
        self.clock = clock
        self.last_created: float | None = None
        self.feeds_created = 0
        self.bytes_uploaded = 0

    def wait_before_create(self) -> float:
        """Seconds before another feed may be created (0 when one may be now)."""
        if self.last_created is None:
            return 0.0
        return max(0.0, self.last_created + self.min_interval - self.clock())

    async def submit(self, content: bytes) -> str:
        """Upload `content` and create the feed. Returns the feed id."""
        resp = await self.client.call("createFeedDocument", "POST", "/feeds/2021-06-30/documents",
                                      body={"contentType": CONTENT_TYPE})
        doc = resp.body if isinstance(resp.body, dict) else {}
        doc_id, url = doc.get("feedDocumentId"), doc.get("url")
        if resp.status not in (200, 201) or not isinstance(doc_id, str) \
                or not isinstance(url, str):
            raise TransientPushError(
                f"createFeedDocument answered HTTP {resp.status}: {error_text(resp.body)}")
        await self._upload(url, content)
        self.last_created = self.clock()  # from here on, a refusal still counts as an attempt
        try:
            resp = await self.client.call(
                "createFeed", "POST", "/feeds/2021-06-30/feeds",
                body={"feedType": FEED_TYPE, "marketplaceIds": self.marketplace_ids,
                      "inputFeedDocumentId": doc_id},
                retry_throttled=False,  # a throttled createFeed waits for the next slot
            )
        except TransientPushError as exc:  # throttled or 5xx: not before the next slot
            raise TransientPushError(exc.reason,
                                     max(exc.retry_after or 0.0, self.min_interval)) from None
        feed_id = resp.body.get("feedId") if isinstance(resp.body, dict) else None
        if resp.status not in (200, 202) or not isinstance(feed_id, str):
            raise TransientPushError(
                f"createFeed answered HTTP {resp.status}: {error_text(resp.body)}",
                self.min_interval)
        self.feeds_created += 1
        log.info("%s %s created (%d bytes)", FEED_TYPE, feed_id, len(content))
        return feed_id

    async def _upload(self, url: str, content: bytes) -> None:
        session = self.client.session()
        try:
            async with session.put(
                url, data=content, headers={"Content-Type": CONTENT_TYPE},
                timeout=aiohttp.ClientTimeout(total=max(self.client.timeout, 120.0)),
            ) as resp:
                status = resp.status
                await resp.read()
        except TimeoutError:
            raise TransientPushError("the feed upload timed out") from None
        except aiohttp.ClientError as exc:
            raise TransientPushError(f"cannot upload the feed: {type(exc).__name__}") from None
        if status not in (200, 201, 204):
            raise TransientPushError(f"the feed upload answered HTTP {status}")
        self.bytes_uploaded += len(content)

    async def wait(self, feed_id: str, poll_every: float, *, within: float) -> FeedStatus:
        """Poll getFeed until the feed ends, or `within` seconds pass (status WAITING)."""
        deadline = self.clock() + within
        polls = 0
        while True:
            polls += 1
            try:
                resp = await self.client.call("getFeed", "GET",
                                              f"/feeds/2021-06-30/feeds/{feed_id}")
            except TransientPushError as exc:  # the feed goes on without us: ask again later
                log.warning("getFeed %s failed: %s", feed_id, exc.reason)
            else:
                doc = resp.body if isinstance(resp.body, dict) else {}
                if resp.status != 200:
                    raise TransientPushError(
                        f"getFeed {feed_id} answered HTTP {resp.status}: {error_text(resp.body)}")
                status = str(doc.get("processingStatus", ""))
                if status in TERMINAL:
                    result = doc.get("resultFeedDocumentId")
                    return FeedStatus(feed_id, status,
                                      result if isinstance(result, str) else None, polls)
            if self.clock() + poll_every > deadline:
                return FeedStatus(feed_id, "WAITING", None, polls)
            await asyncio.sleep(poll_every)

    async def report(self, document_id: str) -> Report:
        """Download and read a processing report."""
        resp = await self.client.call("getFeedDocument", "GET",
                                      f"/feeds/2021-06-30/documents/{document_id}")
        doc = resp.body if isinstance(resp.body, dict) else {}
        url = doc.get("url")
        if resp.status != 200 or not isinstance(url, str):
            raise TransientPushError(
                f"getFeedDocument answered HTTP {resp.status}: {error_text(resp.body)}")
        compression = doc.get("compressionAlgorithm")
        session = self.client.session()
        try:
            async with session.get(
                url, timeout=aiohttp.ClientTimeout(total=max(self.client.timeout, 120.0)),
            ) as got:
                status = got.status
                raw = await got.content.read(_MAX_REPORT_BYTES)
        except TimeoutError:
            raise TransientPushError("the processing report download timed out") from None
        except aiohttp.ClientError as exc:
            raise TransientPushError(
                f"cannot download the processing report: {type(exc).__name__}") from None
        if status != 200:
            raise TransientPushError(f"the processing report download answered HTTP {status}")
        try:
            return parse_report(raw, compression if isinstance(compression, str) else None)
        except ValueError as exc:
            raise TransientPushError(f"unreadable processing report: {exc}") from None
