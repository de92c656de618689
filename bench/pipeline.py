"""End-to-end ingest throughput and propagation latency, through a real mosquitto and the real
`syncd run` daemon (SQLite).

1. Transport ceiling: mosquitto + paho (aiomqtt) + `json.loads` alone, no syncd: the time for a
   QoS 1 subscriber to receive and decode every message.
2. Ingest: the same POS messages (100 events each) published to syncd; measured from the first
   publish until `/v1/stock` shows the final on-hand of every SKU.
3. Propagation latency: a steady 1,000 events/s of store sales (one event per message, each on
   its own SKU); for each, the time from the POS publish to the Shopify simulator applying the
   new quantity pushed by syncd. p50, p99, max.

    python bench/pipeline.py [--events 200000] [--runs 3] [--seconds 20] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import aiomqtt

from bench.common import machine, record
from connectors.shopify.sim import ShopifySim, running_sim
from syncd.demo.services import Broker, DaemonProcess, free_port

STORE = "paris-01"
TOKEN = "bench-token-0123456789"


def config(root: Path, http: int, broker: Broker, shop_url: str | None) -> str:
    text = f"""
[daemon]
state_dir = "{root / 'state'}"
http_listen = "127.0.0.1:{http}"
api_token = "env:BENCH_TOKEN"
log_level = "warning"

[locations.{STORE}]
kind = "store"
authority = "pos"

[connectors.pos]
type = "mqtt_pos"
url = "{broker.url}"
client_id = "syncd-bench-{http}"
"""
    if shop_url:
        text += f"""
[connectors.shop]
type = "shopify"
shop_url = "{shop_url}"
access_token = "env:BENCH_SHOP_TOKEN"
webhook_secret = "env:BENCH_TOKEN"
location_id = "gid://shopify/Location/1"

