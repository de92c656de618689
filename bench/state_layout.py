"""State layout: what a figure's level reads cost as the ledger keeps them, against one record per
SKU (the layout BENCHMARKS.md "Where the time goes" names as the next step; a prototype measure,
not the engine).

20,000 SKUs x 11 locations of `Level` objects, allocated in a shuffled order with other objects
between them (as a start loading rows while the daemon builds its other state), then 200,000
moved levels at random store keys, each read the way `Figures.moved` reads them for the bench's
configuration: the level itself (the per-store channel), and for the three stores of the pooled
web channel the four levels it sells from.

- *flat*: `dict[(sku, location)] -> Level`, the ledger's layout now;
- *per SKU*: `dict[sku] -> list[Level | None]` indexed by the location's position.

Then the whole figure path of a moved level, the reads and the outbox: each figure (the store's
per-store figure; for the pooled stores also the web figure from its four levels) is compared
with its outbox row and, when it changed, written into the row (version + 1), marked pending
for its channel and marked for the next flush, as `Outbox.publish` does:

- *flat*: the outbox as it was when this was written (before 3a70501, which keys a channel's
  pending dict by the row's whole key), `dict[(channel, sku, location)] -> OutboxRow`, a
  pending dict per channel keyed by `(sku, location)`, a set of moved keys;
- *per SKU*: one record per SKU, its levels and its outbox rows in lists by position, pending and
  moved kept per SKU (a dict per channel and a set keyed by the SKU string).

Both layouts hold the same `Level` and `OutboxRow` objects; the results are checked equal.

    python bench/state_layout.py [--skus 20000] [--reads 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine
from syncd.model import Level
from syncd.store.repository import OutboxRow

LOCS = ["dc"] + [f"store-{i:02d}" for i in range(10)]
POOLED = ("dc", "store-00", "store-01", "store-02")  # the web channel's sells_from
POOLED_STORES = frozenset(POOLED[1:])


Flat = dict[tuple[str, str], Level]
PerSku = dict[str, list[Level | None]]


def build(skus: int) -> tuple[Flat, PerSku, list[list[int]]]:
    """Both layouts over the same `Level` objects, and the objects allocated between them."""
    rnd = random.Random(0)
    index = {loc: i for i, loc in enumerate(LOCS)}
    pairs = [(f"SKU-{s:06d}", loc) for s in range(skus) for loc in LOCS]
    rnd.shuffle(pairs)
    flat: Flat = {}
    per: PerSku = {}
    scatter: list[list[int]] = []
    for sku, loc in pairs:
        lvl = Level(on_hand=rnd.randint(0, 60))
        flat[(sku, loc)] = lvl
        per.setdefault(sku, [None] * len(LOCS))[index[loc]] = lvl
        scatter.append([0] * rnd.randint(1, 8))
    return flat, per, scatter


def read_flat(flat: Flat, keys: list[tuple[str, str]]) -> int:
    total = 0
    for sku, loc in keys:
        lvl = flat.get((sku, loc))
        total += lvl.on_hand if lvl is not None else 0
        if loc in POOLED_STORES:
            for other in POOLED:
                o = flat.get((sku, other))
                total += o.on_hand if o is not None else 0
    return total


def read_per_sku(per: PerSku, keys: list[tuple[str, str]]) -> int:
    index = {loc: i for i, loc in enumerate(LOCS)}
    pooled = [index[loc] for loc in POOLED]
    total = 0
    for sku, loc in keys:
        row = per.get(sku)
        if row is None:
            continue
        lvl = row[index[loc]]
        total += lvl.on_hand if lvl is not None else 0
        if loc in POOLED_STORES:
            for i in pooled:
                o = row[i]
                total += o.on_hand if o is not None else 0
    return total


SLOTS = ["web"] + [f"kiosk@{loc}" for loc in LOCS[1:]]  # a SKU's figures: one row each
Rows = dict[tuple[str, str, str], OutboxRow]
# a SKU's levels (by location), its outbox rows, and per row: pending, moved since the flush
Record = tuple[list[Level | None], list[OutboxRow], list[bool], list[bool]]
Marks = tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]  # pending, moved
FlatMarks = tuple[dict[str, dict[tuple[str, str], None]], set[tuple[str, str, str]]]
SkuMarks = tuple[dict[str, dict[str, None]], set[str]]


def build_rows(flat: Flat, skus: int) -> tuple[Rows, dict[str, Record]]:
    """Outbox rows for every figure, in both layouts, over the levels of `build`."""
    rnd = random.Random(2)
    names = [f"SKU-{s:06d}" for s in range(skus)]
    rnd.shuffle(names)
    rows: Rows = {}
    records: dict[str, Record] = {}
    for sku in names:
        mine = [OutboxRow(0, 1, 0) for _ in SLOTS]
        rows[("web", sku, "")] = mine[0]
        for i, loc in enumerate(LOCS[1:]):
            rows[("kiosk", sku, loc)] = mine[1 + i]
        records[sku] = ([flat.get((sku, loc)) for loc in LOCS], mine,
                        [False] * len(SLOTS), [False] * len(SLOTS))
    return rows, records


def _bump(row: OutboxRow, qty: int) -> bool:
    if row.desired == qty:
        return False
    row.desired = qty
    row.version += 1
    return True


def publish_flat(
    flat: Flat, rows: Rows, keys: list[tuple[str, str]], delta: int
) -> tuple[int, FlatMarks]:
    pending: dict[str, dict[tuple[str, str], None]] = {"web": {}, "kiosk": {}}
    moved: set[tuple[str, str, str]] = set()
    bumps = 0
    for sku, loc in keys:
        lvl = flat.get((sku, loc))
        qty = (lvl.on_hand if lvl is not None else 0) + delta
        key = ("kiosk", sku, loc)
        if _bump(rows[key], qty):
            pending["kiosk"][(sku, loc)] = None
            moved.add(key)
            bumps += 1
        if loc in POOLED_STORES:
            total = delta
            for other in POOLED:
                o = flat.get((sku, other))
                total += o.on_hand if o is not None else 0
            key = ("web", sku, "")
            if _bump(rows[key], total):
                pending["web"][(sku, "")] = None
                moved.add(key)
                bumps += 1
    return bumps, (pending, moved)


def flat_marks(found: FlatMarks) -> Marks:
    pending, moved = found
    return {(ch, *k) for ch, ks in pending.items() for k in ks}, moved


def publish_per_sku(
    records: dict[str, Record], keys: list[tuple[str, str]], delta: int
) -> tuple[int, SkuMarks]:
    """Pending and moved are kept per SKU (a dict per channel and a set keyed by the SKU
    string) and, in the record, per row: the pusher and the flush find a SKU's moved rows by
    its flags (that scan, over the 11 rows of a record, is not timed here; the flat layout's
    flush and pusher lookups are not timed either)."""
    index = {loc: i for i, loc in enumerate(LOCS)}
    pooled = [index[loc] for loc in POOLED]
    pending: dict[str, dict[str, None]] = {"web": {}, "kiosk": {}}
    moved: set[str] = set()
    bumps = 0
    for sku, loc in keys:
        levels, mine, pend, mov = records[sku]
        i = index[loc]
        lvl = levels[i]
        if _bump(mine[i], (lvl.on_hand if lvl is not None else 0) + delta):
            pend[i] = mov[i] = True
            pending["kiosk"][sku] = None
            moved.add(sku)
            bumps += 1
        if loc in POOLED_STORES:
            total = delta
            for j in pooled:
                o = levels[j]
                total += o.on_hand if o is not None else 0
            if _bump(mine[0], total):
                pend[0] = mov[0] = True
                pending["web"][sku] = None
                moved.add(sku)
                bumps += 1
    return bumps, (pending, moved)


def sku_marks(records: dict[str, Record], found: SkuMarks) -> Marks:
    """The per-SKU marks expanded to the flat layout's keys, from each record's flags."""
    pending, moved = found

    def rows_of(skus: Iterable[str], moved_flags: bool, channel: str | None) -> set[
            tuple[str, str, str]]:
        out = set()
        for sku in skus:
            _, _, pend, mov = records[sku]
            for slot, on in enumerate(mov if moved_flags else pend):
                ch = "web" if slot == 0 else "kiosk"
                if on and (channel is None or ch == channel):
                    out.add((ch, sku, "" if slot == 0 else LOCS[slot]))
        return out

    waiting = rows_of(pending["web"], False, "web") | rows_of(pending["kiosk"], False, "kiosk")
    return waiting, rows_of(moved, True, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skus", type=int, default=20_000)
    ap.add_argument("--reads", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    flat, per, _scatter = build(args.skus)
    rows, records = build_rows(flat, args.skus)
    gc.freeze()  # as the daemon freezes its loaded state (`syncd.tuning`)
    rnd = random.Random(1)
    keys = [(f"SKU-{rnd.randrange(args.skus):06d}", rnd.choice(LOCS[1:]))
            for _ in range(args.reads)]
    times: dict[str, list[float]] = {"flat": [], "per SKU": []}
    for round_ in range(args.rounds):  # alternated: each layout goes first every other round
        results: dict[str, int] = {}
        for name in (("flat", "per SKU") if round_ % 2 == 0 else ("per SKU", "flat")):
            t0 = time.perf_counter()
            results[name] = read_flat(flat, keys) if name == "flat" else read_per_sku(per, keys)
            times[name].append(time.perf_counter() - t0)
        if results["flat"] != results["per SKU"]:
            raise SystemExit(f"the layouts disagree: {results}")
    print(machine())
    for name, runs in times.items():
        print(f"{name}: {statistics.median(runs) / args.reads * 1e6:.2f} µs per moved level "
              f"(median of {args.rounds})")
    ratio = statistics.median(times["flat"]) / statistics.median(times["per SKU"])
    print(f"flat / per SKU: {ratio:.2f}")
    pub: dict[str, list[float]] = {"flat": [], "per SKU": []}
    for round_ in range(args.rounds):  # each layout from the same rows, with the same delta
        outcome: dict[str, tuple[int, int, Marks]] = {}
        for name in (("flat", "per SKU") if round_ % 2 == 0 else ("per SKU", "flat")):
            for r in rows.values():
                r.desired, r.version = -1, 1
            for rec in records.values():
                rec[2][:] = rec[3][:] = [False] * len(SLOTS)
            t0 = time.perf_counter()
            if name == "flat":
                bumps, flat_found = publish_flat(flat, rows, keys, round_)
                pub[name].append(time.perf_counter() - t0)
                found = flat_marks(flat_found)
            else:
                bumps, sku_found = publish_per_sku(records, keys, round_)
                pub[name].append(time.perf_counter() - t0)
                found = sku_marks(records, sku_found)
            outcome[name] = (bumps, sum(r.desired * r.version for r in rows.values()), found)
        if outcome["flat"] != outcome["per SKU"]:
            raise SystemExit("the layouts disagree")
    for name, runs in pub.items():
        print(f"{name}: {statistics.median(runs) / args.reads * 1e6:.2f} µs per moved level, "
              f"reads and outbox (median of {args.rounds})")
    ratio = statistics.median(pub["flat"]) / statistics.median(pub["per SKU"])
    print(f"flat / per SKU, reads and outbox: {ratio:.2f}")


if __name__ == "__main__":
    main()
