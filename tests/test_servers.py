"""Smoke tests for tests/servers.py: each real server starts and does its job."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiomqtt
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp import web

from tests.servers import (
    MosquittoServer,
    PostgresServer,
    PrometheusServer,
    free_port,
)

# ------------------------------------------------------------------------------ PostgreSQL


async def test_postgres_select_1(postgres: PostgresServer) -> None:
    assert postgres.url_asyncpg == f"postgresql+asyncpg://syncd@127.0.0.1:{postgres.port}/syncd"
    conn = await asyncpg.connect(postgres.dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_user") == "syncd"
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
        assert await conn.fetchval("SHOW fsync") == "off"
    finally:
        await conn.close()


async def test_postgres_create_database(postgres: PostgresServer) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    assert url == f"postgresql+asyncpg://syncd@127.0.0.1:{postgres.port}/{name}"
    conn = await asyncpg.connect(postgres.dsn_for(name))
    try:
        assert await conn.fetchval("SELECT current_database()") == name
        await conn.execute("CREATE TABLE t (sku text PRIMARY KEY, qty int NOT NULL)")
        await conn.execute("INSERT INTO t VALUES ('SKU-é', 3)")
        assert await conn.fetchval("SELECT qty FROM t WHERE sku = 'SKU-é'") == 3
    finally:
        await conn.close()
    # A fresh database is empty, even next to one with tables.
    other = f"t_{uuid.uuid4().hex[:12]}"
    postgres.create_database(other)
    conn = await asyncpg.connect(postgres.dsn_for(other))
    try:
        assert await conn.fetchval("SELECT to_regclass('public.t')") is None
    finally:
        await conn.close()
    postgres.drop_database(name)
    postgres.drop_database(other)
    with pytest.raises(ValueError, match="identifier"):
        postgres.create_database("bad; DROP")


# ------------------------------------------------------------------------------ mosquitto


async def test_mosquitto_pub_sub_round_trip(mosquitto: MosquittoServer) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    topic = f"syncd-test/{uuid.uuid4().hex}/stock"
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b'{"sku": "A", "qty": 1}', qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.topic.matches(topic)
                assert message.payload == b'{"sku": "A", "qty": 1}'
                break


async def _queue_for_offline_session(server: MosquittoServer, ident: str, topic: str) -> None:
    """Create a persistent session subscribed to ``topic``, go offline, publish QoS1 to it."""
    async with aiomqtt.Client(
        server.host, server.port, identifier=ident, clean_session=False
    ) as sub:
        await sub.subscribe(topic, qos=1)
    async with aiomqtt.Client(server.host, server.port) as pub:
        for i in range(3):
            await pub.publish(topic, f"msg-{i}".encode(), qos=1)


async def _receive(server: MosquittoServer, ident: str, n: int) -> list[bytes]:
    got: list[bytes] = []
    async with aiomqtt.Client(
        server.host, server.port, identifier=ident, clean_session=False
    ) as sub:
        async with asyncio.timeout(5):
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                got.append(message.payload)
                if len(got) == n:
                    break
    return got


async def test_mosquitto_persistent_session_survives_restart(mosquitto: MosquittoServer) -> None:
    ident = f"syncd-test-{uuid.uuid4().hex[:8]}"
    topic = f"syncd-test/{ident}/events"
    await _queue_for_offline_session(mosquitto, ident, topic)
    port, pid = mosquitto.port, mosquitto.pid
    await asyncio.to_thread(mosquitto.restart)
    assert mosquitto.port == port
    assert mosquitto.pid != pid
    # No re-subscribe: the session and its queue were restored from persistence.
    assert await _receive(mosquitto, ident, 3) == [b"msg-0", b"msg-1", b"msg-2"]


async def test_mosquitto_kill_keeps_autosaved_queue(mosquitto: MosquittoServer) -> None:
    ident = f"syncd-test-{uuid.uuid4().hex[:8]}"
    topic = f"syncd-test/{ident}/events"
    await _queue_for_offline_session(mosquitto, ident, topic)
    await asyncio.sleep(2.2)  # autosave_interval is 1 s
    mosquitto.kill()
    assert not mosquitto.is_running()
    await asyncio.to_thread(mosquitto.restart)
    assert await _receive(mosquitto, ident, 3) == [b"msg-0", b"msg-1", b"msg-2"]


# ------------------------------------------------------------------------------ Prometheus


async def _metrics_app(value: int) -> tuple[web.AppRunner, str]:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            text=f"# TYPE demo_metric gauge\ndemo_metric {value}\n",
            content_type="text/plain",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"127.0.0.1:{port}"


async def _wait_value(prom: PrometheusServer, expr: str, want: float) -> None:
    deadline = time.monotonic() + 20
    values: list[float] = []
    while time.monotonic() < deadline:
        values = await asyncio.to_thread(prom.query_values, expr)
        if values == [want]:
            return
        await asyncio.sleep(0.1)
    health = await asyncio.to_thread(prom.targets_health)
    pytest.fail(f"{expr} = {values}, want [{want}]; targets: {health}")


async def test_prometheus_scrapes_target(prometheus_bin: Path) -> None:
    runner, target = await _metrics_app(42)
    try:
        prom = await asyncio.to_thread(
            PrometheusServer.start, [target], scrape_interval="1s", binary=prometheus_bin
        )
        try:
            await _wait_value(prom, "demo_metric", 42)
            result = await asyncio.to_thread(prom.query, "demo_metric")
            assert result[0]["metric"]["job"] == "syncd"
            assert result[0]["metric"]["instance"] == target
        finally:
            await asyncio.to_thread(prom.stop)
    finally:
        await runner.cleanup()
