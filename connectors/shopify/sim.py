"""A simulator of the Shopify Admin GraphQL API (2026-04) for inventory, and of its webhooks.

What it implements, after the public documentation (shopify.dev):

- `POST /admin/api/{version}/graphql.json` with `X-Shopify-Access-Token`; a missing or wrong token
  is HTTP 401 `{"errors": "[API] Invalid API key or access token (unrecognized login or wrong
  password)"}`. Documents are parsed for real (`gql.py`): operations, variables, aliases, inline
  fragments, directives. Unknown fields are errors, as on Shopify.
- Queries: `inventoryItems(first|last, after|before, query, reverse)` with cursors and
  `pageInfo`, where `query` takes `sku:X` terms joined with `OR` (case-insensitive, as Shopify
  search is); `inventoryItem(id)`, `nodes(ids)`, `node(id)`, `location(id)`, `locations`, `shop`;
  `InventoryItem.inventoryLevel(locationId)` / `inventoryLevels`;
  `InventoryLevel.quantities(names)`.
- `inventorySetQuantities(input)` with `@idempotent(key:)` (mandatory as of 2026-04): a repeated
  key with the same input replays the stored result without applying it again; with another input
  it is `IDEMPOTENCY_KEY_PARAMETER_MISMATCH`. `changeFromQuantity` is mandatory on every quantity
  (explicit `null` skips the check) and is a compare-and-set: a mismatch is
  `CHANGE_FROM_QUANTITY_STALE`. At most 250 quantities (`MAX_INPUT_SIZE_EXCEEDED`). The mutation
  is all-or-nothing: any user error and nothing is applied (`inventoryAdjustmentGroup: null`).
- Cost-based rate limiting ("GraphQL Admin API rate limits"): a leaky bucket of
  `maximum_available` points restored at `restore_rate` points/s (Standard 2,000 / 100; Plus
  20,000 / 1,000). A call needs its requested cost in the bucket, else it is answered HTTP 200 with
  `THROTTLED` and `actualQueryCost: null`; after it runs, requested − actual is refunded. A single
  query may not request more than 1,000 points (`MAX_COST_EXCEEDED`). Every answer carries
  `extensions.cost` with `throttleStatus`. Cost model: scalars 0, objects 1, connections
  2 + size × (1 + the node's fields), `nodes(ids)` len(ids) × (1 + fields), mutations 10.
- Webhooks: `send_webhook()` signs a payload the way Shopify does (`X-Shopify-Hmac-SHA256` =
  base64 HMAC-SHA256 of the raw body) and POSTs it with the documented headers; payload builders
  give the documented shapes of `orders/create`, `orders/cancelled`, `orders/fulfilled` and
  `inventory_levels/update`.

Test helpers: `add_items`, `set_available` (a hand-made drift), `available`, `fail_next`
(5xx before or after applying: a lost answer), `drain` (empty the bucket) and counters (`calls`,
`throttled`, `mutations`, `quantities_per_mutation`, `replays`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from connectors._http import serve_app

from . import gql
from .mapping import sign

__all__ = [
    "PLUS",
    "STANDARD",
    "ShopifySim",
    "WebhookResult",
    "create_app",
    "running_sim",
]

STANDARD = (2000.0, 100.0)  # (maximumAvailable, restoreRate)
PLUS = (20000.0, 1000.0)
# the error message of a bad token, not a credential
AUTH_ERROR = "[API] Invalid API key or access token (unrecognized login or wrong password)"
THROTTLE_DOC = "https://shopify.dev/api/usage/rate-limits"
MAX_PAGE = 250
MAX_INPUT = 250
IDEMPOTENCY_KEYS_KEPT = 100_000  # Shopify keeps keys for a retention window; we keep the newest
_VERSION = re.compile(r"[0-9]{4}-[0-9]{2}|unstable")
_NODE_TYPES = ("InventoryItem", "InventoryLevel", "Location")
_QUANTITY_NAMES = frozenset({"available", "on_hand", "committed", "incoming", "reserved",
                             "damaged", "safety_stock", "quality_control"})
_REASONS = frozenset({
    "correction", "cycle_count_available", "damaged", "movement_canceled", "movement_created",
    "movement_received", "movement_updated", "other", "promotion", "quality_control", "received",
    "reservation_created", "reservation_deleted", "reservation_updated", "restock",
    "safety_stock", "shrinkage",
})
_S = ("scalar", "")
# type -> field -> (kind, target type). kinds: scalar, obj, list, conn, nodes, mutation
SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    "QueryRoot": {
        "inventoryItems": ("conn", "InventoryItem"), "inventoryItem": ("obj", "InventoryItem"),
        "nodes": ("nodes", "Node"), "node": ("obj", "Node"), "location": ("obj", "Location"),
        "locations": ("conn", "Location"), "shop": ("obj", "Shop"),
    },
    "Mutation": {"inventorySetQuantities": ("mutation", "InventorySetQuantitiesPayload")},
    "InventoryItem": {
        "id": _S, "sku": _S, "tracked": _S, "legacyResourceId": _S, "createdAt": _S,
        "updatedAt": _S, "inventoryLevel": ("obj", "InventoryLevel"),
        "inventoryLevels": ("conn", "InventoryLevel"),
    },
    "InventoryLevel": {
        "id": _S, "createdAt": _S, "updatedAt": _S, "location": ("obj", "Location"),
        "item": ("obj", "InventoryItem"), "quantities": ("list", "InventoryQuantity"),
    },
    "InventoryQuantity": {"id": _S, "name": _S, "quantity": _S, "updatedAt": _S},
    "Location": {"id": _S, "name": _S, "isActive": _S, "legacyResourceId": _S},
    "Shop": {"id": _S, "name": _S, "myshopifyDomain": _S},
    "InventorySetQuantitiesPayload": {
        "inventoryAdjustmentGroup": ("obj", "InventoryAdjustmentGroup"),
        "userErrors": ("list", "InventorySetQuantitiesUserError"),
    },
    "InventoryAdjustmentGroup": {
        "id": _S, "createdAt": _S, "reason": _S, "referenceDocumentUri": _S,
        "changes": ("list", "InventoryChange"),
    },
    "InventoryChange": {
        "name": _S, "delta": _S, "quantityAfterChange": _S, "item": ("obj", "InventoryItem"),
        "location": ("obj", "Location"),
    },
    "InventorySetQuantitiesUserError": {"code": _S, "field": _S, "message": _S},
    "PageInfo": {"hasNextPage": _S, "hasPreviousPage": _S, "startCursor": _S, "endCursor": _S},
}

Obj = tuple[str, Any]  # (GraphQL type, the simulator's value)


class _GQLError(Exception):
    def __init__(self, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.extra = extra

    def as_json(self, path: list[str] | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message}
        if path:
            err["path"] = path
        if self.code:
            err["extensions"] = {"code": self.code, **self.extra}
        return err


@dataclass(slots=True)
class _Page:
    nodes: list[Obj]
    cursors: list[str]
    has_next: bool
    has_prev: bool


@dataclass(slots=True)
class WebhookResult:
    status: int
    body: str
    event_id: str
    webhook_id: str


def _iso(ts: float | None = None) -> str:
    when = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _num(gid: str) -> int:
    tail = gid.rsplit("/", 1)[-1].split("?", 1)[0]
    return int(tail) if tail.isdigit() else -1


def _cursor(kind: str, num: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"k": kind, "id": num}).encode()).decode()


def _uncursor(cursor: Any) -> int:
    try:
        doc = json.loads(base64.urlsafe_b64decode(str(cursor).encode()))
        return int(doc["id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _GQLError("Invalid cursor for current pagination sort.", "BAD_REQUEST") from exc


_TERM = re.compile(r'\s*(?:(?P<field>[A-Za-z_]+):)?(?:"(?P<q>(?:\\.|[^"\\])*)"|(?P<w>\S+))\s*')


def _search_terms(query: str) -> list[tuple[str, str]]:
    """`sku:"A" OR sku:B` as [(field, value)]: OR-joined terms of Shopify's search syntax."""
    terms: list[tuple[str, str]] = []
    for part in re.split(r"\s+OR\s+", query.strip()):
        if not part:
            continue
        m = _TERM.fullmatch(part)
        if m is None:
            terms.append(("", part))
            continue
        value = m.group("q")
        value = re.sub(r"\\(.)", r"\1", value) if value is not None else m.group("w") or ""
        terms.append(((m.group("field") or "").lower(), value))
    return terms


