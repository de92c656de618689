"""A child process for the crash test: feeds the engine and prints what it acknowledged.

Usage: python -m tests.crash_child DB_URL — every line on stdout is `ACK id,id,...`, written
only from the engine's after-commit callback. The parent SIGKILLs this process at random."""

from __future__ import annotations

import asyncio
import sys

from connectors.base import Inbound
from syncd.model import EventType
from tests.core import T0, ev, running_engine


def workload() -> list[object]:
    counts = [ev(EventType.COUNT, sku=f"S{k}", qty=10_000, at=T0, event_id=f"count-{k}")
              for k in range(7)]
    sales = [ev(EventType.SALE, sku=f"S{i % 7}", qty=1, at=T0 + i + 1, event_id=f"sale-{i}")
             for i in range(3000)]
    return [*counts, *sales]


async def main(url: str) -> None:
    async with running_engine(url) as engine:
        events = workload()
        for i in range(0, len(events), 50):
            chunk = events[i : i + 50]
            ids = ",".join(e.event_id for e in chunk)  # type: ignore[attr-defined]

            def ack(ids: str = ids) -> None:
                sys.stdout.write(f"ACK {ids}\n")
                sys.stdout.flush()

            await engine.submit(Inbound(chunk, on_commit=ack))  # type: ignore[arg-type]
        await engine.queue.join()
        sys.stdout.write("DONE\n")
        sys.stdout.flush()
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
