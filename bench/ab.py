"""Engine throughput of this tree against an earlier commit, in alternated pairs.

This host is shared and swings by ±20 % within minutes, so two figures taken minutes apart say
little about a change of 10 %. This runs `bench/engine.py`'s trading day (`--runs 1
--steady 0`: the stock loaded first, then `--events` events, to the last acknowledgement and
until `stop()`) once in a worktree of `--before` and once in this tree, `--pairs` times, the
first of each pair alternating, and prints the medians and each pair's ratio, and the seconds
`stop()` took (the events over the rate until `stop()`, less the events over the rate to the last
acknowledgement): a change to the stop is lost in the noise of the whole day. A day of 1,000,000
events is the engine bench's longer day (`--steady`).

    python bench/ab.py --before 7bb6020 [--pairs 5] [--events 200000]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, machine

_RUN = re.compile(r"trading day ([\d,]+) events/s \(([\d,]+) with the writes at stop; "
                  r"event loop's thread ([\d.]+) µs")


def day(tree: Path, events: int) -> tuple[float, float, float]:
    """(to the last acknowledgement, until `stop()`, event-loop CPU µs per event)."""
    # not checked: before 7bb6020's successor, `--steady 0` failed after printing its run line
    done = subprocess.run(
        [sys.executable, "bench/engine.py", "--events", str(events), "--runs", "1",
         "--steady", "0"], cwd=tree, capture_output=True, text=True, check=False)
    found = _RUN.search(done.stdout)
    if found is None:
        raise RuntimeError(f"no trading-day figure from {tree}:\n{done.stdout}{done.stderr}")
    acked, stopped, cpu = found.groups()
    return float(acked.replace(",", "")), float(stopped.replace(",", "")), float(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the commit to compare with")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as d:
        before = Path(d) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before],
                       cwd=ROOT, check=True, capture_output=True)
        try:
            runs: dict[str, list[tuple[float, float, float]]] = {"before": [], "after": []}
            for pair in range(args.pairs):
                order = [("before", before), ("after", ROOT)]
                if pair % 2:
                    order.reverse()
                for name, tree in order:
                    runs[name].append(day(tree, args.events))
                b, a = runs["before"][-1], runs["after"][-1]
                print(f"pair {pair + 1}: until stop() {b[1]:,.0f} -> {a[1]:,.0f} "
                      f"({a[1] / b[1] - 1:+.0%}), to the last acknowledgement {b[0]:,.0f} -> "
                      f"{a[0]:,.0f}, event loop {b[2]:.1f} -> {a[2]:.1f} µs, stop() "
                      f"{_stop(b, args.events):.2f} -> {_stop(a, args.events):.2f} s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT,
                           check=False, capture_output=True)
    for i, what in ((1, "until stop()"), (0, "to the last acknowledgement")):
        mb = statistics.median(r[i] for r in runs["before"])
        ma = statistics.median(r[i] for r in runs["after"])
        ratios = [x[i] / y[i] for x, y in zip(runs["after"], runs["before"], strict=True)]
        print(f"{args.events:,} events, {what}: {args.before} {mb:,.0f}, this tree {ma:,.0f} "
              f"events/s (medians of {args.pairs} pairs); median pair ratio "
              f"{statistics.median(ratios):.2f}")
    print(f"event loop CPU per event: {statistics.median(r[2] for r in runs['before']):.1f} -> "
          f"{statistics.median(r[2] for r in runs['after']):.1f} µs")
    stops = {k: [_stop(r, args.events) for r in v] for k, v in runs.items()}
    ratios = [a / b for a, b in zip(stops["after"], stops["before"], strict=True)]
    print(f"stop(): {statistics.median(stops['before']):.2f} -> "
          f"{statistics.median(stops['after']):.2f} s (medians); median pair ratio "
          f"{statistics.median(ratios):.2f}")


def _stop(run: tuple[float, float, float], events: int) -> float:
    """Seconds `stop()` took in a run: until it returned, less to the last acknowledgement."""
    return events / run[1] - events / run[0]


if __name__ == "__main__":
    main()
