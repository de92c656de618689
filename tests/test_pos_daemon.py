"""The whole daemon with a real mosquitto: POS sales survive SIGKILLs of `syncd run`, and SIGTERM
leaves nothing in the outbox of a healthy channel."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

import aiomqtt

from tests.servers import MosquittoServer, free_port
from tests.test_daemon import DaemonProcess

SALES = 3000


def pos_config(tmp_path: Path, broker: MosquittoServer, port: int) -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
http_listen = "127.0.0.1:{port}"
api_token = "env:SYNCD_API_TOKEN"

[locations.paris]
kind = "store"
authority = "pos"
pickup = true

[connectors.pos]
type = "mqtt_pos"
url = "{broker.url}"
client_id = "syncd-test-{port}"

[channels.kiosks]
connector = "pos"
sells_from = ["paris"]
""")
    return path


async def publish(broker: MosquittoServer, messages: list[dict[str, object]]) -> None:
    """A POS with a persistent session: every QoS 1 message reaches the broker."""
    host, port = broker.url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port), identifier="till-1", clean_session=False) as c:
        for m in messages:
            await c.publish("syncd/pos/paris/events", json.dumps(m), qos=1)


def events(start: int, stop: int) -> list[dict[str, object]]:
    return [{"event_id": f"T1-{i:06d}", "seq": i, "source": "T1", "type": "sale",
             "sku": "SKU-1", "qty": 1, "occurred_at": f"2026-11-23T10:{i // 60 % 60:02d}:"
             f"{i % 60:02d}.{i:06d}"[:26] + "Z"} for i in range(start, stop)]


def on_hand(d: DaemonProcess) -> int:
    stock = d.get("/v1/stock/SKU-1")[1]
    return int(stock["locations"].get("paris", {}).get("on_hand", 0))


def test_sigkilled_daemon_loses_no_pos_sale_and_doubles_none(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    port = free_port()
    config = pos_config(tmp_path, mosquitto, port)
    count = {"event_id": "C-0", "seq": 0, "source": "T0", "type": "count", "sku": "SKU-1",
             "qty": 10_000, "occurred_at": "2026-11-23T09:00:00Z"}
    batches = [events(1 + k * 1000, 1 + (k + 1) * 1000) for k in range(SALES // 1000)]
    kills = 0
    for k, batch in enumerate(batches):
        d = DaemonProcess(config, {}, port)
        d.wait_ready()
        asyncio.run(publish(mosquitto, ([count] if k == 0 else []) + batch))
        if k < 2:  # SIGKILL mid-stream, twice
            time.sleep(0.05 * (k + 1))
            assert d.stop(signal.SIGKILL) == -signal.SIGKILL
            kills += 1
        else:
            deadline = time.monotonic() + 60
            while on_hand(d) != 10_000 - SALES:
                assert time.monotonic() < deadline, (on_hand(d), d.output()[-2000:])
                time.sleep(0.1)
            assert d.stop() == 0
    assert kills == 2
    db = sqlite3.connect(tmp_path / "state" / "syncd.db")
    (applied,) = db.execute("SELECT count(*) FROM events WHERE type = 'sale' AND "
                            "outcome = 'applied'").fetchone()
    (level,) = db.execute("SELECT on_hand FROM levels WHERE sku = 'SKU-1'").fetchone()
    assert applied == SALES
    assert level == 10_000 - SALES


def test_sigterm_flushes_the_outbox_of_a_healthy_channel(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    port = free_port()
    config = pos_config(tmp_path, mosquitto, port)
    d = DaemonProcess(config, {}, port)
    d.wait_ready()
    msgs = [{"event_id": f"C-{i}", "type": "count", "sku": f"SKU-{i}", "qty": i,
             "occurred_at": "2026-11-23T09:00:00Z"} for i in range(200)]
    asyncio.run(publish(mosquitto, [{"events": msgs}]))  # type: ignore[dict-item]
    deadline = time.monotonic() + 30
    while d.get("/v1/stock/SKU-199")[1]["locations"].get("paris", {}).get("on_hand") != 199:
        assert time.monotonic() < deadline, d.output()[-2000:]
        time.sleep(0.05)
    assert d.stop(signal.SIGTERM) == 0
    records = [json.loads(line) for line in d.output().splitlines()]
    assert any(r.get("connector") == "pos" for r in records)  # connector-tagged log lines
    db = sqlite3.connect(tmp_path / "state" / "syncd.db")
    rows = db.execute("SELECT count(*), sum(pushed_version = version) FROM outbox "
                      "WHERE channel = 'kiosks'").fetchone()
    assert rows == (200, 200)  # every figure was pushed before the exit
