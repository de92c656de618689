"""The outbox flush alone: microseconds per row to upsert changed outbox rows on SQLite.

A 220,000-row outbox, as `bench/engine.py`'s configuration makes it (a per-store channel over
20,000 SKUs × 10 stores and a pooled webshop), then rounds of 50,000 random rows taking a new
desired value, written four ways in turn within each round: whole rows in random order (the
flush before 2026-11-23's third session), the desired side only in random order, the desired
side in key order, and the desired side in SKU order (the flush now; the two channels
interleave). Sorting is included. Reports wall time per row and the event loop thread's CPU
time per row (sorting, building and splitting rows, binding under the GIL).

    python bench/outbox_flush.py [--rows 50000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from operator import itemgetter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine
from bench.engine import T0
from syncd.store import open_engine, sqlite_url, upgrade
from syncd.store import repository as repo
from syncd.store.repository import OutboxRow

Key = tuple[str, str, str]


async def measure(state: Path, n: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    db = open_engine(sqlite_url(state))
    await upgrade(db)
    rows = {("kiosk", f"SKU-{i:06d}", f"store-{j:02d}"): OutboxRow(20, 1, T0)
            for i in range(20_000) for j in range(10)}
    rows.update({("web", f"SKU-{i:06d}", ""): OutboxRow(60, 1, T0) for i in range(20_000)})
    async with db.begin() as conn:
        await repo.upsert_outbox(conn, [repo.outbox_row(k, r) for k, r in rows.items()])
    keys = list(rows)
    rnd = random.Random(7)

    async def whole(sample: list[Key]) -> None:
        async with db.begin() as conn:
            await repo.upsert_outbox(conn, [repo.outbox_row(k, rows[k]) for k in sample])

    async def desired(sample: list[Key]) -> None:
        async with db.begin() as conn:
            await repo.upsert_outbox_desired(
                conn, [repo.outbox_desired_row(k, rows[k]) for k in sample])

    async def desired_key_order(sample: list[Key]) -> None:
        await desired(sorted(sample))

    async def desired_sku_order(sample: list[Key]) -> None:
        await desired(sorted(sample, key=itemgetter(1)))

    ways: dict[str, Callable[[list[Key]], Awaitable[None]]] = {
        "whole rows, random order": whole,
        "desired side, random order": desired,
        "desired side, key order": desired_key_order,
        "desired side, SKU order": desired_sku_order,
    }
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for r in range(rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for name in order:
            sample = rnd.sample(keys, n)
            for k in sample:
                row = rows[k]
                row.desired += 1
                row.version += 1
            wall, cpu = time.perf_counter(), time.thread_time()
            await ways[name](sample)
            out[name].append(((time.perf_counter() - wall) / n * 1e6,
                              (time.thread_time() - cpu) / n * 1e6))
    await db.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as d:
        res = asyncio.run(measure(Path(d), args.rows, args.rounds))
    print("| write | µs per row (wall) | µs per row on the event loop's thread |")
    print("|---|---|---|")
    for name, runs in res.items():
        print(f"| {name} | {statistics.median(w for w, _ in runs):.1f} | "
              f"{statistics.median(c for _, c in runs):.1f} |")


if __name__ == "__main__":
    main()
