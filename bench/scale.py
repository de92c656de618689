"""Scale: cold start, peak memory and a full availability recompute at 10k, 100k and 1M
SKU x location rows.

The database is filled directly (levels for N SKU-locations over 10 stores and a warehouse, with
the outbox rows of a pooled webshop and per-store kiosks already pushed), then, in a fresh
process for each size:

- cold start: `Engine.start()` (load levels, reservations and outbox, recompute every figure),
  with the garbage collector set as `syncd run` sets it (`syncd.tuning`);
- full recompute: the same recompute again, on the warm engine (what a SIGHUP reload costs);
- peak RSS of that process (`ru_maxrss`).

    python bench/scale.py [--sizes 10000,100000,1000000] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, record
from bench.engine import STORES, config
from syncd.store import open_engine, sqlite_url, upgrade

T0 = 1_795_428_000_000_000


async def _migrate(state: Path) -> None:
    db = open_engine(sqlite_url(state))
    await upgrade(db)
    await db.dispose()


def fill(state: Path, rows: int) -> None:
    """`rows` SKU-locations: SKUs over the 10 stores and the warehouse."""
    asyncio.run(_migrate(state))
    con = sqlite3.connect(state / "syncd.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    locs = [*STORES, "dc"]
    skus = rows // len(locs)
    con.execute("BEGIN")
    con.executemany(
        "INSERT INTO levels (sku, location, on_hand, watermark, floor, reported_at, tail, "
        "version) VALUES (?, ?, ?, ?, NULL, ?, '[]', 1)",
        ((f"SKU-{s:07d}", loc, (s * 7 + i) % 40, T0, T0)
         for s in range(skus) for i, loc in enumerate(locs)),
    )
    con.execute("COMMIT")
    con.close()


async def measure(state: Path) -> dict[str, float]:
    from prometheus_client import CollectorRegistry

    from syncd import tuning
    from syncd.engine import Engine
    from syncd.metrics import Metrics

    db = open_engine(sqlite_url(state))
    engine = Engine(db, config(), Metrics(CollectorRegistry()))
    tuning.tune()  # as `syncd run` does around the engine's start
    t0 = time.perf_counter()
    await engine.start()
    cold = time.perf_counter() - t0
    tuning.freeze_loaded_state()
    rows = len(engine.ledger.levels)
    t0 = time.perf_counter()
    engine._recompute_pending = True  # what a reload does
    from syncd.ledger import Changes

    engine._publish_figures(Changes(), engine.clock())
    recompute = time.perf_counter() - t0
    await engine.stop()
    await db.dispose()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": rows, "cold_start_s": cold, "recompute_s": recompute, "peak_rss_mb": rss_mb,
            "outbox_rows": len(engine.outbox.rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.child:
        print(json.dumps(asyncio.run(measure(Path(args.child)))))
        return
    print(machine())
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as d:
            fill(Path(d), size)
            # first start builds and persists the outbox (a new deployment); measure the next
            subprocess.run([sys.executable, __file__, "--child", d], check=True,
                           capture_output=True)
            out = subprocess.run([sys.executable, __file__, "--child", d], check=True,
                                 capture_output=True, text=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(res)
        print(f"{res['rows']:>9,} rows: cold start {res['cold_start_s']:.2f} s, full recompute "
              f"{res['recompute_s']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB, "
              f"{res['outbox_rows']:,} outbox rows")
    lines = [
        f"Command: `python bench/scale.py --sizes {args.sizes} --write`",
        "",
        machine(),
        "",
        "| SKU x location rows | outbox rows | cold start | full recompute | peak RSS |",
        "|---|---|---|---|---|",
        *[f"| {r['rows']:,} | {r['outbox_rows']:,} | {r['cold_start_s']:.2f} s | "
          f"{r['recompute_s']:.2f} s | {r['peak_rss_mb']:.0f} MB |" for r in results],
        "",
        "Targets at 1M rows: cold start ≤ 15 s, peak RSS ≤ 1.5 GB, full recompute ≤ 30 s.",
    ]
    print("\n".join(lines))
    if args.write:
        record("Scale (bench/scale.py)", "\n".join(lines))


if __name__ == "__main__":
    main()
