"""Can the engine hide its SQLite work behind its Python work: in a thread, in another process?

aiosqlite runs SQLite in a thread of its own, so one could overlap a batch's database work (the
ledger insert and its commit) with the event loop's Python work (the next batch's rules and
figures) instead of awaiting one and then doing the other. This measures what that overlap can
give before building it: per batch of 1,972 ledger rows (34 blocks of 58: about the engine's
batch of 2,000),

- *database*: the rows inserted as the engine did (`INSERT` of 58-row `VALUES` blocks through
  `executemany`, in one transaction, WAL, `synchronous=NORMAL`) and committed;
- *Python*: 24,000 reads at random keys of a 200,000-entry dict (the memory-bound profile of the
  engine's per-event path: `BENCHMARKS.md`, "Where the time goes");
- *one after the other*: both, in turn, in one thread (the engine now);
- *thread*: the database work submitted to a worker thread (as aiosqlite does), the Python
  work done meanwhile, then the wait for the worker;
- *process*: the rows sent through a pipe to a writer process that owns its own connection
  (pickled by the sender), the Python work done meanwhile, then the wait for the writer's answer:
  one batch in flight, as a pipelined engine would commit one batch while applying the next.
  Also reported: the sender's CPU per batch in that mode (the Python work plus the hand-over).

If both halves ran at once, an overlap would cost max(database, Python). The sqlite3 module
releases the GIL only inside SQLite's own calls (one `sqlite3_step` per statement); binding
parameters and building rows need it. With 58-row blocks that is 34 hand-overs of the GIL a
batch, and a thread that waits for the GIL gets it only after the switch interval (5 ms by
default): the thread gives nothing. With `--block 1000` a batch is two statements, and with
`--switch 0.001` the thread gets the GIL back sooner: the engine's settings since its ledger
claim runs beside the batch before (`syncd.tuning`, `repository.submit_claim`). A process has
its own GIL but costs the hand-over.

    python bench/db_overlap.py [--batches 20] [--rounds 5] [--block 58] [--switch 0.005]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import pickle
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine

ROWS = 2000  # a batch
COLS = 17
READS = 24_000
ONE = "(" + ", ".join("?" * COLS) + ")"


def insert(block: int) -> str:
    """The insert of `block` rows in one multi-row VALUES statement."""
    return (f"INSERT INTO events ({', '.join(f'c{i}' for i in range(COLS))}) "
            f"VALUES {', '.join([ONE] * block)} "
            "ON CONFLICT (c0, c1) DO NOTHING")


def open_db(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    cols = ", ".join(f"c{i} {'INTEGER' if i % 3 == 2 else 'TEXT'}" for i in range(COLS))
    con.execute(f"CREATE TABLE events (id INTEGER PRIMARY KEY, {cols}, UNIQUE (c0, c1))")
    return con


def batches(n: int, seed: int, block: int) -> list[list[tuple[object, ...]]]:
    rnd = random.Random(seed)
    return [[tuple(f"{seed}-{b}-{i}" if c == 1 else (rnd.randrange(10**9) if c % 3 == 2
                                                      else f"v{rnd.randrange(20000):06d}")
                   for c in range(COLS)) for i in range(ROWS - ROWS % block)]
            for b in range(n)]


def write(con: sqlite3.Connection, rows: list[tuple[object, ...]], block: int) -> None:
    con.execute("BEGIN")
    con.executemany(insert(block), [tuple(chain.from_iterable(rows[i : i + block]))
                                    for i in range(0, len(rows), block)])
    con.execute("COMMIT")


def writer(pipe: Connection) -> None:
    """The writer process: `("open", path, block)`, then batches of rows (each answered with
    its row count once committed), then None."""
    con: sqlite3.Connection | None = None
    block = 1
    while (msg := pipe.recv()) is not None:
        if isinstance(msg, tuple):
            if con is not None:
                con.close()
            con = open_db(Path(msg[1]))
            block = msg[2]
            pipe.send(0)
            continue
        assert con is not None
        write(con, msg, block)
        pipe.send(len(msg))
    if con is not None:
        con.close()


def reader(size: int) -> Callable[[random.Random], int]:
    table = {f"SKU-{i:06d}-{j}": i for i in range(size // 10) for j in range(10)}
    keys = list(table)

    def read(rnd: random.Random) -> int:
        get, total = table.get, 0
        for _ in range(READS):
            total += get(keys[rnd.randrange(len(keys))], 0)
        return total

    return read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=58,
                    help="rows per VALUES statement (58: 999 parameters / 17 columns)")
    ap.add_argument("--switch", type=float, default=sys.getswitchinterval(),
                    help="the GIL's switch interval, seconds")
    args = ap.parse_args()
    block = args.block
    sys.setswitchinterval(args.switch)
    print(machine())
    print(f"blocks of {block} rows ({ROWS // block} statements a batch), "
          f"switch interval {args.switch * 1e3:g} ms")
    read = reader(200_000)
    rnd = random.Random(1)
    names = ["database", "python", "serial", "thread", "process"]
    ms: dict[str, list[float]] = {k: [] for k in names}
    sender_cpu: list[float] = []
    python_cpu: list[float] = []
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=writer, args=(theirs,), daemon=True)
    proc.start()
    with tempfile.TemporaryDirectory() as d, ThreadPoolExecutor(1) as worker:
        for r in range(args.rounds):
            work = batches(len(names) * args.batches, seed=r, block=block)
            order = list(names)
            rnd.shuffle(order)  # no measure always runs first (a cold cache, a warm one)
            for i, name in enumerate(order):
                rows = work[i :: len(names)]
                path = Path(d) / f"overlap-{r}-{name}.db"  # each on a table as large
                con = open_db(path)
                if name == "process":
                    con.close()
                    path.unlink()
                    ours.send(("open", str(path), block))
                    ours.recv()
                t0, c0 = time.perf_counter(), time.thread_time()
                for b in rows:
                    if name == "database":
                        write(con, b, block)
                    elif name == "python":
                        read(rnd)
                    elif name == "serial":
                        write(con, b, block)
                        read(rnd)
                    elif name == "thread":
                        fut = worker.submit(write, con, b, block)
                        read(rnd)
                        fut.result()
                    else:
                        ours.send(b)
                        read(rnd)
                        ours.recv()
                ms[name].append((time.perf_counter() - t0) / len(rows) * 1e3)
                if name == "process":
                    sender_cpu.append((time.thread_time() - c0) / len(rows) * 1e3)
                elif name == "python":
                    python_cpu.append((time.thread_time() - c0) / len(rows) * 1e3)
                else:
                    con.close()
    ours.send(None)
    proc.join()
    med = {k: statistics.median(v) for k, v in ms.items()}
    for k, v in ms.items():
        print(f"{k:9s} median {med[k]:6.2f} ms a batch   ({', '.join(f'{x:.2f}' for x in v)})")
    cpu = statistics.median(sender_cpu)
    sample = batches(1, seed=-1, block=block)[0]
    pickling = []
    for _ in range(20):
        t0 = time.thread_time()
        pickle.dumps(sample, pickle.HIGHEST_PROTOCOL)
        pickling.append((time.thread_time() - t0) * 1e3)
    pick = statistics.median(pickling)
    per_batch = len(sample)
    print(f"sender's CPU a batch in the process mode: {cpu:.2f} ms "
          f"({', '.join(f'{x:.2f}' for x in sender_cpu)}), of which pickling the batch "
          f"{pick:.2f} ms ({pick / per_batch * 1e3:.2f} µs a row, timed alone); the rest, "
          f"{cpu - pick - statistics.median(python_cpu):.2f} ms above the CPU of the Python work "
          "timed alone, is that work slowed while the writer runs (and the pipe's system calls)")
    apart = med["database"] + med["python"]
    ideal = max(med["database"], med["python"])
    print(f"the two apart {apart:.2f} ms a batch (in turn minus apart: "
          f"{med['serial'] - apart:+.2f}, cache interference); a real overlap would reach "
          f"{ideal:.2f} (the larger); thread {med['thread']:.2f}, process {med['process']:.2f}")

if __name__ == "__main__":
    main()
