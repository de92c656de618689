"""The figure path of a moved level, through the engine's own `Figures` and `Outbox`.

20,000 SKUs x 11 locations of levels (the engine bench's configuration: a per-store kiosk
channel and a web channel pooled over the warehouse and three stores), their figures published
once; then batches of 2,000 moved store levels, each level's on-hand moved by one, and the
batch's figures computed and published (`Outbox.publish(Figures.moved(...))`), as the engine
does after each commit. The moved set is cleared every 20 batches, as a flush of the desired
side would. Prints the CPU time per moved level, median of the rounds.

To compare two trees, run it in each, alternately (this host swings by ±20 % within minutes):

    python bench/figure_path.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from bench.common import machine
from bench.engine import config
from syncd.figures import Figures
from syncd.ledger import Ledger
from syncd.metrics import Metrics
from syncd.model import Level
from syncd.outbox import Outbox

BATCH = 2000


def one_round(skus: int, batches: int, seed: int) -> float:
    """µs of CPU per moved level."""
    rnd = random.Random(seed)
    cfg = config()
    ledger = Ledger(cfg)
    keys = [(f"SKU-{i:06d}", loc) for i in range(skus) for loc in cfg.locations]
    rnd.shuffle(keys)  # allocated out of order, as a start loading rows
    for key in keys:
        ledger.levels[key] = Level(on_hand=rnd.randint(0, 50))
    figures = Figures(ledger)
    outbox = Outbox(Metrics(CollectorRegistry()))
    outbox.publish(figures.moved({key: ledger.levels[key] for key in keys}, 1), 1)
    outbox.moved.clear()
    gc.collect()
    gc.freeze()  # as the daemon freezes its loaded state (`syncd.tuning`)
    stores = [k for k in keys if k[1].startswith("store")]
    moved = [{key: ledger.levels[key] for key in rnd.sample(stores, BATCH)}
             for _ in range(batches)]
    started = time.thread_time()
    for i, batch in enumerate(moved):
        for key in batch:
            ledger.levels[key].on_hand += 1 if i % 2 == 0 else -1
        outbox.publish(figures.moved(batch, 1), 1)
        if i % 20 == 19:
            outbox.moved.clear()
    elapsed = time.thread_time() - started
    gc.unfreeze()
    return elapsed / (batches * BATCH) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skus", type=int, default=20_000)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(machine())
    runs = [one_round(args.skus, args.batches, seed) for seed in range(args.rounds)]
    print(f"figure path: {statistics.median(runs):.2f} µs of CPU per moved level "
          f"({', '.join(f'{r:.2f}' for r in runs)})")


if __name__ == "__main__":
    main()
