"""A simulator of the WooCommerce REST API v3 (products, variations, orders) and of its webhooks.

What it implements, after the public documentation (woocommerce.github.io/woocommerce-rest-api-docs)
and WooCommerce's REST controllers:

- `{site}/wp-json/wc/v3/…` with HTTP Basic authentication (consumer key / secret; the
  `consumer_key` / `consumer_secret` query parameters too). Without credentials: 401
  `woocommerce_rest_cannot_view`; a wrong key or secret: 401 `woocommerce_rest_authentication_error`
  ("Consumer key is invalid."); a read-only key writing: 401 "The API key provided does not have
  write permissions.". Errors have the WordPress shape `{"code", "message", "data": {"status"}}`.
- `GET products`: `sku` (comma-separated, matched case-insensitively like MySQL; with `sku` set,
  variations are searched too), `include`, `per_page` (1–100, else 400 `rest_invalid_param`),
  `page`, `offset`, `orderby`, `order`, `_fields`. `GET products/{id}`,
  `GET products/{id}/variations` (same parameters).
- `POST products/batch` and `POST products/{id}/variations/batch`: `create` + `update` + `delete`
  above the batch limit (100 unless `batch_limit` says otherwise, like the
  `woocommerce_rest_batch_items_limit` filter) is 413 `woocommerce_rest_request_entity_too_large`.
  Each update is applied on its own; a failing one is `{"id", "error": {"code", "message",
  "data"}}` in place: an unknown id (`woocommerce_rest_product_invalid_id` /
  `woocommerce_rest_product_variation_invalid_id`), stock management on an external product
  (`product_external_invalid_manage_stock`), a quantity that is not an integer
  (`rest_invalid_param`). The simulator is stricter than WooCommerce in one way: a variation id sent
  to `products/batch` is refused, so a connector that routes variations wrongly is caught.
- `GET orders`: `status` (comma list, default any but trash), `modified_after` / `modified_before`
  / `after` / `before` (strictly, whole seconds), `dates_are_gmt`, `orderby`
  (`date`, `id`, `include`, `modified`; `modified` can be switched off to play an older
  WooCommerce, which answers 400 `rest_invalid_param`), `order`, `per_page`, `page`, `_fields`.
  `GET orders/{id}`.
- Every collection answers `X-WP-Total`, `X-WP-TotalPages` and `Link` (`rel="prev"`, `rel="next"`,
  the request's own query with another `page`); a page past the last is 400
  `rest_post_invalid_page_number`.
- Stock moves like WooCommerce's: an order reduces managed stock when it is placed `processing`,
  `on-hold` or `completed` (not `pending`), once; cancelling restores what was reduced.
- Webhooks: `send_webhook()` POSTs the REST document of a resource as WordPress encodes it
  (`wp_json_encode`: `/` escaped) with `X-WC-Webhook-Source`, `-Topic`, `-Resource`, `-Event`,
  `-Signature` (base64 HMAC-SHA256 of the raw body), `-ID` and `-Delivery-ID`; `send_ping()` sends
  the unsigned form-encoded `webhook_id=<n>` of a webhook being saved.

Test helpers: `add_product`, `add_variable`, `set_stock` (a hand edit), `stock`, `place_order`,
`cancel_order`, `complete_order`, `fail_next` (429 with `Retry-After`, or a 5xx page),
`outage` / `recover`, `item_errors` (per-item refusals), `after_batch` (a hook run after a batch is
applied and before it is answered: a sale landing between syncd's write and its read-back),
`on_list` (a hook run before a collection is listed: an order modified while syncd pages), and
what was asked (`requests`, `batches`, `history`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from multidict import MultiMapping

from connectors._http import serve_app

from .mapping import sign

__all__ = ["WebhookResult", "WooSim", "create_app", "php_json", "running_sim"]

API = "/wp-json/wc/v3"
MAX_PER_PAGE = 100
_ORDER_OPEN = ("processing", "on-hold", "completed")  # statuses in which stock is reduced
_STATUSES = ("pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed",
             "trash", "checkout-draft")
_CRITICAL = ("<!DOCTYPE html><html><body><p>There has been a critical error on this website."
             "</p></body></html>")


def php_json(payload: Any) -> bytes:
    """JSON as `wp_json_encode` writes it: compact, ASCII, `/` escaped."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True).replace(
        "/", "\\/").encode()


