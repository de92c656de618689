"""The broker side of the POS: a mosquitto restart in the middle of a stream, and a flood of events
far beyond what the daemon ingests per second, against a real `syncd run`.

A till message is *acknowledged* when the broker answered its PUBLISH. The till keeps a persistent
session and, when its connection drops, publishes what was not answered again (same `event_id`).
Nothing acknowledged may be missing from the ledger, nothing may be applied twice, and the
daemon's memory must stay bounded while the broker holds the backlog (back-pressure: at most
`RECEIVE_MAXIMUM` messages in flight, bounded queues behind them).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiomqtt
import pytest

from tests.reliability.helpers import (
    DaemonProc,
    hwm_kib,
    iso,
    levels_now,
    now_us,
    record,
    retail_config,
    soak,
    sqlite_rows,
    until,
)
from tests.servers import MosquittoServer, free_port

FLOOD = 60_000 if soak() else 12_000
BACKLOG = 12_000


class ResilientTill:
    """Publishes each message until the broker acknowledges it, reconnecting as needed."""

    def __init__(self, broker: MosquittoServer, ident: str) -> None:
        host, port = broker.url.removeprefix("mqtt://").split(":")
        self.host, self.port, self.ident = host, int(port), ident
        self.acked: set[str] = set()
        self.reconnects = 0

    async def send(self, messages: list[dict[str, object]], pause: float = 0.0) -> None:
        i = 0
        while i < len(messages):
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=self.ident,
                                          clean_session=False, timeout=5) as c:
                    while i < len(messages):
                        m = messages[i]
                        await c.publish("syncd/pos/paris/events", json.dumps(m), qos=1)
                        self.acked.add(str(m["event_id"]))
                        i += 1
                        if pause:
                            await asyncio.sleep(pause)
            except aiomqtt.MqttError:
                self.reconnects += 1
                await asyncio.sleep(0.2)


def sales(prefix: str, n: int, sku: str = "B1") -> list[dict[str, object]]:
    return [{"event_id": f"{prefix}-{i:06d}", "type": "sale", "sku": sku, "qty": 1,
             "occurred_at": iso(now_us())} for i in range(n)]


def stored(state: Path, prefix: str) -> set[str]:
    rows = sqlite_rows(state, "SELECT event_id FROM events WHERE connector = 'pos' AND "
                              "event_id LIKE ?", prefix + "-%")
    return {r[0] for r in rows}


async def start(tmp_path: Path, broker: MosquittoServer,
                client_id: str = "syncd-rel") -> tuple[DaemonProc, Path]:
    port = free_port()
    state = tmp_path / "state"
    config = tmp_path / "syncd.toml"
    config.write_text(retail_config(state, port, mqtt_url=broker.url, client_id=client_id))
    d = DaemonProc(config, port)
    await d.wait_ready()
    return d, state


async def test_broker_restart_mid_stream_loses_no_acknowledged_event(
    tmp_path: Path, mosquitto: MosquittoServer, request: pytest.FixtureRequest
) -> None:
    d, state = await start(tmp_path, mosquitto)
    try:
        till = ResilientTill(mosquitto, "till-restart")
        msgs = sales("R", 2000)
        sender = asyncio.create_task(till.send(msgs, pause=0.0005))
        await until(lambda: len(till.acked) >= 600, "a third of the stream", within=60)
        restart_at = time.monotonic()
        await asyncio.to_thread(mosquitto.restart)
        await asyncio.wait_for(sender, 120)
        await until(lambda: till.acked <= stored(state, "R"), "every acknowledged sale stored",
                    within=60)
        recovered = time.monotonic() - restart_at
        (applied,) = sqlite_rows(state, "SELECT count(*) FROM events WHERE event_id LIKE 'R-%' "
                                        "AND outcome = 'applied'")[0]
        on_hand = (await levels_now(state))[("B1", "paris")]
    finally:
        assert await d.stop() == 0, d.tail()
    record("broker_restart", f"python3 -m pytest -q '{request.node.nodeid}'",
           published=len(msgs), acknowledged=len(till.acked), till_reconnects=till.reconnects,
           lost=len(till.acked - stored(state, "R")), applied=applied,
           all_stored_after_s=round(recovered, 2))
    assert len(till.acked) == len(msgs)
    assert applied == len(msgs)  # each once
    assert on_hand == -len(msgs)  # no count: on-hand starts at 0


async def test_a_flood_beyond_the_ingest_rate_keeps_memory_bounded(
    tmp_path: Path, mosquitto: MosquittoServer, request: pytest.FixtureRequest
) -> None:
    d, state = await start(tmp_path, mosquitto)
    try:
        baseline = d.rss_kib()
        # the flood waits at the broker while the daemon is busy: four tills at full speed
        tills = [ResilientTill(mosquitto, f"till-flood-{k}") for k in range(4)]
        per = FLOOD // len(tills)
        started = time.monotonic()
        await asyncio.gather(*(t.send(sales(f"F{k}", per, sku=f"F{k}"))
                               for k, t in enumerate(tills)))
        published_s = time.monotonic() - started
        acked = set().union(*(t.acked for t in tills))
        peak = baseline
        deadline = time.monotonic() + 120
        while True:
            peak = max(peak, d.rss_kib())
            n = int(sqlite_rows(state, "SELECT count(*) FROM events WHERE event_id LIKE 'F%'")
                    [0][0])
            if n >= FLOOD:
                break
            assert time.monotonic() < deadline, f"{n} of {FLOOD} stored"
            await asyncio.sleep(0.05)
        ingest_s = time.monotonic() - started
        peak = max(peak, hwm_kib(d.pid))
        stored_ids = set()
        for k in range(len(tills)):
            stored_ids |= stored(state, f"F{k}")
        levels = {sku: n for (sku, _), n in (await levels_now(state)).items()
                  if sku.startswith("F")}
    finally:
        assert await d.stop() == 0, d.tail()
    record("flood", f"python3 -m pytest -q '{request.node.nodeid}'",
           events=FLOOD, publishers=len(tills), publish_s=round(published_s, 1),
           stored_after_s=round(ingest_s, 1), rss_kib_baseline=baseline, peak_rss_kib=peak,
           peak_growth_kib=peak - baseline, lost=len(acked - stored_ids))
    assert acked <= stored_ids
    assert levels == {f"F{k}": -per for k in range(len(tills))}  # each sale once
    assert peak - baseline < 150_000, (baseline, peak)


async def _backlog_peak(tmp_path: Path, broker: MosquittoServer, n: int) -> tuple[int, int]:
    """Peak RSS of a daemon that starts with `n` single-event messages waiting for its session
    at the broker, and its RSS when idle before the backlog was published (baseline)."""
    client_id = f"syncd-backlog-{n}"
    d, state = await start(tmp_path, broker, client_id)  # creates the persistent session
    baseline = d.rss_kib()
    assert await d.stop() == 0
    tills = [ResilientTill(broker, f"till-backlog-{n}-{k}") for k in range(4)]
    await asyncio.gather(*(t.send(sales(f"G{k}", n // 4, sku=f"G{k}"))
                           for k, t in enumerate(tills)))
    d = DaemonProc(tmp_path / "syncd.toml", d.port)
    try:
        await d.wait_ready()
        await until(lambda: int(sqlite_rows(state, "SELECT count(*) FROM events WHERE "
                                                   "event_id LIKE 'G%'")[0][0]) >= n,
                    "the backlog stored", within=120)
        peak = hwm_kib(d.pid)
    finally:
        assert await d.stop() == 0, d.tail()
    return baseline, peak


async def test_memory_under_a_backlog_does_not_grow_with_the_backlog(
    tmp_path: Path, mosquitto: MosquittoServer, request: pytest.FixtureRequest
) -> None:
    small_dir, big_dir = tmp_path / "small", tmp_path / "big"
    small_dir.mkdir()
    big_dir.mkdir()
    small = await _backlog_peak(small_dir, mosquitto, 1_000)
    big = await _backlog_peak(big_dir, mosquitto, BACKLOG)
    growth_small, growth_big = small[1] - small[0], big[1] - big[0]
    record("backlog_memory", f"python3 -m pytest -q '{request.node.nodeid}'",
           backlog_small=1_000, backlog_big=BACKLOG, small_peak_growth_kib=growth_small,
           big_peak_growth_kib=growth_big)
    # bounded back-pressure: at most ~1000 messages in the daemon whatever the backlog
    assert growth_big - growth_small < 15_000, (growth_small, growth_big)
