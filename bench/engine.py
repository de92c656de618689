"""Engine throughput: events per second through the in-process engine on SQLite.

POS traffic (sales, returns, adjustments, receipts and counts over 20,000 SKUs in 10 stores, in
deliveries of 100 events as a POS batch message would carry) is submitted to a real Engine on a
file-backed SQLite database (WAL, synchronous=NORMAL) with two channels to publish (a webshop
pooled over the warehouse and three stores, and a per-store channel). Two traffics:

- *trading day* (the headline): the stock is loaded before the clock starts (every SKU counted
  at every store, committed, the engine restarted on that database as a running daemon would
  be), then a day's events. Nearly every event moves a published figure.
- *a longer trading day* (`--steady`, 1,000,000 events): long enough for the level checkpoint and
  the outbox's desired side to be written on their 10 s clocks during the run, as a running
  daemon writes them, rather than all at `stop()`; its figure until `stop()` is the closest to
  the rate the daemon sustains.
- *cold* (the figure of earlier sessions, kept for comparison): the first 20,000 events count
  each SKU at one store, and later events hit random stores, so about 45 % of the levels go
  below zero and stay published as 0; their figures stop moving, which makes this traffic
  cheaper per event than a real day.

Measured from the first submit to the last acknowledgement (the last commit), and to the end of
`Engine.stop()`, which writes the level checkpoint and the outbox rows still owed (work that a
running daemon does every few seconds; counting it keeps the lazy writes honest). The garbage
collector is set as `syncd run` sets it (`syncd.tuning`: thresholds raised, the state at start
frozen). Also measures the raw sqlite3 group-commit ceiling (the same rows inserted with
executemany, one transaction per 2,000) for comparison.

    python bench/engine.py [--events 200000] [--runs 5] [--steady 1000000] [--write]

`--write` records the medians in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from bench.common import machine, record
from connectors.base import Inbound
from syncd import tuning
from syncd.engine import Engine
from syncd.ledger import LedgerConfig
from syncd.metrics import Metrics
from syncd.model import Channel, Event, EventType, Location
from syncd.store import open_engine, sqlite_url, upgrade

T0 = 1_795_428_000_000_000
STORES = [f"store-{i:02d}" for i in range(10)]


def config() -> LedgerConfig:
    locations = {s: Location(s, "store", "pos", safety_stock=1, pickup=True) for s in STORES}
    locations["dc"] = Location("dc", "warehouse", "wms")
    channels = {
        "web": Channel("web", "shop", ("dc", *STORES[:3]), safety_stock=2, max_quantity=10_000),
        "kiosk": Channel("kiosk", "pos", tuple(STORES), per_location=True),
    }
    return LedgerConfig(locations=locations, channels=channels)


def traffic(n: int, skus: int, seed: int) -> list[list[Event]]:
    """The cold traffic: `n` events; the first ones count each SKU at one store."""
    rnd = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        kind = rnd.choice(KINDS) if i >= skus else EventType.COUNT
        store = rnd.choice(STORES)
        sku = i if i < skus else rnd.randrange(skus)
        out.append(_event(rnd, i, kind, store, sku))
    return [out[i : i + 100] for i in range(0, n, 100)]


def trading_day(n: int, skus: int, seed: int) -> list[list[Event]]:
    """`n` events of a day on stock that every store has counted (`opening_counts`)."""
    rnd = random.Random(seed)
    out = [_event(rnd, i, rnd.choice(KINDS), rnd.choice(STORES), rnd.randrange(skus))
           for i in range(n)]
    return [out[i : i + 100] for i in range(0, n, 100)]


def opening_counts(skus: int) -> list[list[Event]]:
    """Every SKU counted at every store the day before (20 to 60 units)."""
    rnd = random.Random(-1)
    out = [Event(connector="pos", event_id=f"open-{store}-{sku:06d}", type=EventType.COUNT,
                 sku=f"SKU-{sku:06d}", qty=rnd.randint(20, 60), occurred_at=T0 - 86_400_000_000,
                 location=store)
           for sku in range(skus) for store in STORES]
    return [out[i : i + 2000] for i in range(0, len(out), 2000)]


KINDS = [EventType.SALE] * 80 + [EventType.RETURN] * 8 + [EventType.ADJUST] * 4 + [
    EventType.RECEIPT] * 4 + [EventType.COUNT] * 4


def _event(rnd: random.Random, i: int, kind: EventType, store: str, sku: int) -> Event:
    qty = rnd.randint(20, 60) if kind is EventType.COUNT else rnd.randint(1, 3)
    if kind is EventType.ADJUST:
        qty = rnd.choice((-2, -1, 1, 2))
    return Event(
        connector="pos", event_id=f"{store}-{i:09d}", type=kind, sku=f"SKU-{sku:06d}", qty=qty,
        occurred_at=T0 + i * 1000, location=store, source=f"{store}-T1", seq=i,
    )


async def load_stock(state: Path, skus: int) -> None:
    """Commit the opening counts and stop (untimed): the database a trading day starts from."""
    db = open_engine(sqlite_url(state))
    await upgrade(db)
    engine = Engine(db, config(), Metrics(CollectorRegistry()), max_batch=2000)
    await engine.start()
    for b in opening_counts(skus):
        await engine.apply(b)
    await engine.stop()
    await db.dispose()


async def run_engine(batches: list[list[Event]], state: Path) -> tuple[float, float, float]:
    """Seconds to the last acknowledgement, seconds until `stop()` returned, and the CPU seconds
    the event loop's thread spent in between (the engine's Python half; the rest of the process
    CPU is SQLite and the driver on the database thread)."""
    db = open_engine(sqlite_url(state))
    await upgrade(db)
    engine = Engine(db, config(), Metrics(CollectorRegistry()), max_batch=2000)
    tuning.tune()  # what `syncd run` does around the engine's start
    await engine.start()
    tuning.freeze_loaded_state()
    done = asyncio.Event()
    remaining = [len(batches)]

    def ack() -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set()

    t0, cpu0 = time.perf_counter(), time.thread_time()
    for b in batches:
        await engine.submit(Inbound(b, on_commit=ack))
    await done.wait()
    acked = time.perf_counter() - t0
    await engine.stop()  # writes the level checkpoint and the outbox rows still owed
    elapsed, main_cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    await db.dispose()
    return acked, elapsed, main_cpu


def on_loaded_stock(batches: list[list[Event]], stock: Path) -> tuple[float, float, float]:
    """`run_engine` on a copy of the stock database `load_stock` made."""
    with tempfile.TemporaryDirectory() as d:
        for f in stock.iterdir():
            shutil.copy(f, d)
        return asyncio.run(run_engine(batches, Path(d)))


async def restart_after_kill(batches: list[list[Event]], state: Path) -> tuple[int, float]:
    """Apply everything with no level row written (as if the daemon was SIGKILLed before its
    first checkpoint), kill the engine task, then time a start: rows read, the ledger after the
    mark re-applied. Returns (events re-applied, seconds)."""
    db = open_engine(sqlite_url(state))
    await upgrade(db)
    engine = Engine(db, config(), Metrics(CollectorRegistry()), max_batch=2000,
                    level_checkpoint_every=1e9)
    await engine.start()
    for b in batches:
        await engine.apply(b)
    task = engine._task
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    again = Engine(db, config(), Metrics(CollectorRegistry()), max_batch=2000)
    t0 = time.perf_counter()
    await again.start()
    elapsed = time.perf_counter() - t0
    await again.stop()
    await db.dispose()
    return sum(len(b) for b in batches), elapsed


def sqlite_ceiling(batches: list[list[Event]], state: Path) -> float:
    con = sqlite3.connect(state / "raw.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, connector TEXT, event_id TEXT, "
                "type TEXT, sku TEXT, location TEXT, qty INTEGER, occurred_at INTEGER, "
                "UNIQUE (connector, event_id))")
    rows = [(e.connector, e.event_id, e.type.value, e.sku, e.location, e.qty, e.occurred_at)
            for b in batches for e in b]
    t0 = time.perf_counter()
    for i in range(0, len(rows), 2000):
        con.execute("BEGIN")
        con.executemany("INSERT INTO events (connector, event_id, type, sku, location, qty, "
                        "occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows[i : i + 2000])
        con.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--skus", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steady", type=int, default=1_000_000,
                    help="events of the long trading day (0: not measured)")
    ap.add_argument("--write", action="store_true", help="record the figures in BENCHMARKS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(machine())
    rates: dict[str, list[float]] = {
        k: [] for k in ("day", "day_stop", "day_bound", "cold", "cold_stop", "raw", "steady",
                        "steady_stop")}
    main_us: list[float] = []
    with tempfile.TemporaryDirectory() as stock:
        asyncio.run(load_stock(Path(stock), args.skus))
        for run in range(args.runs):
            day = trading_day(args.events, args.skus, seed=run)
            cold = traffic(args.events, args.skus, seed=run)
            acked, stopped, main_cpu = on_loaded_stock(day, Path(stock))
            rates["day"].append(args.events / acked)
            rates["day_stop"].append(args.events / stopped)
            rates["day_bound"].append(args.events / main_cpu)
            main_us.append(main_cpu / args.events * 1e6)
            if args.steady:
                long_day = trading_day(args.steady, args.skus, seed=1000 + run)
                acked, stopped, _ = on_loaded_stock(long_day, Path(stock))
                del long_day
                rates["steady"].append(args.steady / acked)
                rates["steady_stop"].append(args.steady / stopped)
            with tempfile.TemporaryDirectory() as d:
                acked, stopped, _ = asyncio.run(run_engine(cold, Path(d)))
                raw = sqlite_ceiling(cold, Path(d))
            rates["cold"].append(args.events / acked)
            rates["cold_stop"].append(args.events / stopped)
            rates["raw"].append(args.events / raw)
            print(f"run {run + 1}: trading day {rates['day'][-1]:,.0f} events/s "
                  f"({rates['day_stop'][-1]:,.0f} with the writes at stop; event loop's thread "
                  f"{main_us[-1]:.1f} µs CPU per event), "
                  + (f"long day {rates['steady'][-1]:,.0f} ({rates['steady_stop'][-1]:,.0f}), "
                     if args.steady else "")
                  + f"cold "
                  f"{rates['cold'][-1]:,.0f} ({rates['cold_stop'][-1]:,.0f}), raw sqlite3 "
                  f"ceiling {rates['raw'][-1]:,.0f} events/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items() if v}  # --steady 0: none
    with tempfile.TemporaryDirectory() as d:
        replayed, restart_s = asyncio.run(restart_after_kill(traffic(args.events, args.skus, 0),
                                                             Path(d)))
    print(f"restart after a kill: {replayed:,} events re-applied in {restart_s:.2f} s")

    def row(label: str, key: str, bold: bool = False) -> str:
        if not rates[key]:
            return f"| {label} | not measured | |"
        figure = f"{med[key]:,.0f} events/s"
        return (f"| {label} | {f'**{figure}**' if bold else figure} | "
                + ", ".join(f"{r:,.0f}" for r in rates[key]) + " |")

    lines = [
        f"Command: `python bench/engine.py --events {args.events} --skus {args.skus} "
        f"--runs {args.runs} --steady {args.steady} --write`",
        "",
        machine(),
        "",
        "| measure | median of runs | runs |",
        "|---|---|---|",
        row("trading day on loaded stock, batches of 100 events, to the last acknowledgement",
            "day"),
        row("the same, until `stop()` has written the checkpoint and outbox", "day_stop",
            bold=True),
        f"| the event loop's thread, CPU per event of that trading day (until `stop()`) | "
        f"{statistics.median(main_us):.1f} µs | "
        + ", ".join(f"{u:.1f}" for u in main_us) + " |",
        row("bound if every database step overlapped the Python half (events / that CPU)",
            "day_bound"),
        row(f"a longer trading day ({args.steady:,} events: the checkpoint and the outbox "
            "written on their clocks during the run), to the last acknowledgement", "steady"),
        row("the same, until `stop()`", "steady_stop"),
        row("cold traffic (earlier sessions' measure), to the last acknowledgement", "cold"),
        row("the same, until `stop()`", "cold_stop"),
        row("raw sqlite3 group commit (ceiling)", "raw"),
        f"| trading day (until `stop()`) / ceiling | {med['day_stop'] / med['raw']:.0%} | |",
        "",
        f"A start after a kill that left no level row written re-applied the {replayed:,} "
        f"events of a cold run in {restart_s:.2f} s (the whole start: rows, ledger after the "
        "mark, every figure recomputed); a daemon killed in steady state has at most a "
        "generation and a half (~15–25 s of traffic) to re-apply.",
        "",
        "Target: ≥ 50,000 events/s. The figure until `stop()` is the whole cost: the 10 s "
        "clocks of the level checkpoint and of the outbox's desired side start with the engine, "
        "so a short run leaves those rows to `stop()` (the figure to the last acknowledgement "
        "flatters it) and a longer one writes most of them before its last acknowledgement (the "
        "longer day's rows). The "
        "bound row is what the engine would reach if SQLite cost the event loop nothing (every "
        "database step overlapped with the event loop's work, which the engine now does for "
        "its ledger inserts and its slices of checkpoint and outbox rows): the Python half "
        "alone.",
    ]
    print("\n".join(lines))
    if args.write:
        record("Engine throughput (bench/engine.py)", "\n".join(lines))


if __name__ == "__main__":
    main()