def _error(status: int, code: str, message: str, **data: Any) -> web.Response:
    return web.json_response({"code": code, "message": message,
                              "data": {"status": status, **data}}, status=status)


def _invalid_param(name: str, detail: str) -> web.Response:
    return _error(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                  params={name: detail})


def _list(query: MultiMapping[str], name: str) -> list[str]:
    """An array parameter as WordPress reads it: `a,b` or `name[]=a&name[]=b`."""
    out: list[str] = []
    for key in (name, f"{name}[]"):
        for raw in query.getall(key, []):
            out.extend(part.strip() for part in raw.split(",") if part.strip())
    return out


def _parse_date(value: str) -> str | None:
    """An ISO 8601 date as WooCommerce's GMT string (`YYYY-MM-DDTHH:MM:SS`)."""
    try:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(slots=True)
class WebhookResult:
    status: int
    body: str
    delivery_id: str


class WooSim:
    """The state of one WooCommerce site and its REST API."""

    def __init__(
        self,
        *,
        consumer_key: str = "ck_simulator",
        consumer_secret: str = "cs_simulator",  # noqa: S107 - the simulator's own key
        batch_limit: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.read_only = False  # the key has Read permission only
        self.batch_limit = batch_limit
        self.clock = clock
        self.orderby_modified = True  # WooCommerce ≥ 5.8 sorts orders by modification
        self.products: dict[int, dict[str, Any]] = {}
        self.orders: dict[int, dict[str, Any]] = {}
        self.item_errors: dict[str, tuple[str, str]] = {}  # sku -> (code, message), per item
        self.after_batch: Callable[[list[int]], None] | None = None
        # a hook run before a collection is listed: (path, query); changes made there show in it
        self.on_list: Callable[[str, Mapping[str, str]], None] | None = None
        self.latency = 0.0
        self.site_url = "http://127.0.0.1"
        self._seq = 0
        self._next_product = 101
        self._next_order = 9001
        self._next_line = 1
        self._failures: deque[tuple[int, float | None]] = deque()
        self._down = 0
        # what was asked
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, query)
        self.batches: list[tuple[str, int]] = []  # (path, updates) of every batch applied
        self.history: dict[str, list[int]] = {}  # sku -> every stock value it took, in order

    # -- clock ----------------------------------------------------------------------------------

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")

    def _touch(self, doc: dict[str, Any]) -> None:
        self._seq += 1
        now = self._now()
        doc["date_modified"] = doc["date_modified_gmt"] = now
        doc["_seq"] = self._seq

    # -- products -------------------------------------------------------------------------------

    def _new_product(self, sku: str | None, type_: str, *, parent: int = 0, stock: int | None,
                     manage_stock: bool | str, name: str | None) -> dict[str, Any]:
        pid = self._next_product
        self._next_product += 1
        now = self._now()
        doc: dict[str, Any] = {
            "id": pid, "name": name or f"Article {sku or pid}", "slug": f"article-{pid}",
            "type": type_, "status": "publish", "sku": sku or "", "parent_id": parent,
            "price": "19.90", "regular_price": "19.90", "sale_price": "",
            "manage_stock": manage_stock, "stock_quantity": stock, "backorders": "no",
            "stock_status": "instock", "date_created": now, "date_created_gmt": now,
            "variations": [],
        }
        self._touch(doc)
        self._status(doc)
        self.products[pid] = doc
        if sku and stock is not None:
            self.history.setdefault(sku, []).append(stock)
        return doc

    @staticmethod
    def _status(doc: dict[str, Any]) -> None:
        if doc.get("manage_stock") is True and isinstance(doc.get("stock_quantity"), int):
            doc["stock_status"] = "instock" if doc["stock_quantity"] > 0 else "outofstock"

    def add_product(self, sku: str, stock: int | None = 0, *, manage_stock: bool = True,
                    type_: str = "simple", name: str | None = None) -> int:
        """A simple (or `external`, `grouped`) product."""
        return int(self._new_product(sku, type_, stock=stock if manage_stock else None,
                                     manage_stock=manage_stock, name=name)["id"])

    def add_products(self, skus: Sequence[str], stock: int = 0) -> list[int]:
        return [self.add_product(s, stock) for s in skus]

    def add_variable(self, sku: str | None, variations: Mapping[str, int],
                     name: str | None = None) -> int:
        """A variable product with one variation per SKU, each managing its own stock."""
        parent = self._new_product(sku, "variable", stock=None, manage_stock=False, name=name)
        for var_sku, qty in variations.items():
            var = self._new_product(var_sku, "variation", parent=parent["id"], stock=qty,
                                    manage_stock=True, name=f"{parent['name']} - {var_sku}")
            parent["variations"].append(var["id"])
        return int(parent["id"])

    def product_of(self, sku: str) -> dict[str, Any]:
        for doc in self.products.values():
            if doc["sku"] == sku and doc["status"] != "trash":
                return doc
        raise KeyError(sku)

    def id_of(self, sku: str) -> int:
        return int(self.product_of(sku)["id"])

    def stock(self, sku: str) -> int | None:
        value = self.product_of(sku)["stock_quantity"]
        return value if isinstance(value, int) else None

    def _set(self, doc: dict[str, Any], qty: int) -> None:
        doc["stock_quantity"] = qty
        self._status(doc)
        self._touch(doc)
        if doc["sku"]:
            self.history.setdefault(doc["sku"], []).append(qty)

    def set_stock(self, sku: str, qty: int) -> None:
        """A merchant edits the stock in the admin (behind syncd's back: drift)."""
        doc = self.product_of(sku)
        doc["manage_stock"] = True
        self._set(doc, qty)

    def delete_product(self, sku: str) -> None:
        """Move the product to the trash: the API no longer lists it."""
        doc = self.product_of(sku)
        doc["status"] = "trash"
        self._touch(doc)

    def product_payload(self, sku: str) -> dict[str, Any]:
        """`GET products/{id}` (and the body of a `product.updated` webhook)."""
        return self._public(self.product_of(sku))

    @staticmethod
    def _public(doc: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if not k.startswith("_")}

    # -- orders ---------------------------------------------------------------------------------

    def _stock_of_line(self, line: Mapping[str, Any]) -> dict[str, Any] | None:
        pid = line.get("variation_id") or line.get("product_id")
        doc = self.products.get(int(pid)) if pid else None
        if doc is None or doc.get("manage_stock") is not True:
            return None
        return doc

    def _reduce(self, order: dict[str, Any], sign_: int) -> None:
        for line in order["line_items"]:
            doc = self._stock_of_line(line)
            if doc is not None and isinstance(doc["stock_quantity"], int):
                self._set(doc, doc["stock_quantity"] + sign_ * int(line["quantity"]))

    def place_order(self, lines: str | Sequence[tuple[str | None, int]], qty: int = 1, *,
                    status: str = "processing") -> int:
        """A checkout: reduces managed stock unless the order stays `pending`."""
        wanted = [(lines, qty)] if isinstance(lines, str) else list(lines)
        oid = self._next_order
        self._next_order += 1
        now = self._now()
        line_items: list[dict[str, Any]] = []
        for sku, n in wanted:
            doc = self.product_of(sku) if sku else None
            is_var = doc is not None and doc["type"] == "variation"
            line_items.append({
                "id": self._next_line, "name": doc["name"] if doc else "Custom item",
                "product_id": (doc["parent_id"] if is_var else doc["id"]) if doc else 0,
                "variation_id": doc["id"] if doc is not None and is_var else 0,
                "quantity": n, "tax_class": "", "subtotal": f"{19.9 * n:.2f}",
                "total": f"{19.9 * n:.2f}", "sku": sku or "", "price": 19.9, "meta_data": [],
            })
            self._next_line += 1
        order: dict[str, Any] = {
            "id": oid, "parent_id": 0, "number": str(oid), "order_key": f"wc_order_{oid}",
            "created_via": "checkout", "status": status, "currency": "EUR",
            "date_created": now, "date_created_gmt": now, "date_paid": None,
            "date_paid_gmt": None, "date_completed": None, "date_completed_gmt": None,
            "total": f"{sum(19.9 * n for _, n in wanted):.2f}", "customer_id": 0,
            "billing": {"first_name": "Camille", "last_name": "Martin", "address_1": "1 rue X",
                        "city": "Paris", "postcode": "75001", "country": "FR",
                        "email": "camille@example.com", "phone": "0100000000"},
            "shipping": {"first_name": "Camille", "last_name": "Martin", "address_1": "1 rue X",
                         "city": "Paris", "postcode": "75001", "country": "FR"},
            "payment_method": "bacs", "line_items": line_items, "refunds": [],
            "_stock_reduced": False,
        }
        self._touch(order)
        self.orders[oid] = order
        if status in _ORDER_OPEN:
            order["date_paid"] = order["date_paid_gmt"] = now
            self._reduce(order, -1)
            order["_stock_reduced"] = True
        return oid

    def set_order_status(self, oid: int, status: str) -> None:
        order = self.orders[oid]
        order["status"] = status
        if status in _ORDER_OPEN and not order["_stock_reduced"]:
            self._reduce(order, -1)
            order["_stock_reduced"] = True
        if status in ("cancelled", "failed") and order["_stock_reduced"]:
            self._reduce(order, +1)
            order["_stock_reduced"] = False
        if status == "completed":
            order["date_completed"] = order["date_completed_gmt"] = self._now()
        self._touch(order)

    def cancel_order(self, oid: int) -> None:
        """Cancelled: the reduced stock comes back."""
        self.set_order_status(oid, "cancelled")

    def complete_order(self, oid: int) -> None:
        self.set_order_status(oid, "completed")

    def order_payload(self, oid: int) -> dict[str, Any]:
        """`GET orders/{id}` (and the body of an `order.created` / `order.updated` webhook)."""
        return self._public(self.orders[oid])

    # -- failures -------------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503, *,
                  retry_after: float | None = None) -> None:
        """The next `n` API requests answer `status` (429 with `Retry-After` when given)."""
        self._failures.extend((status, retry_after) for _ in range(n))

    def outage(self, status: int = 503) -> None:
        self._down = status

    def recover(self) -> None:
        self._down = 0
        self._failures.clear()

    @staticmethod
    def _failure(status: int, retry: float | None) -> web.Response:
        headers = {"Retry-After": f"{retry:g}"} if retry is not None else {}
        if status == 429:
            return web.json_response(
                {"code": "rest_too_many_requests", "message": "Too many requests.",
                 "data": {"status": 429}}, status=429, headers=headers)
        # PHP-FPM down, a host's error page or WordPress's fatal error handler: HTML
        return web.Response(status=status, text=_CRITICAL, content_type="text/html",
                            headers=headers)

    # -- HTTP -----------------------------------------------------------------------------------

    def _authorise(self, request: web.Request) -> web.Response | None:
        key = secret = ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                key, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        elif "consumer_key" in request.query:
            key = request.query.get("consumer_key", "")
            secret = request.query.get("consumer_secret", "")
        if not key:
            if request.method == "GET":
                return _error(401, "woocommerce_rest_cannot_view",
                              "Sorry, you cannot list resources.")
            return _error(401, "woocommerce_rest_cannot_batch",
                          "Sorry, you are not allowed to batch manipulate this resource.")
        if not hmac.compare_digest(key.encode(), self.consumer_key.encode()):
            return _error(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        if not hmac.compare_digest(secret.encode(), self.consumer_secret.encode()):
            return _error(401, "woocommerce_rest_authentication_error",
                          "Consumer secret is invalid.")
        if self.read_only and request.method != "GET":
            return _error(401, "woocommerce_rest_authentication_error",
                          "The API key provided does not have write permissions.")
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"].strip("/")
        if self.latency:
            await asyncio.sleep(self.latency)
        if self._down:
            return self._failure(self._down, None)
        if self._failures:
            return self._failure(*self._failures.popleft())
        denied = self._authorise(request)
        if denied is not None:
            return denied
        self.requests.append((request.method, path, dict(request.query)))
        method = request.method
        if method == "GET" and self.on_list is not None and (
                path in ("products", "orders") or path.endswith("/variations")):
            self.on_list(path, dict(request.query))
        if method == "GET" and path == "products":
            return self._list_products(request, None)
        if method == "GET" and (m := re.fullmatch(r"products/([0-9]+)", path)):
            doc = self.products.get(int(m.group(1)))
            if doc is None or doc["status"] == "trash":
                return _error(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
            return web.json_response(self._public(doc))
        if method == "GET" and (m := re.fullmatch(r"products/([0-9]+)/variations", path)):
            return self._list_products(request, int(m.group(1)))
        if method == "POST" and path == "products/batch":
            return await self._batch(request, None)
        if method == "POST" and (m := re.fullmatch(r"products/([0-9]+)/variations/batch", path)):
            return await self._batch(request, int(m.group(1)))
        if method == "GET" and path == "orders":
            return self._list_orders(request)
        if method == "GET" and (m := re.fullmatch(r"orders/([0-9]+)", path)):
            order = self.orders.get(int(m.group(1)))
            if order is None:
                return _error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
            return web.json_response(self._public(order))
        return _error(404, "rest_no_route",
                      "No route was found matching the URL and request method.")

    def _page(self, request: web.Request, docs: list[dict[str, Any]]) -> web.Response:
        """A page of a collection with WordPress's headers, `_fields` applied."""
        query = request.query
        try:
            per_page = int(query.get("per_page", "10"))
        except ValueError:
            return _invalid_param("per_page", "per_page is not of type integer.")
        if not 1 <= per_page <= MAX_PER_PAGE:
            return _invalid_param("per_page", "per_page must be between 1 (inclusive) and 100 "
                                              "(inclusive)")
        try:
            page = int(query.get("page", "1"))
            offset = int(query["offset"]) if "offset" in query else (page - 1) * per_page
        except ValueError:
            return _invalid_param("page", "page is not of type integer.")
        if page < 1:
            return _invalid_param("page", "page must be greater than or equal to 1")
        total = len(docs)
        pages = max(1, math.ceil(total / per_page)) if total else 0
        if total and page > pages:
            return _error(400, "rest_post_invalid_page_number",
                          "The page number requested is larger than the number of pages "
                          "available.")
        chunk = docs[offset : offset + per_page]
        fields = _list(query, "_fields")
        if fields:
            keep = set(fields) | {"id"}
            body = [{k: v for k, v in self._public(d).items() if k in keep} for d in chunk]
        else:
            body = [self._public(d) for d in chunk]
        links = []
        if page > 1:
            links.append(f'<{request.url.update_query(page=str(page - 1))}>; rel="prev"')
        if page < pages:
            links.append(f'<{request.url.update_query(page=str(page + 1))}>; rel="next"')
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        if links:
            headers["Link"] = ", ".join(links)
        return web.json_response(body, headers=headers)

    @staticmethod
    def _sort(docs: list[dict[str, Any]], query: MultiMapping[str], default: str,
              keys: Mapping[str, Callable[[dict[str, Any]], Any]],
              include: Sequence[int]) -> list[dict[str, Any]] | web.Response:
        orderby = query.get("orderby", default)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            return _invalid_param("order", "order is not one of asc and desc.")
        if orderby == "include":
            pos = {pid: i for i, pid in enumerate(include)}
            return sorted(docs, key=lambda d: pos.get(d["id"], len(pos)))
        key = keys.get(orderby)
        if key is None:
            return _invalid_param("orderby", f"orderby is not one of {', '.join(keys)}.")
        return sorted(docs, key=key, reverse=order == "desc")

    def _list_products(self, request: web.Request, parent: int | None) -> web.Response:
        query = request.query
        skus = _list(query, "sku") if "sku" in query else []
        if "sku" in query and len(skus) > 1:
            skus.append(query["sku"])  # WooCommerce matches the whole string too
        wanted_skus = {s.lower() for s in skus}
        try:
            include = [int(x) for x in _list(query, "include")]
        except ValueError:
            return _invalid_param("include", "include[0] is not of type integer.")
        docs = []
        for doc in self.products.values():
            if doc["status"] == "trash":
                continue
            if parent is not None:
                if doc["type"] != "variation" or doc["parent_id"] != parent:
                    continue
            elif doc["type"] == "variation" and not skus:
                continue  # without `sku`, only products (post type `product`)
            if skus and doc["sku"].lower() not in wanted_skus:
                continue
            if include and doc["id"] not in include:
                continue
            docs.append(doc)
        ordered = self._sort(docs, query, "date",
                             {"date": lambda d: d["id"], "id": lambda d: d["id"],
                              "title": lambda d: d["name"], "slug": lambda d: d["slug"],
                              "modified": lambda d: (d["date_modified_gmt"], d["_seq"])},
                             include)
        if isinstance(ordered, web.Response):
            return ordered
        return self._page(request, ordered)

    def _list_orders(self, request: web.Request) -> web.Response:
        query = request.query
        statuses = _list(query, "status") or ["any"]
        for s in statuses:
            if s != "any" and s not in _STATUSES:
                return _invalid_param("status", f"status[0] is not one of any, "
                                                f"{', '.join(_STATUSES)}.")
        bounds: dict[str, str] = {}
        for name in ("modified_after", "modified_before", "after", "before"):
            if name in query:
                parsed = _parse_date(query[name])
                if parsed is None:
                    return _invalid_param(name, "Invalid date.")
                bounds[name] = parsed
        try:
            include = [int(x) for x in _list(query, "include")]
        except ValueError:
            return _invalid_param("include", "include[0] is not of type integer.")
        docs = []
        for order in self.orders.values():
            status = order["status"]
            if "any" in statuses:
                if status in ("trash", "checkout-draft"):
                    continue
            elif status not in statuses:
                continue
            mod, created = order["date_modified_gmt"], order["date_created_gmt"]
            if "modified_after" in bounds and not mod > bounds["modified_after"]:
                continue
            if "modified_before" in bounds and not mod < bounds["modified_before"]:
                continue
            if "after" in bounds and not created > bounds["after"]:
                continue
            if "before" in bounds and not created < bounds["before"]:
                continue
            if include and order["id"] not in include:
                continue
            docs.append(order)
        keys: dict[str, Callable[[dict[str, Any]], Any]] = {
            "date": lambda d: (d["date_created_gmt"], d["id"]), "id": lambda d: d["id"],
            "title": lambda d: d["id"], "slug": lambda d: d["id"]}
        if self.orderby_modified:
            keys["modified"] = lambda d: (d["date_modified_gmt"], d["_seq"])
        ordered = self._sort(docs, query, "date", keys, include)
        if isinstance(ordered, web.Response):
            return ordered
        return self._page(request, ordered)

    def _update(self, item: Any, parent: int | None) -> tuple[dict[str, Any], int | None]:
        """One update of a batch: the product's document, or an error item."""
        pid = item.get("id") if isinstance(item, dict) else None
        doc = self.products.get(pid) if isinstance(pid, int) else None
        if parent is None:
            invalid = ("woocommerce_rest_product_invalid_id", "Invalid ID.")
            if doc is None or doc["type"] == "variation" or doc["status"] == "trash":
                doc = None
        else:
            invalid = ("woocommerce_rest_product_variation_invalid_id", "Invalid ID.")
            if doc is None or doc["type"] != "variation" or doc["parent_id"] != parent:
                doc = None

        def refuse(code: str, message: str) -> tuple[dict[str, Any], None]:
            return {"id": pid if isinstance(pid, int) else 0,
                    "error": {"code": code, "message": message, "data": {"status": 400}}}, None

        if doc is None or not isinstance(item, dict):
            return refuse(*invalid)
        if doc["sku"] in self.item_errors:
            return refuse(*self.item_errors[doc["sku"]])
        manage = item.get("manage_stock", doc["manage_stock"])
        if doc["type"] == "external" and manage is True:
            return refuse("product_external_invalid_manage_stock",
                          "External products cannot be stock managed.")
        qty = item.get("stock_quantity", doc["stock_quantity"])
        if qty is not None and (isinstance(qty, bool) or not isinstance(qty, int)):
            return refuse("rest_invalid_param", "Invalid parameter(s): stock_quantity")
        doc["manage_stock"] = manage
        if qty is not None and manage is True:
            self._set(doc, qty)
        else:
            self._touch(doc)
        return self._public(doc), int(doc["id"])

    async def _batch(self, request: web.Request, parent: int | None) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "rest_invalid_json", "Invalid JSON body passed.")
        if not isinstance(body, dict):
            return _error(400, "rest_invalid_json", "Invalid JSON body passed.")
        total = sum(len(body[k]) for k in ("create", "update", "delete")
                    if isinstance(body.get(k), list))
        if total > self.batch_limit:
            return _error(413, "woocommerce_rest_request_entity_too_large",
                          f"Unable to accept more than {self.batch_limit} items for this "
                          "request.")
        answer: dict[str, list[Any]] = {}
        applied: list[int] = []
        for item in body.get("update") or []:
            result, pid = self._update(item, parent)
            answer.setdefault("update", []).append(result)
            if pid is not None:
                applied.append(pid)
        for kind in ("create", "delete"):
            for item in body.get(kind) or []:
                answer.setdefault(kind, []).append({
                    "id": item.get("id", 0) if isinstance(item, dict) else item,
                    "error": {"code": "woocommerce_rest_cannot_" + kind,
                              "message": "Not simulated.", "data": {"status": 501}}})
        path = "products/batch" if parent is None else f"products/{parent}/variations/batch"
        self.batches.append((path, len(body.get("update") or [])))
        if self.after_batch is not None and applied:
            self.after_batch(applied)
        return web.json_response(answer)

    # -- webhooks -------------------------------------------------------------------------------

    async def send_webhook(
        self, topic: str, payload: Mapping[str, Any] | bytes, url: str, secret: str, *,
        signature: str | None = None, webhook_id: int = 1,
        session: aiohttp.ClientSession | None = None,
    ) -> WebhookResult:
        """POST a webhook the way WooCommerce delivers it (`WC_Webhook::deliver`)."""
        body = payload if isinstance(payload, bytes) else php_json(payload)
        resource, _, event = topic.partition(".")
        delivery = uuid.uuid4().hex
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "WooCommerce/10.3.0 Hookshot (WordPress/6.8.1)",
            "X-WC-Webhook-Source": f"{self.site_url}/",
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Signature": signature if signature is not None
            else sign(secret.encode(), body),
            "X-WC-Webhook-ID": str(webhook_id),
            "X-WC-Webhook-Delivery-ID": delivery,
        }
        return await self._post(url, body, headers, delivery, session)

    async def send_ping(self, url: str, webhook_id: int = 1,
                        session: aiohttp.ClientSession | None = None) -> WebhookResult:
        """The test delivery of a webhook being saved: unsigned, form-encoded."""
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "User-Agent": "WooCommerce/10.3.0 Hookshot (WordPress/6.8.1)"}
        return await self._post(url, f"webhook_id={webhook_id}".encode(), headers, "", session)

    @staticmethod
    async def _post(url: str, body: bytes, headers: Mapping[str, str], delivery: str,
                    session: aiohttp.ClientSession | None) -> WebhookResult:
        own = session is None
        http = session or aiohttp.ClientSession()
        try:
            async with http.post(url, data=body, headers=dict(headers),
                                 timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return WebhookResult(resp.status, await resp.text(), delivery)
        finally:
            if own:
                await http.close()


SIM: web.AppKey[WooSim] = web.AppKey("woocommerce_sim", WooSim)


def create_app(sim: WooSim | None = None, **kwargs: Any) -> web.Application:
    """The simulator as an aiohttp application (`kwargs` build a `WooSim` when none given)."""
    state = sim if sim is not None else WooSim(**kwargs)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[SIM] = state
    app.router.add_route("*", API + "/{tail:.*}", state.handle)
    return app


@contextlib.asynccontextmanager
async def running_sim(sim: WooSim, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `sim` on a free loopback port; yields the site URL (`http://127.0.0.1:PORT`)."""
    async with serve_app(create_app(sim), host) as url:
        sim.site_url = url
        yield url


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m connectors.woocommerce.sim --port 8082 --skus 100`: a site to point a
    `woocommerce` connector at (`url = "http://127.0.0.1:8082"`)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--skus", type=int, default=100, help="products SKU-00000, SKU-00001, …")
    parser.add_argument("--key", default="ck_simulator")
    parser.add_argument("--secret", default="cs_simulator")
    args = parser.parse_args(argv)
    sim = WooSim(consumer_key=args.key, consumer_secret=args.secret)
    sim.add_products([f"SKU-{i:05d}" for i in range(args.skus)])
    sim.site_url = f"http://{args.host}:{args.port}"
    web.run_app(create_app(sim), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