class _Bucket:
    def __init__(self, maximum: float, rate: float, clock: Callable[[], float]) -> None:
        self.maximum = maximum
        self.rate = rate
        self.clock = clock
        self.available = maximum
        self.stamp = clock()

    def level(self) -> float:
        now = self.clock()
        self.available = min(self.maximum, self.available + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.available

    def status(self) -> dict[str, Any]:
        return {"maximumAvailable": float(self.maximum),
                "currentlyAvailable": int(self.level()),
                "restoreRate": float(self.rate)}


@dataclass(slots=True)
class _Failure:
    status: int
    after_apply: bool


@dataclass(slots=True)
class _Item:
    num: int
    sku: str
    tracked: bool = True
    created_at: str = field(default_factory=_iso)

    @property
    def gid(self) -> str:
        return f"gid://shopify/InventoryItem/{self.num}"


class ShopifySim:
    """The state of one shop and the GraphQL endpoint over it."""

    def __init__(
        self,
        *,
        access_token: str = "shpat_simulator",  # noqa: S107 - the simulator's own token
        shop_domain: str = "syncd-sim.myshopify.com",
        api_version: str = "2026-04",
        maximum_available: float = STANDARD[0],
        restore_rate: float = STANDARD[1],
        max_query_cost: int = 1000,
        locations: Sequence[str] = ("Lyon DC", "Paris store"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.access_token = access_token
        self.shop_domain = shop_domain
        self.api_version = api_version
        self.max_query_cost = max_query_cost
        self.bucket = _Bucket(maximum_available, restore_rate, clock)
        self.locations: dict[str, str] = {}  # gid -> name
        self.items: dict[str, _Item] = {}  # gid -> item, in id order
        self.by_sku: dict[str, str] = {}  # first item of each SKU
        self.levels: dict[tuple[str, str], int] = {}  # (item gid, location gid) -> available
        self.updated: dict[tuple[str, str], str] = {}
        self._next_item = 43_000_000_001
        self._next_group = 1
        self._idempotency: dict[str, tuple[str, dict[str, Any]]] = {}
        self._failures: list[_Failure] = []
        self._down = 0  # while non-zero, every call answers this HTTP status
        # called with (sku, location gid, quantity) for every applied quantity (benchmarks)
        self.on_set: Callable[[str, str, int], None] | None = None
        self.latency = 0.0
        # counters
        self.calls = 0
        self.throttled = 0
        self.mutations = 0  # applied inventorySetQuantities
        self.mutation_calls = 0  # every inventorySetQuantities executed (applied, refused)
        self.quantities_per_mutation: list[int] = []
        self.replays = 0
        self.stale = 0
        self.points_requested = 0
        self.points_spent = 0
        self.operations: deque[str] = deque(maxlen=1000)  # operation names, newest last
        for name in locations:
            self.add_location(name)

    # -- state helpers --------------------------------------------------------------------------

    def add_location(self, name: str) -> str:
        gid = f"gid://shopify/Location/{len(self.locations) + 1}"
        self.locations[gid] = name
        return gid

    @property
    def default_location(self) -> str:
        return next(iter(self.locations))

    def add_item(self, sku: str, available: int | Mapping[str, int] = 0,
                 stocked_at: Iterable[str] | None = None, tracked: bool = True) -> str:
        """A product variant's inventory item, stocked at `stocked_at` (default: everywhere)."""
        item = _Item(self._next_item, sku, tracked)
        self._next_item += 1
        self.items[item.gid] = item
        self.by_sku.setdefault(sku, item.gid)
        where = list(stocked_at) if stocked_at is not None else list(self.locations)
        for loc in where:
            if loc not in self.locations:
                raise KeyError(loc)
            qty = available.get(loc, 0) if isinstance(available, Mapping) else available
            self.levels[(item.gid, loc)] = qty
            self.updated[(item.gid, loc)] = _iso()
        return item.gid

    def remove_item(self, sku: str) -> None:
        """Delete the product variant (and its inventory item) carrying `sku`."""
        gid = self.by_sku.pop(sku)
        del self.items[gid]
        for key in [k for k in self.levels if k[0] == gid]:
            del self.levels[key]
        for other in self.items.values():
            if other.sku == sku:
                self.by_sku[sku] = other.gid
                break

    def add_items(self, skus: Iterable[str], available: int = 0) -> list[str]:
        return [self.add_item(s, available) for s in skus]

    def item_of(self, sku: str) -> str:
        return self.by_sku[sku]

    def set_available(self, sku: str, location: str | None, qty: int) -> None:
        """Change a quantity behind syncd's back (a merchant's edit in the admin: drift)."""
        key = (self.item_of(sku), location or self.default_location)
        if key not in self.levels:
            raise KeyError(f"{sku} is not stocked at {location}")
        self.levels[key] = qty
        self.updated[key] = _iso()

    def available(self, sku: str, location: str | None = None) -> int | None:
        return self.levels.get((self.item_of(sku), location or self.default_location))

    def fail_next(self, n: int = 1, status: int = 503, *, after_apply: bool = False) -> None:
        """The next `n` GraphQL calls answer `status`; with `after_apply` they are executed
        first (the answer is lost on the way back)."""
        self._failures.extend(_Failure(status, after_apply) for _ in range(n))

    def outage(self, status: int = 503) -> None:
        """Every GraphQL call answers `status` until `recover()` (a channel that is down)."""
        self._down = status

    def recover(self) -> None:
        self._down = 0
        self._failures.clear()

    def drain(self, to: float = 0.0) -> None:
        """Empty the cost bucket (as if another app of the shop had just used it)."""
        self.bucket.level()
        self.bucket.available = to

    # -- HTTP -----------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        version = request.match_info["version"]
        if not _VERSION.fullmatch(version):
            return web.json_response({"errors": "Not Found"}, status=404)
        token = request.headers.get("X-Shopify-Access-Token", "")
        if not token or not hmac.compare_digest(token.encode(), self.access_token.encode()):
            return web.json_response({"errors": AUTH_ERROR}, status=401)
        self.calls += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if self._down:
            return web.json_response({"errors": "Service Unavailable"}, status=self._down)
        failure = self._failures.pop(0) if self._failures else None
        if failure is not None and not failure.after_apply:
            return web.json_response({"errors": "Service Unavailable"}, status=failure.status)
        try:
            doc = json.loads(await request.read())
            if not isinstance(doc, dict) or not isinstance(doc.get("query"), str):
                raise ValueError
            variables = doc.get("variables") or {}
            if not isinstance(variables, dict):
                raise ValueError
            op_name = doc.get("operationName")
        except ValueError:
            return web.json_response(
                {"errors": {"query": "Required parameter missing or invalid"}}, status=400)
        result = self.execute(doc["query"], variables,
                              op_name if isinstance(op_name, str) else None)
        if failure is not None:
            return web.json_response({"errors": "Service Unavailable"}, status=failure.status)
        return web.json_response(result, headers={"X-Shopify-API-Version": version})

    # -- GraphQL --------------------------------------------------------------------------------

    def execute(self, query: str, variables: Mapping[str, Any],
                operation: str | None = None) -> dict[str, Any]:
        try:
            doc = gql.parse(query)
        except gql.GraphQLSyntaxError as exc:
            return {"errors": [{"message": exc.message,
                                "locations": [{"line": exc.line, "column": exc.column}]}]}
        try:
            op = doc.operation(operation)
            fragments = doc.fragments
            selections = self._expand(op.selections, fragments)
            values = self._coerce(op.variables, variables)
            if op.kind == "query":
                root = "QueryRoot"
            elif op.kind == "mutation":
                root = "Mutation"
            else:
                raise _GQLError("Subscriptions are not supported", "BAD_REQUEST")
            requested = self._cost(root, selections, values, None)
        except _GQLError as exc:
            return {"errors": [exc.as_json()]}
        except ValueError as exc:
            return {"errors": [{"message": str(exc)}]}
        self.operations.append(op.name or "")
        if requested > self.max_query_cost:
            return {
                "errors": [{
                    "message": f"Query cost is {requested}, which exceeds the single query max "
                               f"cost limit ({self.max_query_cost}).",
                    "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested,
                                   "maxCost": self.max_query_cost},
                }],
                "extensions": {"cost": {"requestedQueryCost": requested,
                                        "actualQueryCost": None,
                                        "throttleStatus": self.bucket.status()}},
            }
        if self.bucket.level() < requested:
            self.throttled += 1
            return {
                "errors": [{"message": "Throttled",
                            "extensions": {"code": "THROTTLED", "documentation": THROTTLE_DOC}}],
                "extensions": {"cost": {"requestedQueryCost": requested,
                                        "actualQueryCost": None,
                                        "throttleStatus": self.bucket.status()}},
            }
        self.bucket.available -= requested
        errors: list[dict[str, Any]] = []
        data: dict[str, Any] = {}
        for f in self._collect(root, selections, values):
            if f.name == "__typename":
                data[f.key] = root
                continue
            try:
                data[f.key] = self._field(root, None, f, values)
            except _GQLError as exc:
                data[f.key] = None
                errors.append(exc.as_json([f.key]))
        actual = min(requested, self._cost(root, selections, values, data))
        self.bucket.available = min(self.bucket.maximum,
                                    self.bucket.available + requested - actual)
        self.points_requested += requested
        self.points_spent += actual
        out: dict[str, Any] = {"data": data}
        if errors:
            out["errors"] = errors
        out["extensions"] = {"cost": {"requestedQueryCost": requested, "actualQueryCost": actual,
                                      "throttleStatus": self.bucket.status()}}
        return out

    def _coerce(self, defs: Mapping[str, tuple[str, Any]],
                given: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, (typ, default) in defs.items():
            value = given[name] if name in given else gql.value_of(default, {})
            if value is None and typ.endswith("!"):
                raise _GQLError(
                    f"Variable ${name} of type {typ} was provided invalid value",
                    "INVALID_VARIABLE", value=None,
                    problems=[{"path": [], "explanation": "Expected value to not be null"}],
                )
            values[name] = value
        return values

    def _expand(self, sels: list[gql.Selection],
                fragments: Mapping[str, Any], depth: int = 0) -> list[gql.Selection]:
        """Named fragment spreads as inline fragments (recursively)."""
        if depth > 20:
            raise _GQLError("Fragments are nested too deeply", "BAD_REQUEST")
        out: list[gql.Selection] = []
        for s in sels:
            if isinstance(s, gql.FragmentSpread):
                frag = fragments.get(s.name)
                if frag is None:
                    raise _GQLError(f"Fragment {s.name} was used, but not defined")
                out.append(gql.InlineFragment(
                    frag.type_condition, s.directives,
                    self._expand(frag.selections, fragments, depth + 1)))
            elif isinstance(s, gql.InlineFragment):
                out.append(gql.InlineFragment(s.type_condition, s.directives,
                                              self._expand(s.selections, fragments, depth + 1)))
            else:
                out.append(gql.Field(s.name, s.alias, s.args, s.directives,
                                     self._expand(s.selections, fragments, depth + 1)))
        return out

    @staticmethod
    def _included(directives: list[gql.Directive], values: Mapping[str, Any]) -> bool:
        for d in directives:
            cond = gql.value_of(d.args.get("if"), values)
            if d.name == "skip" and cond is True:
                return False
            if d.name == "include" and cond is False:
                return False
        return True

    def _collect(self, tname: str, sels: list[gql.Selection],
                 values: Mapping[str, Any]) -> list[gql.Field]:
        """The fields selected on an object of concrete type `tname` (fragments applied)."""
        out: list[gql.Field] = []
        for s in sels:
            if not self._included(s.directives, values):
                continue
            if isinstance(s, gql.InlineFragment):
                cond = s.type_condition
                if cond is not None and cond not in SCHEMA and cond != "Node":
                    raise _GQLError(f"No such type {cond}, so it can't be a fragment condition",
                                    "undefinedType")
                if cond is None or cond == tname or (cond == "Node" and tname in _NODE_TYPES):
                    out.extend(self._collect(tname, s.selections, values))
            elif isinstance(s, gql.Field):
                if s.name != "__typename" and s.name not in SCHEMA[tname]:
                    raise _GQLError(f"Field '{s.name}' doesn't exist on type '{tname}'",
                                    "undefinedField", typeName=tname, fieldName=s.name)
                out.append(s)
        return out

    # -- cost -----------------------------------------------------------------------------------

    def _cost(self, tname: str, sels: list[gql.Selection], values: Mapping[str, Any],
              data: Any) -> int:
        """Requested cost (data None) or actual cost (data = the result) of a selection set."""
        total = 0
        for f in self._collect(tname, sels, values):
            if f.name == "__typename":
                continue
            kind, target = SCHEMA[tname][f.name]
            args = {k: gql.value_of(v, values) for k, v in f.args.items()}
            val = data.get(f.key) if isinstance(data, dict) else None
            if kind == "scalar":
                if f.selections:
                    raise _GQLError(f"Selections can't be made on scalars (field '{f.name}')",
                                    "selectionMismatch")
                continue
            if not f.selections:
                raise _GQLError(f"Field must have selections (field '{f.name}' returns "
                                f"{target})", "selectionMismatch")
            if kind == "mutation":
                total += 10
                self._cost(target, f.selections, values, None)  # validation
            elif kind == "obj":
                if data is not None and val is None:
                    continue
                total += 1 + self._node_cost(target, f.selections, values,
                                             val if data is not None else None)
            elif kind == "list":
                total += 1 + self._cost(target, f.selections, values, None)
            elif kind == "conn":
                size = self._page_size(f.name, args)
                per = self._conn_node_cost(target, f.selections, values)
                if data is not None:
                    size = len(val.get("nodes") or val.get("edges") or []) \
                        if isinstance(val, dict) else 0
                total += 2 + size * per
            elif kind == "nodes":
                ids = args.get("ids")
                if not isinstance(ids, list):
                    raise _GQLError("Argument 'ids' on Field 'nodes' is required",
                                    "missingRequiredArguments")
                if len(ids) > MAX_INPUT:
                    raise _GQLError(f"The input array size of {len(ids)} is greater than the "
                                    f"maximum allowed of {MAX_INPUT}.", "MAX_INPUT_SIZE_EXCEEDED")
                per = self._node_cost("Node", f.selections, values, None) + 1
                n = len(ids) if data is None else sum(1 for v in (val or []) if v is not None)
                total += n * per
        return total

    def _node_cost(self, target: str, sels: list[gql.Selection], values: Mapping[str, Any],
                   data: Any) -> int:
        if target == "Node":
            return max(self._cost(t, sels, values, None) for t in _NODE_TYPES)
        return self._cost(target, sels, values, data)

    def _conn_node_cost(self, target: str, sels: list[gql.Selection],
                        values: Mapping[str, Any]) -> int:
        per = 0
        for f in self._conn_fields(sels, values):
            if f.name == "nodes":
                per += 1 + self._cost(target, f.selections, values, None)
            elif f.name == "edges":
                for e in self._edge_fields(f.selections, values):
                    if e.name == "node":
                        per += 1 + self._cost(target, e.selections, values, None)
            elif f.name == "pageInfo":
                self._cost("PageInfo", f.selections, values, None)  # validation
        return per

    def _conn_fields(self, sels: list[gql.Selection],
                     values: Mapping[str, Any]) -> list[gql.Field]:
        out: list[gql.Field] = []
        for s in sels:
            if isinstance(s, gql.InlineFragment):
                out.extend(self._conn_fields(s.selections, values))
            elif isinstance(s, gql.Field) and self._included(s.directives, values):
                if s.name not in ("edges", "nodes", "pageInfo", "__typename"):
                    raise _GQLError(f"Field '{s.name}' doesn't exist on a connection",
                                    "undefinedField", fieldName=s.name)
                out.append(s)
        return out

    def _edge_fields(self, sels: list[gql.Selection],
                     values: Mapping[str, Any]) -> list[gql.Field]:
        out: list[gql.Field] = []
        for s in sels:
            if isinstance(s, gql.Field) and self._included(s.directives, values):
                if s.name not in ("cursor", "node", "__typename"):
                    raise _GQLError(f"Field '{s.name}' doesn't exist on an edge",
                                    "undefinedField", fieldName=s.name)
                out.append(s)
        return out

    @staticmethod
    def _page_size(name: str, args: Mapping[str, Any]) -> int:
        first, last = args.get("first"), args.get("last")
        if first is None and last is None:
            raise _GQLError("you must provide one of first or last", "BAD_REQUEST")
        size = first if first is not None else last
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _GQLError(f"Argument 'first' on Field '{name}' has an invalid value",
                            "argumentLiteralsIncompatible")
        if size > MAX_PAGE:
            raise _GQLError(f"The page size of {size} on Field '{name}' is greater than the "
                            f"maximum allowed of {MAX_PAGE}.", "BAD_REQUEST")
        return size

    # -- execution ------------------------------------------------------------------------------

    def _object(self, obj: Obj, sels: list[gql.Selection],
                values: Mapping[str, Any]) -> dict[str, Any]:
        tname = obj[0]
        out: dict[str, Any] = {}
        for f in self._collect(tname, sels, values):
            if f.name == "__typename":
                out[f.key] = tname
            else:
                out[f.key] = self._field(tname, obj, f, values)
        return out

    def _field(self, tname: str, obj: Obj | None, f: gql.Field,
               values: Mapping[str, Any]) -> Any:
        kind, _target = SCHEMA[tname][f.name]
        args = {k: gql.value_of(v, values) for k, v in f.args.items()}
        value = self._resolve(tname, obj, f, args, values)
        if kind == "scalar" or value is None:
            return value
        if kind in ("obj", "mutation"):
            return self._object(value, f.selections, values)
        if kind in ("list", "nodes"):
            return [None if v is None else self._object(v, f.selections, values) for v in value]
        return self._connection(value, f.selections, values)

    def _connection(self, page: _Page, sels: list[gql.Selection],
                    values: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self._conn_fields(sels, values):
            if f.name == "nodes":
                out[f.key] = [self._object(n, f.selections, values) for n in page.nodes]
            elif f.name == "edges":
                edges = []
                for node, cursor in zip(page.nodes, page.cursors, strict=True):
                    edge: dict[str, Any] = {}
                    for e in self._edge_fields(f.selections, values):
                        if e.name == "cursor":
                            edge[e.key] = cursor
                        elif e.name == "node":
                            edge[e.key] = self._object(node, e.selections, values)
                        else:
                            edge[e.key] = "Edge"
                    edges.append(edge)
                out[f.key] = edges
            elif f.name == "pageInfo":
                info = {"hasNextPage": page.has_next, "hasPreviousPage": page.has_prev,
                        "startCursor": page.cursors[0] if page.cursors else None,
                        "endCursor": page.cursors[-1] if page.cursors else None}
                out[f.key] = {p.key: ("PageInfo" if p.name == "__typename" else info[p.name])
                              for p in self._collect("PageInfo", f.selections, values)}
            else:
                out[f.key] = "Connection"
        return out

    def _node(self, gid: Any) -> Obj | None:
        if not isinstance(gid, str):
            return None
        if gid in self.items:
            return ("InventoryItem", gid)
        if gid in self.locations:
            return ("Location", gid)
        m = re.fullmatch(r"gid://shopify/InventoryLevel/([0-9]+)\?inventory_item_id=([0-9]+)",
                         gid)
        if m:
            key = (f"gid://shopify/InventoryItem/{m.group(2)}",
                   f"gid://shopify/Location/{m.group(1)}")
            if key in self.levels:
                return ("InventoryLevel", key)
        return None

    def _paginate(self, kind: str, objs: list[tuple[int, Obj]], args: Mapping[str, Any]
                  ) -> _Page:
        objs = sorted(objs, key=lambda o: o[0], reverse=bool(args.get("reverse")))
        if args.get("after") is not None:
            after = _uncursor(args["after"])
            idx = next((i for i, (n, _) in enumerate(objs) if n == after), None)
            objs = objs[idx + 1:] if idx is not None else [o for o in objs if o[0] > after]
        if args.get("before") is not None:
            before = _uncursor(args["before"])
            idx = next((i for i, (n, _) in enumerate(objs) if n == before), None)
            objs = objs[:idx] if idx is not None else [o for o in objs if o[0] < before]
        total = len(objs)
        if args.get("first") is not None:
            window = objs[: args["first"]]
            has_next, has_prev = total > len(window), args.get("after") is not None
        else:
            window = objs[max(0, total - args["last"]):]
            has_next, has_prev = args.get("before") is not None, total > len(window)
        return _Page([o for _, o in window], [_cursor(kind, n) for n, _ in window],
                     has_next, has_prev)

    def _matching_items(self, query: Any) -> list[_Item]:
        items = list(self.items.values())
        if query is None or query == "":
            return items
        if not isinstance(query, str):
            raise _GQLError("Argument 'query' must be a string", "argumentLiteralsIncompatible")
        wanted: set[str] = set()
        ids: set[int] = set()
        for fld, value in _search_terms(query):
            if fld == "sku":
                wanted.add(value.lower())
            elif fld == "id" and value.isdigit():
                ids.add(int(value))
        return [i for i in items if i.sku.lower() in wanted or i.num in ids]

    def _resolve(self, tname: str, obj: Obj | None, f: gql.Field, args: Mapping[str, Any],
                 values: Mapping[str, Any]) -> Any:
        name = f.name
        value: Any = obj[1] if obj is not None else None
        if tname == "QueryRoot":
            if name == "inventoryItems":
                self._page_size(name, args)
                matched = self._matching_items(args.get("query"))
                return self._paginate("InventoryItem",
                                      [(i.num, ("InventoryItem", i.gid)) for i in matched], args)
            if name in ("inventoryItem", "location", "node"):
                node = self._node(args.get("id"))
                want = {"inventoryItem": "InventoryItem", "location": "Location"}.get(name)
                return node if node is not None and (want is None or node[0] == want) else None
            if name == "nodes":
                return [self._node(i) for i in args.get("ids") or []]
            if name == "locations":
                self._page_size(name, args)
                return self._paginate("Location", [(_num(g), ("Location", g))
                                                   for g in self.locations], args)
            if name == "shop":
                return ("Shop", None)
        if tname == "Mutation" and name == "inventorySetQuantities":
            key: Any = None
            for d in f.directives:
                if d.name == "idempotent":
                    key = gql.value_of(d.args.get("key"), values)
            return ("InventorySetQuantitiesPayload", self._set_quantities(args.get("input"), key))
        if tname == "InventoryItem":
            item = self.items[value]
            if name == "id":
                return item.gid
            if name == "sku":
                return item.sku
            if name == "tracked":
                return item.tracked
            if name == "legacyResourceId":
                return str(item.num)
            if name in ("createdAt", "updatedAt"):
                return item.created_at
            if name == "inventoryLevel":
                key = (item.gid, args.get("locationId"))
                return ("InventoryLevel", key) if key in self.levels else None
            if name == "inventoryLevels":
                self._page_size(name, args)
                levels = [(_num(loc), ("InventoryLevel", (g, loc)))
                          for (g, loc) in self.levels if g == item.gid]
                return self._paginate("InventoryLevel", levels, args)
        if tname == "InventoryLevel":
            item_gid, loc = value
            if name == "id":
                return f"gid://shopify/InventoryLevel/{_num(loc)}?inventory_item_id={_num(item_gid)}"
            if name in ("createdAt", "updatedAt"):
                return self.updated.get(value)
            if name == "location":
                return ("Location", loc)
            if name == "item":
                return ("InventoryItem", item_gid)
            if name == "quantities":
                names = args.get("names")
                if not isinstance(names, list) or not names:
                    raise _GQLError("Argument 'names' on Field 'quantities' is required",
                                    "missingRequiredArguments")
                bad = [n for n in names if n not in _QUANTITY_NAMES]
                if bad:
                    raise _GQLError(f"Invalid quantity name: {bad[0]}", "BAD_REQUEST")
                qty = self.levels[value]
                amounts = {"available": qty, "on_hand": qty}
                return [("InventoryQuantity", (n, amounts.get(n, 0), self.updated.get(value)))
                        for n in names]
        if tname == "InventoryQuantity":
            qname, qty, updated = value
            return {"id": f"gid://shopify/InventoryQuantity/{abs(hash(value)) % 10**12}",
                    "name": qname, "quantity": qty, "updatedAt": updated}[name]
        if tname == "Location":
            if name == "id":
                return value
            if name == "name":
                return self.locations[value]
            if name == "isActive":
                return True
            if name == "legacyResourceId":
                return str(_num(value))
        if tname == "Shop":
            return {"id": "gid://shopify/Shop/1", "name": "syncd simulator",
                    "myshopifyDomain": self.shop_domain}[name]
        if tname == "InventorySetQuantitiesPayload" and name == "userErrors":
            return [("InventorySetQuantitiesUserError", e) for e in value["userErrors"]]
        if tname in ("InventorySetQuantitiesPayload", "InventoryAdjustmentGroup",
                     "InventoryChange", "InventorySetQuantitiesUserError"):
            return value.get(name)
        raise _GQLError(f"Field '{name}' doesn't exist on type '{tname}'", "undefinedField")

    # -- the mutation ---------------------------------------------------------------------------

    def _set_quantities(self, data: Any, key: Any) -> dict[str, Any]:
        if not isinstance(key, str) or not key:
            raise _GQLError("The @idempotent directive with a key is required for this mutation "
                            "as of API version 2026-04.", "BAD_REQUEST")
        if not isinstance(data, dict):
            raise _GQLError("Variable $input of type InventorySetQuantitiesInput! was provided "
                            "invalid value", "INVALID_VARIABLE")
        quantities = data.get("quantities")
        if not isinstance(quantities, list):
            raise _GQLError("Variable $input of type InventorySetQuantitiesInput! was provided "
                            "invalid value for quantities (Expected value to not be null)",
                            "INVALID_VARIABLE")
        if len(quantities) > MAX_INPUT:
            raise _GQLError(f"The input array size of {len(quantities)} is greater than the "
                            f"maximum allowed of {MAX_INPUT}.", "MAX_INPUT_SIZE_EXCEEDED")
        fingerprint = json.dumps(data, sort_keys=True, separators=(",", ":"))
        seen = self._idempotency.get(key)
        if seen is not None:
            if seen[0] == fingerprint:
                self.replays += 1
                return seen[1]
            return {"inventoryAdjustmentGroup": None, "userErrors": [{
                "code": "IDEMPOTENCY_KEY_PARAMETER_MISMATCH", "field": None,
                "message": "The same idempotency key was used with different parameters.",
            }]}
        self.mutation_calls += 1
        payload = self._apply_quantities(data, quantities)
        self._idempotency[key] = (fingerprint, payload)
        while len(self._idempotency) > IDEMPOTENCY_KEYS_KEPT:
            del self._idempotency[next(iter(self._idempotency))]
        return payload

    def _apply_quantities(self, data: Mapping[str, Any],
                          quantities: list[Any]) -> dict[str, Any]:
        errors: list[dict[str, Any]] = []

        def err(code: str, path: list[str], message: str) -> None:
            errors.append({"code": code, "field": path, "message": message})

        name = data.get("name")
        if name not in ("available", "on_hand"):
            err("INVALID_NAME", ["input", "name"],
                "The quantity name must be either 'available' or 'on_hand'.")
        reason = data.get("reason")
        if reason not in _REASONS:
            err("INVALID_REASON", ["input", "reason"], "The specified reason is invalid.")
        uri = data.get("referenceDocumentUri")
        if uri is not None and (not isinstance(uri, str) or "://" not in uri
                                or uri.startswith("gid://")):
            err("INVALID_REFERENCE_DOCUMENT", ["input", "referenceDocumentUri"],
                "The specified reference document is invalid.")
        seen: set[tuple[Any, Any]] = set()
        changes: list[tuple[str, str, int, int]] = []
        for i, q in enumerate(quantities):
            path = ["input", "quantities", str(i)]
            if not isinstance(q, dict):
                raise _GQLError("Variable $input of type InventorySetQuantitiesInput! was "
                                "provided invalid value", "INVALID_VARIABLE")
            item, loc, qty = q.get("inventoryItemId"), q.get("locationId"), q.get("quantity")
            if isinstance(qty, bool) or not isinstance(qty, int):
                raise _GQLError(f"Variable $input of type InventorySetQuantitiesInput! was "
                                f"provided invalid value for quantities.{i}.quantity",
                                "INVALID_VARIABLE")
            if (item, loc) in seen:
                err("NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR", path,
                    "The combination of inventoryItemId and locationId must be unique.")
                continue
            seen.add((item, loc))
            if item not in self.items:
                err("INVALID_INVENTORY_ITEM", [*path, "inventoryItemId"],
                    "The specified inventory item could not be found.")
                continue
            if loc not in self.locations:
                err("INVALID_LOCATION", [*path, "locationId"],
                    "The specified location could not be found.")
                continue
            if (item, loc) not in self.levels:
                err("ITEM_NOT_STOCKED_AT_LOCATION", [*path, "locationId"],
                    "The specified inventory item is not stocked at the location.")
                continue
            if qty > 1_000_000_000:
                err("INVALID_QUANTITY_TOO_HIGH", [*path, "quantity"],
                    "The total quantity can't be higher than 1,000,000,000.")
                continue
            if qty < 0 and name == "on_hand":
                err("INVALID_QUANTITY_NEGATIVE", [*path, "quantity"],
                    "The quantity can't be negative.")
                continue
            if "changeFromQuantity" not in q:
                err("COMPARE_QUANTITY_REQUIRED", [*path, "changeFromQuantity"],
                    "changeFromQuantity must be given for each quantity (null skips the check).")
                continue
            current = self.levels[(item, loc)]
            expected = q["changeFromQuantity"]
            if expected is not None and expected != current:
                self.stale += 1
                err("CHANGE_FROM_QUANTITY_STALE", [*path, "changeFromQuantity"],
                    "The changeFromQuantity does not match the current quantity.")
                continue
            changes.append((item, loc, qty, current))
        if errors:
            return {"inventoryAdjustmentGroup": None, "userErrors": errors}
        now = _iso()
        for item, loc, qty, _ in changes:
            self.levels[(item, loc)] = qty
            self.updated[(item, loc)] = now
            if self.on_set is not None:
                self.on_set(self.items[item].sku, loc, qty)
        self.mutations += 1
        self.quantities_per_mutation.append(len(changes))
        group = {
            "id": f"gid://shopify/InventoryAdjustmentGroup/{self._next_group}",
            "createdAt": now, "reason": reason, "referenceDocumentUri": uri,
            "changes": [("InventoryChange", {
                "name": name, "delta": qty - before, "quantityAfterChange": qty,
                "item": ("InventoryItem", item), "location": ("Location", loc),
            }) for item, loc, qty, before in changes],
        }
        self._next_group += 1
        return {"inventoryAdjustmentGroup": ("InventoryAdjustmentGroup", group),
                "userErrors": []}

    # -- webhooks -------------------------------------------------------------------------------

    def level_payload(self, sku: str, location: str | None = None) -> dict[str, Any]:
        """`inventory_levels/update` as Shopify sends it (REST InventoryLevel resource)."""
        loc = location or self.default_location
        item = self.item_of(sku)
        return {
            "inventory_item_id": _num(item),
            "location_id": _num(loc),
            "available": self.levels[(item, loc)],
            "updated_at": self.updated.get((item, loc)) or _iso(),
            "admin_graphql_api_id":
                f"gid://shopify/InventoryLevel/{_num(loc)}?inventory_item_id={_num(item)}",
        }

    def order_payload(self, order_id: int, lines: Sequence[tuple[str | None, int]], *,
                      location_id: int | None = None, created_at: str | None = None
                      ) -> dict[str, Any]:
        """`orders/create` (a trimmed REST Order resource, the fields a connector reads)."""
        created = created_at or _iso()
        line_items = []
        for n, (sku, qty) in enumerate(lines, start=1):
            item_gid = self.by_sku.get(sku or "")
            line_items.append({
                "id": order_id * 100 + n,
                "admin_graphql_api_id": f"gid://shopify/LineItem/{order_id * 100 + n}",
                "variant_id": _num(item_gid) + 1_000_000 if item_gid else None,
                "product_id": _num(item_gid) + 2_000_000 if item_gid else None,
                "title": f"Article {sku}" if sku else "Custom item",
                "name": f"Article {sku}" if sku else "Custom item",
                "sku": sku, "quantity": qty, "fulfillable_quantity": qty,
                "requires_shipping": True, "price": "19.90", "grams": 250,
            })
        return {
            "id": order_id,
            "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "name": f"#{order_id % 100000}", "order_number": order_id % 100000,
            "created_at": created, "updated_at": created, "processed_at": created,
            "cancelled_at": None, "cancel_reason": None, "closed_at": None,
            "currency": "EUR", "financial_status": "paid", "fulfillment_status": None,
            "location_id": location_id, "source_name": "web", "test": False,
            "line_items": line_items, "fulfillments": [],
        }

    @staticmethod
    def cancelled_payload(order: Mapping[str, Any], at: str | None = None) -> dict[str, Any]:
        when = at or _iso()
        return {**order, "cancelled_at": when, "cancel_reason": "customer", "updated_at": when,
                "financial_status": "refunded"}

    @staticmethod
    def fulfilled_payload(order: Mapping[str, Any], at: str | None = None) -> dict[str, Any]:
        when = at or _iso()
        return {**order, "fulfillment_status": "fulfilled", "updated_at": when,
                "fulfillments": [{"id": int(order["id"]) * 10 + 1, "status": "success",
                                  "created_at": when, "updated_at": when,
                                  "line_items": order.get("line_items", [])}]}

    async def send_webhook(
        self, topic: str, payload: Mapping[str, Any] | bytes, url: str, secret: str, *,
        event_id: str | None = None, session: aiohttp.ClientSession | None = None,
        signature: str | None = None,
    ) -> WebhookResult:
        """POST a webhook the way Shopify delivers it: raw JSON body, signed with the app's
        client secret, with the documented `X-Shopify-*` headers."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        eid = event_id or str(uuid.uuid4())
        wid = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-SHA256": signature if signature is not None
            else sign(secret.encode(), body),
            "X-Shopify-Shop-Domain": self.shop_domain,
            "X-Shopify-API-Version": self.api_version,
            "X-Shopify-Webhook-Id": wid,
            "X-Shopify-Event-Id": eid,
            "X-Shopify-Triggered-At": _iso(),
        }
        own = session is None
        http = session or aiohttp.ClientSession()
        try:
            async with http.post(url, data=body, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return WebhookResult(resp.status, await resp.text(), eid, wid)
        finally:
            if own:
                await http.close()


SIM: web.AppKey[ShopifySim] = web.AppKey("shopify_sim", ShopifySim)


def create_app(sim: ShopifySim | None = None, **kwargs: Any) -> web.Application:
    """The simulator as an aiohttp application (`kwargs` build a `ShopifySim` when none given)."""
    state = sim if sim is not None else ShopifySim(**kwargs)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[SIM] = state
    app.router.add_post("/admin/api/{version}/graphql.json", state.handle)
    return app


@contextlib.asynccontextmanager
async def running_sim(sim: ShopifySim, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `sim` on a free loopback port; yields its shop URL (`http://127.0.0.1:PORT`)."""
    async with serve_app(create_app(sim), host) as url:
        yield url


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m connectors.shopify.sim --port 8081 --skus 1000 --plan plus`: a shop to point a
    `shopify` connector at (`shop_url = "http://127.0.0.1:8081"`)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--skus", type=int, default=100, help="items SKU-00000, SKU-00001, …")
    parser.add_argument("--plan", choices=("standard", "plus"), default="standard")
    parser.add_argument("--token", default="shpat_simulator")
    args = parser.parse_args(argv)
    maximum, rate = PLUS if args.plan == "plus" else STANDARD
    sim = ShopifySim(access_token=args.token, maximum_available=maximum, restore_rate=rate)
    sim.add_items(f"SKU-{i:05d}" for i in range(args.skus))
    web.run_app(create_app(sim), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