[channels.webshop]
connector = "shop"
sells_from = ["{STORE}"]
"""
    return text


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def messages(n_events: int, skus: int, per_message: int = 100) -> list[bytes]:
    out = []
    seq = 0
    for start in range(0, n_events, per_message):
        events = []
        for i in range(start, min(start + per_message, n_events)):
            seq += 1
            events.append({"event_id": f"T1-{i:08d}", "seq": seq, "source": "T1",
                           "type": "sale", "sku": f"SKU-{i % skus:05d}", "qty": 1,
                           "occurred_at": now_iso()})
        out.append(json.dumps({"events": events}).encode())
    return out


async def transport_ceiling(broker: Broker, payloads: list[bytes]) -> float:
    got = asyncio.Event()
    count = [0, 0]

    async def consume(client: aiomqtt.Client) -> None:
        async for m in client.messages:
            count[1] += len(json.loads(m.payload)["events"])  # type: ignore[arg-type]
            count[0] += 1
            if count[0] == len(payloads):
                got.set()
                return

    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-sub") as sub, \
            aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-pub") as pub:
        await sub.subscribe("bench/ceiling", qos=1)
        task = asyncio.create_task(consume(sub))
        t0 = time.perf_counter()
        for p in payloads:
            await pub.publish("bench/ceiling", p, qos=1)
        await got.wait()
        elapsed = time.perf_counter() - t0
        await task
    return count[1] / elapsed


async def on_hand(http: aiohttp.ClientSession, base: str, sku: str) -> int | None:
    async with http.get(f"{base}/v1/stock/{sku}") as resp:
        body = await resp.json()
    loc = body["locations"].get(STORE)
    return None if loc is None else int(loc["on_hand"])


async def publish(broker: Broker, topic: str, payloads: list[bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-till",
                              clean_session=False) as pub:
        for p in payloads:
            await pub.publish(topic, p, qos=1)


async def ingest(root: Path, broker: Broker, n_events: int, skus: int) -> float:
    http_port = free_port()
    cfgfile = root / "ingest.toml"
    cfgfile.write_text(config(root / "ingest", http_port, broker, None))
    daemon = DaemonProcess(cfgfile, {"BENCH_TOKEN": TOKEN}, root / "ingest.log")
    base = f"http://127.0.0.1:{http_port}"
    payloads = messages(n_events, skus)
    expected = {f"SKU-{k:05d}": -sum(1 for i in range(k, n_events, skus)) for k in range(skus)}
    last = max(expected, key=lambda s: (expected[s], s))
    try:
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            await wait_ready(http, base, daemon)
            t0 = time.perf_counter()
            await publish(broker, f"syncd/pos/{STORE}/events", payloads)
            while await on_hand(http, base, last) != expected[last] or any(
                    [await on_hand(http, base, s) != expected[s]
                     for s in list(expected)[:: max(1, skus // 20)]]):
                await asyncio.sleep(0.01)
            return n_events / (time.perf_counter() - t0)
    finally:
        daemon.stop()


async def wait_ready(http: aiohttp.ClientSession, base: str, daemon: DaemonProcess) -> None:
    for _ in range(600):
        assert daemon.alive(), "daemon died"
        try:
            async with http.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("daemon not ready")


async def latency(root: Path, broker: Broker, seconds: float, rate: int) -> list[float]:
    n = int(seconds * rate)
    skus = [f"LAT-{i:06d}" for i in range(n)]
    sim = ShopifySim(locations=("Online",), maximum_available=20_000, restore_rate=1_000)
    sim.add_items(skus, available=0)
    arrived: dict[str, float] = {}
    sim.on_set = lambda sku, _loc, qty: arrived.setdefault(sku, time.perf_counter()) \
        if qty == 99 else None
    http_port = free_port()
    async with running_sim(sim) as shop_url:
        cfgfile = root / "latency.toml"
        cfgfile.write_text(config(root / "latency", http_port, broker, shop_url))
        daemon = DaemonProcess(cfgfile, {"BENCH_TOKEN": TOKEN,
                                         "BENCH_SHOP_TOKEN": sim.access_token},
                               root / "latency.log")
        base = f"http://127.0.0.1:{http_port}"
        try:
            async with aiohttp.ClientSession(
                    headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                await wait_ready(http, base, daemon)
                # opening counts: 100 of each, pushed to Shopify first
                counts = [json.dumps({"events": [
                    {"event_id": f"C-{s}", "type": "count", "sku": s, "qty": 100,
                     "occurred_at": "2026-11-23T08:00:00Z"} for s in skus[i : i + 500]]}).encode()
                    for i in range(0, n, 500)]
                await publish(broker, f"syncd/pos/{STORE}/events", counts)
                while sum(1 for s in skus[:: max(1, n // 50)] if sim.available(s) == 100) < \
                        len(skus[:: max(1, n // 50)]):
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)
                sent: dict[str, float] = {}
                async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-lat",
                                          clean_session=False) as pub:
                    t0 = time.perf_counter()
                    for i, sku in enumerate(skus):
                        due = t0 + i / rate
                        delay = due - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        body = json.dumps({"event_id": f"L-{sku}", "type": "sale", "sku": sku,
                                           "qty": 1, "occurred_at": now_iso()})
                        sent[sku] = time.perf_counter()
                        await pub.publish(f"syncd/pos/{STORE}/events", body, qos=1)
                deadline = time.perf_counter() + 60
                while len(arrived) < n and time.perf_counter() < deadline:
                    await asyncio.sleep(0.1)
        finally:
            daemon.stop()
    return sorted(arrived[s] - sent[s] for s in skus if s in arrived and s in sent)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="syncd-bench-") as tmp:
        root = Path(tmp)
        broker = Broker(root)
        try:
            payloads = messages(args.events, args.skus)
            ceilings, ingests = [], []
            for run in range(args.runs):
                ceilings.append(await transport_ceiling(broker, payloads))
                run_root = root / f"run{run}"
                run_root.mkdir()
                ingests.append(await ingest(run_root, broker, args.events, args.skus))
                print(f"run {run + 1}: ingest {ingests[-1]:,.0f} events/s, transport ceiling "
                      f"{ceilings[-1]:,.0f} events/s")
            lat_root = root / "lat"
            lat_root.mkdir()
            lat = await latency(lat_root, broker, args.seconds, args.rate)
        finally:
            broker.stop()
    return {"ceilings": ceilings, "ingests": ingests, "latency": lat}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--skus", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(machine())
    res = asyncio.run(main_async(args))
    ing, ceil, lat = res["ingests"], res["ceilings"], res["latency"]
    ms = [v * 1000 for v in lat]
    lines = [
        f"Command: `python bench/pipeline.py --events {args.events} --skus {args.skus} "
        f"--runs {args.runs} --seconds {args.seconds:g} --rate {args.rate} --write`",
        "",
        machine(),
        "",
        "| measure | median | runs |",
        "|---|---|---|",
        f"| ingest through mosquitto to `/v1/stock`, 100 events/message | "
        f"**{statistics.median(ing):,.0f} events/s** | "
        + ", ".join(f"{v:,.0f}" for v in ing) + " |",
        f"| transport ceiling (mosquitto + aiomqtt/paho + json.loads) | "
        f"{statistics.median(ceil):,.0f} events/s | " + ", ".join(f"{v:,.0f}" for v in ceil)
        + " |",
        f"| ingest / ceiling | {statistics.median(ing) / statistics.median(ceil):.0%} | |",
        "",
        f"Propagation latency, POS publish to the Shopify simulator applying the push, at "
        f"{args.rate:,} events/s for {args.seconds:g} s ({len(ms):,} of "
        f"{int(args.seconds * args.rate):,} sales arrived):",
        "",
        "| p50 | p99 | max |",
        "|---|---|---|",
        f"| {pct(ms, 0.5):.0f} ms | **{pct(ms, 0.99):.0f} ms** | {ms[-1]:.0f} ms |"
        if ms else "| - | - | - |",
        "",
        "Targets: ingest ≥ 30,000 events/s; latency p99 ≤ 100 ms.",
    ]
    print("\n".join(lines))
    if args.write:
        record("Ingest and propagation through mosquitto (bench/pipeline.py)", "\n".join(lines))



if __name__ == "__main__":
    main()
