"""The Shopify connector against the Shopify simulator on a real loopback HTTP server.

Push (compare-and-set, idempotency, throttling and pacing, errors), a 5,000-SKU full sync through
the real engine and pusher, drift found by reconciliation and by webhook, order webhooks into
reservations, signature checks, and fuzzing of the webhook endpoint. The simulator itself is held
to the documented contract (error shapes, limits, cost accounting, paging).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors.base import (
    Connector,
    ConnectorContext,
    PermanentPushError,
    PushItem,
    PushStatus,
    TransientPushError,
)
from connectors.shopify import ShopifyConfig, ShopifyConnector, gql
from connectors.shopify.client import CostBucket
from connectors.shopify.mapping import TOPICS, sign
from connectors.shopify.sim import PLUS, ShopifySim, running_sim
from syncd.engine import Engine
from syncd.ledger import Verdict
from syncd.model import Channel, EventType, Outcome, ReservationState
from syncd.push import Pusher
from syncd.store import sqlite_url
from tests.core import T0, ev, outcomes, retailer, running_engine, until, webhook_endpoint

FIXTURES = Path(__file__).parent / "fixtures" / "shopify"
TOKEN = "shpat_simulator"
SECRET = "whsec-shopify-test"
LOC1 = "gid://shopify/Location/1"
LOC2 = "gid://shopify/Location/2"
WEB = retailer().channels["web"]


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPIFY_TOKEN", TOKEN)
    monkeypatch.setenv("SHOPIFY_WEBHOOK_SECRET", SECRET)


def config(shop_url: str, **overrides: Any) -> ShopifyConfig:
    raw: dict[str, Any] = {
        "shop_url": shop_url, "access_token": "env:SHOPIFY_TOKEN",
        "webhook_secret": "env:SHOPIFY_WEBHOOK_SECRET", "location_id": LOC1,
    }
    raw.update(overrides)
    return ShopifyConfig.model_validate(raw)


def connector(shop_url: str, http: aiohttp.ClientSession | None,
              channel: Channel = WEB, **overrides: Any) -> ShopifyConnector:
    ctx = ConnectorContext(locations=retailer().locations, channels={channel.name: channel},
                           http=http)
    return ShopifyConnector("shop", config(shop_url, **overrides), ctx)


@asynccontextmanager
async def shop(sim: ShopifySim, channel: Channel = WEB,
               **overrides: Any) -> AsyncIterator[ShopifyConnector]:
    async with running_sim(sim) as url, aiohttp.ClientSession() as http:
        conn = connector(url, http, channel, **overrides)
        await conn.start()
        try:
            yield conn
        finally:
            await conn.close()


def item(sku: str, desired: int, remote: int | None = None, version: int = 1,
         location: str = "") -> PushItem:
    return PushItem("web", sku, location, desired, version, remote, f"{sku}:{location}:{version}")


# -- configuration ------------------------------------------------------------------------------


def test_config_is_validated_and_secrets_are_references() -> None:
    cfg = config("https://example.myshopify.com/")
    assert cfg.endpoint == "https://example.myshopify.com/admin/api/2026-04/graphql.json"
    assert cfg.timeout == 10.0
    assert "shpat" not in repr(cfg)
    with pytest.raises(ValidationError, match="https"):
        config("http://example.myshopify.com")
    with pytest.raises(ValidationError, match="never inline"):
        config("https://example.myshopify.com", access_token="shpat_inline")
    with pytest.raises(ValidationError, match="Location"):
        config("https://example.myshopify.com", location_id="1")
    with pytest.raises(ValidationError, match="Extra inputs"):
        config("https://example.myshopify.com", store="x")
    with pytest.raises(ValidationError, match="duration"):
        config("https://example.myshopify.com", timeout=10)
    assert config("http://127.0.0.1:8080", api_version="2026-07").endpoint.endswith(
        "/admin/api/2026-07/graphql.json")
    assert isinstance(connector("https://example.myshopify.com", None), Connector)


# -- push ---------------------------------------------------------------------------------------


async def test_push_sets_quantities_with_one_mutation() -> None:
    sim = ShopifySim()
    sim.add_items(["A", "B", "C"], available=3)
    sim.add_item("ELSEWHERE", stocked_at=[LOC2])
    async with shop(sim) as conn:
        out = await conn.push("web", [item("A", 7), item("B", 0), item("C", 12),
                                      item("NOPE", 1), item("ELSEWHERE", 4)])
        status = {r.sku: (r.status, r.reason) for r in out}
        assert [r.sku for r in out] == ["A", "B", "C", "NOPE", "ELSEWHERE"]
        assert status["A"][0] is status["B"][0] is status["C"][0] is PushStatus.OK
        assert status["NOPE"] == (PushStatus.PERMANENT, "unknown SKU on Shopify")
        assert status["ELSEWHERE"][0] is PushStatus.PERMANENT
        assert "not stocked" in status["ELSEWHERE"][1]
        assert (sim.available("A"), sim.available("B"), sim.available("C")) == (7, 0, 12)
        # SKU discovery carried the compare-from values: one query, then one mutation
        assert list(sim.operations) == ["SyncdFindItemsAt", "SyncdSetAvailable"]
        assert sim.quantities_per_mutation == [3]
        assert conn.quantities_pushed == 3
        # known SKUs with a known remote: the mutation alone
        out = await conn.push("web", [item("A", 5, remote=7, version=2)])
        assert out[0].status is PushStatus.OK and sim.available("A") == 5
        assert list(sim.operations)[-1] == "SyncdSetAvailable" and len(sim.operations) == 3
        assert await conn.read_levels("web", [("A", ""), ("C", ""), ("NOPE", "")]) == {
            ("A", ""): 5, ("C", ""): 12}


async def test_reconciliation_reads_with_a_cold_cache_in_one_query() -> None:
    sim = ShopifySim()
    sim.add_items(["A", "B"], available=4)
    async with shop(sim) as conn:  # a fresh daemon: nothing known about Shopify's items
        assert await conn.read_levels("web", [("A", ""), ("B", ""), ("Z", "")]) == {
            ("A", ""): 4, ("B", ""): 4}
        assert list(sim.operations) == ["SyncdFindItemsAt"]


async def test_a_sku_created_on_shopify_later_is_found_on_the_next_push() -> None:
    sim = ShopifySim()
    async with shop(sim) as conn:
        out = await conn.push("web", [item("LATE", 2)])
        assert out[0].status is PushStatus.PERMANENT
        sim.add_item("LATE", 0)
        out = await conn.push("web", [item("LATE", 2, version=2)])
        assert out[0].status is PushStatus.OK and sim.available("LATE") == 2


async def test_a_product_deleted_and_recreated_is_found_again() -> None:
    sim = ShopifySim()
    sim.add_items(["A"], available=0)
    async with shop(sim) as conn:
        assert (await conn.push("web", [item("A", 3)]))[0].status is PushStatus.OK
        sim.remove_item("A")
        sim.add_item("A", 0)  # same SKU, new inventory item
        out = await conn.push("web", [item("A", 5, remote=3, version=2)])
        assert out[0].status is PushStatus.TRANSIENT and "looked up again" in out[0].reason
        out = await conn.push("web", [item("A", 5, remote=3, version=2)])
        assert out[0].status is PushStatus.CONFLICT and out[0].remote == 0
        out = await conn.push("web", [item("A", 5, remote=0, version=2)])
        assert out[0].status is PushStatus.OK and sim.available("A") == 5


async def test_cas_conflict_reports_the_current_quantity_and_the_rest_is_applied() -> None:
    sim = ShopifySim()
    sim.add_items(["A", "B", "C"], available=0)
    async with shop(sim) as conn:
        await conn.push("web", [item("A", 5), item("B", 5), item("C", 5)])
        sim.set_available("B", None, 9)  # a merchant edits B in the admin
        out = await conn.push("web", [item("A", 4, remote=5, version=2),
                                      item("B", 4, remote=5, version=2),
                                      item("C", 4, remote=5, version=2)])
        by = {r.sku: r for r in out}
        assert by["B"].status is PushStatus.CONFLICT and by["B"].remote == 9
        assert by["A"].status is by["C"].status is PushStatus.OK
        assert (sim.available("A"), sim.available("B"), sim.available("C")) == (4, 9, 4)
        assert sim.stale == 1
        # all-or-nothing: the refused mutation applied nothing, the rest went in a second one
        assert sim.quantities_per_mutation == [3, 2]
        # the pusher's next attempt starts from the quantity Shopify showed
        out = await conn.push("web", [item("B", 4, remote=9, version=2)])
        assert out[0].status is PushStatus.OK and sim.available("B") == 4


async def test_a_lost_answer_is_retried_under_the_same_key_and_replayed() -> None:
    sim = ShopifySim()
    sim.add_items(["A", "B"], available=1)
    async with shop(sim) as conn:
        batch = [item("A", 6, remote=1), item("B", 7, remote=1)]
        await conn.push("web", [item("A", 1, version=0), item("B", 1, version=0)])  # learn SKUs
        sim.fail_next(1, 504, after_apply=True)  # applied, but the answer is lost
        with pytest.raises(TransientPushError):
            await conn.push("web", batch)
        assert (sim.available("A"), sim.available("B")) == (6, 7)
        applied = sim.mutations
        out = await conn.push("web", batch)  # the pusher's retry: same items, same key
        assert [r.status for r in out] == [PushStatus.OK, PushStatus.OK]
        assert sim.replays == 1 and sim.mutations == applied  # not applied twice
        # a new version is a new operation
        out = await conn.push("web", [item("A", 2, remote=6, version=2)])
        assert out[0].status is PushStatus.OK and sim.mutations == applied + 1


async def test_whole_call_failures_map_to_transient_and_permanent() -> None:
    sim = ShopifySim()
    sim.add_items(["A"], available=0)
    async with shop(sim) as conn:
        sim.fail_next(1, 503)
        with pytest.raises(TransientPushError, match="503"):
            await conn.push("web", [item("A", 1)])
        assert (await conn.push("web", [item("A", 1)]))[0].status is PushStatus.OK
    async with shop(sim, timeout="200ms") as conn:
        sim.latency = 0.5
        with pytest.raises(TransientPushError, match="did not answer"):
            await conn.push("web", [item("A", 2, remote=1, version=2)])
        sim.latency = 0.0
    sim.access_token = "shpat_rotated"
    async with shop(sim) as conn:
        with pytest.raises(PermanentPushError, match="401"):
            await conn.push("web", [item("A", 2, remote=1, version=2)])
        assert not conn.connected
    async with aiohttp.ClientSession() as http:  # nothing listens there
        conn = connector("http://127.0.0.1:9", http)
        await conn.start()
        with pytest.raises(TransientPushError, match="cannot reach"):
            await conn.push("web", [item("A", 1)])


# -- rate limits --------------------------------------------------------------------------------


async def test_throttled_answer_has_the_documented_shape() -> None:
    sim = ShopifySim(maximum_available=100, restore_rate=10)
    sim.add_items(["A"])
    sim.drain()
    async with running_sim(sim) as url, aiohttp.ClientSession() as http:
        query = "{ inventoryItems(first: 50) { nodes { id sku } } }"
        async with http.post(f"{url}/admin/api/2026-04/graphql.json", json={"query": query},
                             headers={"X-Shopify-Access-Token": TOKEN}) as resp:
            assert resp.status == 200
            doc = await resp.json()
    documented = json.loads((FIXTURES / "throttled.json").read_text())
    assert doc["errors"] == documented["errors"]
    assert doc["extensions"]["cost"].keys() == documented["extensions"]["cost"].keys()
    assert doc["extensions"]["cost"]["requestedQueryCost"] == 52
    assert doc["extensions"]["cost"]["actualQueryCost"] is None
    assert set(doc["extensions"]["cost"]["throttleStatus"]) == {
        "maximumAvailable", "currentlyAvailable", "restoreRate"}
    assert "data" not in doc


def test_the_bucket_estimate_follows_throttle_status() -> None:
    now = [100.0]
    bucket = CostBucket(lambda: now[0])
    assert bucket.wait_for(500) == 0  # nothing known yet: go
    status = json.loads((FIXTURES / "throttled.json").read_text())
    bucket.observe(status["extensions"]["cost"]["throttleStatus"])
    assert bucket.wait_for(752) == pytest.approx((752 - 552) / 100)
    now[0] += 2.0
    assert bucket.wait_for(752) == 0
    bucket.reserve(752)
    assert bucket.level() == pytest.approx(552 + 200 - 752)


async def test_a_throttled_call_is_waited_out_and_pacing_prevents_the_next() -> None:
    sim = ShopifySim(maximum_available=120, restore_rate=300)
    sim.add_items([f"T{i}" for i in range(61)], available=0)
    sim.drain()  # another app just emptied the bucket
    async with shop(sim) as conn:
        out = await conn.push("web", [item("T0", 1)])
        assert out[0].status is PushStatus.OK
        assert conn.throttled_calls == 1 == sim.throttled  # waited out, not a failure
        # ~12 pushes of 5 cold SKUs: find (2 + 15) + mutation 10, four times the bucket
        started = time.monotonic()
        for n in range(1, 60, 5):
            out = await conn.push("web", [item(f"T{i}", i) for i in range(n, n + 5)])
            assert {r.status for r in out} == {PushStatus.OK}
        assert sim.throttled == 1  # pacing: the steady state is never throttled
        assert conn.client.paced_seconds > 0.2
        assert time.monotonic() - started >= conn.client.paced_seconds
        assert [sim.available(f"T{i}") for i in range(1, 61)] == list(range(1, 61))


# -- the simulator's contract -------------------------------------------------------------------


async def gql_call(http: aiohttp.ClientSession, url: str, query: str,
                   variables: dict[str, Any] | None = None,
                   token: str = TOKEN) -> tuple[int, Any]:
    async with http.post(f"{url}/admin/api/2026-04/graphql.json",
                         json={"query": query, "variables": variables or {}},
                         headers={"X-Shopify-Access-Token": token}) as resp:
        return resp.status, await resp.json()


SET = """mutation S($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input) %s { inventoryAdjustmentGroup { id }
    userErrors { code field message } } }"""


async def test_simulator_holds_the_documented_contract() -> None:
    sim = ShopifySim()
    gids = sim.add_items([f"P{i:03d}" for i in range(7)], available=2)
    async with running_sim(sim) as url, aiohttp.ClientSession() as http:
        status, doc = await gql_call(http, url, "{ shop { name } }", token="wrong")
        assert (status, doc) == (401, {"errors": "[API] Invalid API key or access token "
                                                 "(unrecognized login or wrong password)"})
        # paging with cursors
        seen: list[str] = []
        after = None
        while True:
            _, doc = await gql_call(http, url, """query($a: String) {
                inventoryItems(first: 3, after: $a) {
                  edges { cursor node { id sku } } pageInfo { hasNextPage endCursor } } }""",
                                    {"a": after})
            conn = doc["data"]["inventoryItems"]
            seen += [e["node"]["sku"] for e in conn["edges"]]
            if not conn["pageInfo"]["hasNextPage"]:
                break
            after = conn["pageInfo"]["endCursor"]
        assert seen == [f"P{i:03d}" for i in range(7)]
        assert doc["extensions"]["cost"]["requestedQueryCost"] == 2 + 3 * 1
        assert doc["extensions"]["cost"]["actualQueryCost"] == 2 + 1 * 1  # refunded
        # search, case-insensitive like Shopify's
        _, doc = await gql_call(http, url, """{ inventoryItems(first: 5,
            query: "sku:\\"p001\\" OR sku:P004") { nodes { sku } } }""")
        assert [n["sku"] for n in doc["data"]["inventoryItems"]["nodes"]] == ["P001", "P004"]
        # unknown fields and missing page sizes are errors
        _, doc = await gql_call(http, url, "{ inventoryItems(first: 1) { nodes { price } } }")
        assert doc["errors"][0]["extensions"]["code"] == "undefinedField"
        _, doc = await gql_call(http, url, "{ inventoryItems { nodes { id } } }")
        assert "first or last" in doc["errors"][0]["message"]
        _, doc = await gql_call(http, url, "{ a: inventoryItems(first: 250) { nodes { id "
                                "inventoryLevels(first: 10) { nodes { id } } } } }")
        assert doc["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED"
        # the mutation: @idempotent is mandatory in 2026-04, and so is changeFromQuantity
        q = {"inventoryItemId": gids[0], "locationId": LOC1, "quantity": 5,
             "changeFromQuantity": 2}
        inp = {"name": "available", "reason": "correction", "quantities": [q]}
        _, doc = await gql_call(http, url, SET % "", {"input": inp})
        assert "@idempotent" in doc["errors"][0]["message"]
        assert sim.available("P000") == 2
        without = {**inp, "quantities": [{k: v for k, v in q.items()
                                          if k != "changeFromQuantity"}]}
        _, doc = await gql_call(http, url, SET % '@idempotent(key: "k0")', {"input": without})
        err = doc["data"]["inventorySetQuantities"]["userErrors"][0]
        assert err["code"] == "COMPARE_QUANTITY_REQUIRED"
        _, doc = await gql_call(http, url, SET % '@idempotent(key: "k1")', {"input": inp})
        assert doc["data"]["inventorySetQuantities"]["userErrors"] == []
        assert sim.available("P000") == 5
        assert doc["extensions"]["cost"]["requestedQueryCost"] == 10
        stale = {**inp, "quantities": [{**q, "quantity": 6}]}
        _, doc = await gql_call(http, url, SET % '@idempotent(key: "k2")', {"input": stale})
        payload = doc["data"]["inventorySetQuantities"]
        assert payload["inventoryAdjustmentGroup"] is None
        assert payload["userErrors"] == [{
            "code": "CHANGE_FROM_QUANTITY_STALE",
            "field": ["input", "quantities", "0", "changeFromQuantity"],
            "message": "The changeFromQuantity does not match the current quantity.",
        }]
        _, doc = await gql_call(http, url, SET % '@idempotent(key: "k1")', {"input": stale})
        err = doc["data"]["inventorySetQuantities"]["userErrors"][0]
        assert err["code"] == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"
        _, doc = await gql_call(http, url, SET % '@idempotent(key: "k1")', {"input": inp})
        assert doc["data"]["inventorySetQuantities"]["userErrors"] == [] and sim.replays == 1
        too_many = {**inp, "quantities": [q] * 251}
        _, doc = await gql_call(http, url, SET % '@idempotent(key: "k3")', {"input": too_many})
        assert doc["errors"][0]["extensions"]["code"] == "MAX_INPUT_SIZE_EXCEEDED"
        _, doc = await gql_call(http, url, "{ nodes(ids: [1 }")
        assert doc["errors"][0]["locations"] == [{"line": 1, "column": 17}]


def test_graphql_parser_reads_the_spec_syntax() -> None:
    doc = gql.parse('''
        # a comment
        query Q($ids: [ID!]! = ["a"], $n: Int) @live {
          a: nodes(ids: $ids) { ... on InventoryItem { id } ...F }
          b: shop { name @include(if: true) }
          c: f(s: "t\\u00e9\\n", b: """
              block "quoted"
                indented
          """, l: [1, -2.5e3, true, null, ENUM], o: {k: $n})
        }
        fragment F on InventoryItem { sku }
    ''')
    op = doc.operation(None)
    assert op.name == "Q" and op.variables["ids"] == ("[ID!]!", ["a"])
    c = op.selections[2]
    assert isinstance(c, gql.Field) and c.key == "c"
    args = gql.value_of(c.args, {"n": 4})
    assert args["s"] == "té\n" and args["b"] == 'block "quoted"\n  indented'
    assert args["l"] == [1, -2500.0, True, None, "ENUM"] and args["o"] == {"k": 4}
    assert "F" in doc.fragments
    for bad in ("{", "query { a(: 1) }", '{ a(s: "\\q") }', "{ a }}", ""):
        with pytest.raises(gql.GraphQLSyntaxError):
            gql.parse(bad)


# -- the whole system: engine, outbox, pusher, Shopify ------------------------------------------


@asynccontextmanager
async def syncd_with_shopify(
    tmp_path: Path, sim: ShopifySim, channel: Channel = WEB,
) -> AsyncIterator[tuple[Engine, ShopifyConnector, Pusher]]:
    cfg = retailer()
    cfg.channels["web"] = channel
    async with running_engine(sqlite_url(tmp_path), cfg) as engine, shop(sim, channel) as conn:
        pusher = Pusher("web", conn, engine.outbox, engine.metrics, engine.clock,
                        backoff=0.01, max_backoff=0.2)
        try:
            yield engine, conn, pusher
        finally:
            await pusher.stop()


def synced(engine: Engine) -> bool:
    return engine.outbox.pending_count("web") == 0


@pytest.mark.parametrize("bucket_at_start", [PLUS[0], PLUS[0] / 2], ids=["full", "half"])
async def test_full_sync_of_5000_skus_is_never_throttled(
    tmp_path: Path, bucket_at_start: float
) -> None:
    """A first sync of 5,000 SKUs on a Shopify Plus store. With the bucket half used at start
    (our previous run, say), the sync needs more points than the bucket holds: pacing waits for
    them instead of being throttled."""
    n = 5000
    sim = ShopifySim(maximum_available=PLUS[0], restore_rate=PLUS[1])
    skus = [f"SKU-{i:05d}" for i in range(n)]
    sim.add_items(skus, available=0)
    sim.drain(to=bucket_at_start)
    async with syncd_with_shopify(tmp_path, sim) as (engine, conn, pusher):
        counts = [ev(EventType.COUNT, sku=s, qty=10 + i % 50, location="lyon", connector="wms")
                  for i, s in enumerate(skus)]
        verdicts = await engine.apply(counts)  # one batch: 5,000 figures pending at once
        assert {v.outcome for v in verdicts} == {Outcome.APPLIED}
        assert engine.outbox.pending_count("web") == n
        started = time.perf_counter()
        pusher.start()
        await until(lambda: synced(engine), within=60)
        seconds = time.perf_counter() - started
    per_mutation = sim.quantities_per_mutation
    avg = sum(per_mutation) / len(per_mutation)
    print(f"\nshopify full sync, Plus bucket {bucket_at_start:.0f}/{PLUS[0]:.0f} points at start, "
          f"{PLUS[1]:.0f}/s: {n} SKUs in {seconds:.2f}s; {conn.calls} API calls "
          f"({sim.mutations} mutations, avg {avg:.1f} quantities/mutation); throttled "
          f"{conn.throttled_calls}; paced {conn.client.paced_seconds:.2f}s; points requested "
          f"{sim.points_requested}, spent {sim.points_spent}")
    assert conn.throttled_calls == 0 and sim.throttled == 0
    assert avg >= 240
    assert sum(per_mutation) == n and conn.quantities_pushed == n
    assert all(sim.available(s) == 8 + i % 50 for i, s in enumerate(skus))
    if bucket_at_start < sim.points_requested:
        assert conn.client.paced_seconds > 0


async def test_drift_found_by_reconciliation_is_corrected(tmp_path: Path) -> None:
    sim = ShopifySim()
    skus = [f"R{i}" for i in range(20)]
    sim.add_items(skus, available=0)
    async with syncd_with_shopify(tmp_path, sim) as (engine, _conn, pusher):
        await engine.apply([ev(EventType.COUNT, sku=s, qty=12, location="lyon", connector="wms")
                            for s in skus])
        pusher.start()
        await until(lambda: synced(engine))
        assert {sim.available(s) for s in skus} == {10}
        sim.set_available("R3", None, 0)  # hand-made drift, no webhook
        sim.set_available("R7", None, 55)
        drifted = await pusher.reconcile()
        assert drifted == 2
        await until(lambda: synced(engine) and sim.available("R3") == 10
                    and sim.available("R7") == 10)
        assert await pusher.reconcile() == 0
        assert engine.metrics.drift.labels("web")._value.get() == 2
        # a hand edit, then a new figure: the pusher's compare-and-set fails, it learns what
        # Shopify shows and sets the new figure from there
        sim.set_available("R5", None, 99)
        await engine.apply([ev(EventType.SALE, sku="R5", qty=4, location="lyon",
                               connector="wms", at=T0 + 10**6)])
        await until(lambda: synced(engine) and sim.available("R5") == 6)
        assert sim.stale == 1
        assert engine.metrics.drift.labels("web")._value.get() == 3


async def test_drift_reported_by_webhook_is_corrected(tmp_path: Path) -> None:
    sim = ShopifySim()
    sim.add_items(["W1", "W2"], available=0)
    verdicts: list[list[Verdict]] = []
    async with syncd_with_shopify(tmp_path, sim) as (engine, conn, pusher), \
            webhook_endpoint(conn, engine, verdicts) as url:
        await engine.apply([ev(EventType.COUNT, sku=s, qty=9, location="lyon", connector="wms")
                            for s in ("W1", "W2")])
        pusher.start()
        await until(lambda: synced(engine) and sim.available("W1") == 7)
        # Shopify echoes our own change: not drift
        res = await sim.send_webhook("inventory_levels/update", sim.level_payload("W1"), url,
                                     SECRET)
        assert res.status == 200 and outcomes(verdicts) == [Outcome.APPLIED]
        # a merchant sets 40 in the admin; Shopify tells us
        sim.set_available("W1", None, 40)
        res = await sim.send_webhook("inventory_levels/update", sim.level_payload("W1"), url,
                                     SECRET)
        assert res.status == 200 and outcomes(verdicts) == [Outcome.DRIFT]
        await until(lambda: sim.available("W1") == 7)
        assert sim.available("W2") == 7
        # another location's level is not this channel's business
        payload = {**sim.level_payload("W2", LOC2), "available": 3}
        res = await sim.send_webhook("inventory_levels/update", payload, url, SECRET)
        assert res.status == 200 and verdicts[-1] == []


async def test_order_webhooks_reserve_release_and_deduplicate(tmp_path: Path) -> None:
    sim = ShopifySim()
    sim.add_items(["O1", "O2"], available=0)
    verdicts: list[list[Verdict]] = []
    async with syncd_with_shopify(tmp_path, sim) as (engine, conn, pusher), \
            webhook_endpoint(conn, engine, verdicts) as url:
        await engine.apply([ev(EventType.COUNT, sku=s, qty=12, location="lyon", connector="wms")
                            for s in ("O1", "O2")])
        pusher.start()
        await until(lambda: synced(engine) and sim.available("O1") == 10)
        order = sim.order_payload(5551, [("O1", 2), ("O1", 1), ("O2", 1), (None, 1)])
        res = await sim.send_webhook("orders/create", order, url, SECRET)
        assert res.status == 200
        assert [(v.outcome, v.reservation.sku if v.reservation else None)
                for v in verdicts[-1]] == [(Outcome.APPLIED, "O1"), (Outcome.APPLIED, "O2")]
        open_orders = {r.sku: r for res_ in engine.ledger.open.values() for r in res_.values()
                       if r.order_id == "5551"}
        assert open_orders["O1"].qty == 3 and open_orders["O1"].location == "lyon"
        assert open_orders["O1"].state is ReservationState.ACTIVE
        # the channel now sells 3 fewer O1 and 1 fewer O2
        await until(lambda: sim.available("O1") == 7 and sim.available("O2") == 9)
        # Shopify redelivers the same event: a duplicate, nothing changes
        again = await sim.send_webhook("orders/create", order, url, SECRET,
                                       event_id=res.event_id)
        assert again.status == 200
        assert [v.outcome for v in verdicts[-1]] == [Outcome.DUPLICATE, Outcome.DUPLICATE]
        assert sum(r.qty for r in engine.ledger.open[("O1", "lyon")].values()) == 3
        # cancelled: released at once, and the channel gets the units back
        res = await sim.send_webhook("orders/cancelled", sim.cancelled_payload(order), url,
                                     SECRET)
        assert res.status == 200 and verdicts[-1][0].outcome is Outcome.APPLIED
        assert not engine.ledger.open.get(("O1", "lyon"))
        await until(lambda: sim.available("O1") == 10 and sim.available("O2") == 10)


async def test_bad_signatures_and_malformed_bodies_apply_nothing(tmp_path: Path) -> None:
    sim = ShopifySim()
    sim.add_items(["S1"], available=0)
    verdicts: list[list[Verdict]] = []
    async with syncd_with_shopify(tmp_path, sim) as (engine, conn, _pusher), \
            webhook_endpoint(conn, engine, verdicts) as url, aiohttp.ClientSession() as http:
        order = sim.order_payload(77, [("S1", 1)])
        res = await sim.send_webhook("orders/create", order, url, "another-secret")
        assert res.status == 401 and json.loads(res.body)["error"] == "bad_signature"
        res = await sim.send_webhook("orders/create", order, url, SECRET, signature="")
        assert res.status == 401
        tampered = json.dumps({**order, "line_items": [{"sku": "S1", "quantity": 50}]}).encode()
        res = await sim.send_webhook("orders/create", tampered, url, SECRET,
                                     signature=sign(SECRET.encode(), json.dumps(order).encode()))
        assert res.status == 401
        res = await sim.send_webhook("orders/create", b'{"id": 77, "line_items": [', url,
                                     SECRET)
        assert res.status == 400 and json.loads(res.body)["error"] == "malformed"
        assert verdicts == [] and not engine.ledger.open
        res = await sim.send_webhook("products/update", {"id": 1}, url, SECRET)
        assert res.status == 200 and verdicts == [[]]
        # signed but unusable: dead-lettered (kept for the operator), acknowledged
        res = await sim.send_webhook("orders/create", {"id": 78}, url, SECRET)
        assert res.status == 200
        async with engine.db.connect() as db:
            rows = (await db.exec_driver_sql(
                "SELECT connector, reason FROM dead_letters")).fetchall()
        assert [tuple(r) for r in rows] == [
            ("shop", "orders/create: line_items is missing or not a list")]
        assert not engine.ledger.open
        async with http.post(url, data=b"{}") as resp:  # no headers at all
            assert resp.status == 401


# -- mapping of the documented payloads -------------------------------------------------------


def delivery(topic: str, body: bytes, event_id: str = "evt-1") -> dict[str, str]:
    return {"X-Shopify-Topic": topic, "X-Shopify-Hmac-SHA256": sign(SECRET.encode(), body),
            "X-Shopify-Event-Id": event_id, "X-Shopify-Webhook-Id": "wh-1",
            "X-Shopify-Shop-Domain": "example.myshopify.com",
            "X-Shopify-Triggered-At": "2026-11-23T10:00:00Z"}


async def test_documented_payloads_map_to_events() -> None:
    conn = connector("https://example.myshopify.com", None)
    body = (FIXTURES / "orders_create.json").read_bytes()
    reply = await conn.webhook(delivery("orders/create", body), body)
    assert reply.status == 200 and not reply.dead
    assert [(e.type, e.event_id, e.sku, e.qty, e.order_id, e.channel) for e in reply.events] == [
        (EventType.ORDER, "evt-1:CHEMISE-LIN-M", "CHEMISE-LIN-M", 3, "820982911946154508",
         "web"),
        (EventType.ORDER, "evt-1:PANTALON-40", "PANTALON-40", 1, "820982911946154508", "web"),
    ]
    assert reply.events[0].occurred_at == T0  # 11:00+01:00 = 10:00Z
    body = (FIXTURES / "orders_cancelled.json").read_bytes()
    reply = await conn.webhook(delivery("orders/cancelled", body, "evt-2"), body)
    (e,) = reply.events
    assert (e.type, e.sku, e.qty, e.order_id, e.event_id) == (
        EventType.ORDER_CANCELLED, "", 0, "820982911946154508", "evt-2")
    body = (FIXTURES / "orders_fulfilled.json").read_bytes()
    reply = await conn.webhook(delivery("orders/fulfilled", body, "evt-3"), body)
    (e,) = reply.events
    assert e.type is EventType.ORDER_FULFILLED
    assert e.occurred_at == T0 + 5 * 3600 * 10**6  # the latest fulfilment, 16:00+01:00
    # a level of an item the connector has not met yet, and no API to ask: dead-lettered
    body = (FIXTURES / "inventory_levels_update.json").read_bytes()
    reply = await conn.webhook(delivery("inventory_levels/update", body, "evt-4"), body)
    assert reply.status == 200 and not reply.events
    assert reply.dead[0].reason == "unknown inventory item gid://shopify/InventoryItem/43000000001"
    # a shop the app is also installed on: signed with the same secret, not ours
    headers = {**delivery("orders/cancelled", body), "X-Shopify-Shop-Domain": "other.myshopify.com"}
    assert (await conn.webhook(headers, body)).events == []


async def test_location_mapped_channel_pushes_and_reads_per_location(tmp_path: Path) -> None:
    sim = ShopifySim()
    sim.add_items(["M1"], available=0)
    mapped = Channel("web", "shop", ("lyon", "paris"), location_map=(("lyon", LOC1),
                                                                     ("paris", LOC2)))
    verdicts: list[list[Verdict]] = []
    async with syncd_with_shopify(tmp_path, sim, mapped) as (engine, conn, pusher), \
            webhook_endpoint(conn, engine, verdicts) as url:
        await engine.apply([
            ev(EventType.COUNT, sku="M1", qty=6, location="lyon", connector="wms"),
            ev(EventType.COUNT, sku="M1", qty=4, location="paris", connector="pos"),
        ])
        pusher.start()
        await until(lambda: synced(engine) and sim.available("M1", LOC2) == 3)
        assert sim.available("M1", LOC1) == 6  # paris keeps its safety stock of 1
        assert await conn.read_levels("web", [("M1", LOC1), ("M1", LOC2)]) == {
            ("M1", LOC1): 6, ("M1", LOC2): 3}
        sim.set_available("M1", LOC2, 0)
        await sim.send_webhook("inventory_levels/update", sim.level_payload("M1", LOC2), url,
                               SECRET)
        (v,) = verdicts[-1]
        assert v.outcome is Outcome.DRIFT
        await until(lambda: sim.available("M1", LOC2) == 3)
        # an order placed at the Paris POS reserves at Paris
        order = sim.order_payload(901, [("M1", 2)], location_id=2)
        await sim.send_webhook("orders/create", order, url, SECRET)
        assert verdicts[-1][0].reservation is not None
        assert verdicts[-1][0].reservation.location == "paris"
        await until(lambda: sim.available("M1", LOC2) == 1)


# -- fuzzing ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["2026-11-23T10:00:00Z", "2026-11-23", "1", "-3"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
line_items = st.lists(st.fixed_dictionaries({}, optional={
    "sku": json_values | st.text(max_size=30), "quantity": json_values | st.integers(-5, 5)}),
    max_size=4)
payloads = st.fixed_dictionaries({}, optional={
    "id": json_values | st.integers(-3, 10**20), "line_items": json_values | line_items,
    "created_at": json_values, "updated_at": json_values, "cancelled_at": json_values,
    "fulfillments": json_values | st.lists(st.fixed_dictionaries({"created_at": json_values})),
    "location_id": json_values | st.integers(0, 3), "inventory_item_id": json_values,
    "available": json_values, "extra": json_values,
})
topics = st.sampled_from([*TOPICS, "orders/updated", "", "ORDERS/CREATE"])


def _check(reply: Any) -> None:
    assert reply.status in (200, 400, 401)
    for e in reply.events:
        assert e.connector == "shop" and e.event_id and len(e.event_id) <= 255
        assert isinstance(e.qty, int) and isinstance(e.occurred_at, int)
        if e.type is EventType.ORDER:
            assert e.qty > 0 and e.sku and e.order_id
    for d in reply.dead:
        assert d.reason and d.connector == "shop"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300), topic=topics, signed=st.booleans(),
       signature=st.text(max_size=60))
def test_fuzz_any_bytes_get_a_clean_reply(body: bytes, topic: str, signed: bool,
                                          signature: str) -> None:
    conn = connector("https://example.myshopify.com", None)
    headers = {"X-Shopify-Topic": topic,
               "X-Shopify-Hmac-SHA256": sign(SECRET.encode(), body) if signed else signature}
    reply = asyncio.run(conn.webhook(headers, body))
    _check(reply)
    if not signed:
        assert reply.status == 401 and not reply.events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads | json_values, topic=topics, event_id=st.text(max_size=300))
def test_fuzz_signed_json_is_mapped_or_dead_lettered(payload: Any, topic: str,
                                                      event_id: str) -> None:
    conn = connector("https://example.myshopify.com", None)
    conn._remember("KNOWN", "gid://shopify/InventoryItem/1")
    body = json.dumps(payload).encode()
    headers: Mapping[str, str] = {
        "X-Shopify-Topic": topic, "X-Shopify-Hmac-SHA256": sign(SECRET.encode(), body),
        "X-Shopify-Event-Id": event_id,
    }
    reply = asyncio.run(conn.webhook(headers, body))
    _check(reply)
    assert reply.status == (200 if isinstance(payload, dict) else 400)


def test_signature_is_base64_hmac_sha256_of_the_raw_body() -> None:
    import hashlib
    import hmac

    body = b'{"id":1}'
    expected = base64.b64encode(hmac.new(b"k", body, hashlib.sha256).digest()).decode()
    assert sign(b"k", body) == expected
