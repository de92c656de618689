"""The daemon: wires the database, the engine, the connectors, the pushers and the HTTP API.

Lifecycle (arq-style): signal handlers on the loop; `READY=1` once the database and the HTTP
listener are up; `WATCHDOG=1` from a task on the loop only while the engine makes progress;
`STATUS=` with connector health. SIGTERM drains: stop intake, commit what is queued, flush the
pushers within `shutdown_timeout`, persist, exit 0. SIGHUP reloads a valid configuration and keeps
the old one (logged) when the new one is invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.base import Connector, ConnectorContext

from . import tuning
from .api import build_app
from .config import Config, ConfigError, load_config, split_host_port
from .engine import Engine, EngineStopped
from .metrics import Metrics
from .push import Pusher
from .sdnotify import Notifier
from .store import open_engine, upgrade

__all__ = ["Daemon", "secret_values"]

log = logging.getLogger("syncd")


def secret_values(config: Config) -> list[str]:
    """Every resolved secret of a configuration (for the log redactor)."""
    out: list[str] = []

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                out.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                walk(value)

    walk(config.daemon)
    for spec in config.connectors.values():
        walk(spec.settings)
    return out


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        registry: CollectorRegistry | None = None,
        notifier: Notifier | None = None,
        tune: bool = False,
    ) -> None:
        """`tune`: apply `syncd.tuning` (the `syncd run` process; not in-process tests)."""
        self.config = config
        self.tune = tune
        self.config_path = config_path
        self.metrics = Metrics(registry)
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.db: AsyncEngine | None = None
        self.engine: Engine | None = None
        self.connectors: dict[str, Connector] = {}
        self.pushers: dict[str, Pusher] = {}
        self.connected_once: dict[str, bool] = {}
        self.http: aiohttp.ClientSession | None = None
        self.bound: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None
        self._intake: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._accepting = False

    # -- helpers for the API ---------------------------------------------------------------------

    def api_token(self) -> str | None:
        token = self.config.daemon.api_token
        return token.get_secret_value() if token is not None else None

    def require_engine(self) -> Engine:
        if self.engine is None or not self._accepting:
            raise EngineStopped("not accepting requests")
        return self.engine

    def readiness(self) -> dict[str, Any]:
        return {
            "database": bool(self.engine is not None and self.engine.db_ok),
            "connectors": dict(self.connected_once),
        }

    def status_summary(self) -> dict[str, Any]:
        engine = self.require_engine()
        return {
            "ready": self.readiness(),
            "connectors": {n: c.connected for n, c in self.connectors.items()},
            "channels": {
                ch: {"pending": engine.outbox.pending_count(ch),
                     "connector": self.config.channels[ch].connector}
                for ch in self.config.channels
            },
            "holds": dict(engine.hold_states),
            "oversold_skus": len(engine.oversold),
            "batches": engine.batches,
            "queue": engine.queue.qsize(),
        }

    # -- run ------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        await asyncio.to_thread(Path(cfg.daemon.state_dir).mkdir, parents=True, exist_ok=True)
        self.db = open_engine(cfg.database_url())
        await upgrade(self.db)
        ledger_cfg = cfg.ledger_config()
        self.engine = Engine(self.db, ledger_cfg, self.metrics)
        if self.tune:
            tuning.tune()
        await self.engine.start()
        if self.tune:
            tuning.freeze_loaded_state()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        for name, spec in cfg.connectors.items():
            ctx = ConnectorContext(
                locations=ledger_cfg.locations,
                channels=cfg.connector_channels(name),
                http=self.http,
                state_dir=cfg.daemon.state_dir,
                reconcile_every=cfg.daemon.reconcile_every,
                read_available=self.engine.available_by_location,
                last_seq=functools.partial(self._last_seq, name),
            )
            conn: Connector = spec.cls(name, spec.settings, ctx)
            self.connectors[name] = conn
            self.connected_once[name] = False
            self.engine.reservation_listeners.append(conn.on_reservation)
        await asyncio.gather(*(self._start_connector(n, c) for n, c in self.connectors.items()))
        for name, conn in self.connectors.items():
            self._intake.append(asyncio.create_task(self._feed(name, conn), name=f"in-{name}"))
        for ch_name, ch in cfg.channels.items():
            self._start_pusher(ch_name, ch.connector)
        app = build_app(self, cfg.daemon.max_body_bytes)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = split_host_port(cfg.daemon.http_listen)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound = sockets[0].getsockname()[:2] if sockets else (host, port)
        self._accepting = True
        self._tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        self.notifier.ready()
        log.info("syncd ready on %s:%s (%d connectors, %d channels, database %s)",
                 self.bound[0], self.bound[1], len(self.connectors), len(cfg.channels),
                 cfg.redacted_database_url())

    def _last_seq(self, connector: str, source: str) -> int | None:
        return self.engine.last_seq.get((connector, source)) if self.engine else None

    def _start_pusher(self, ch_name: str, connector_name: str) -> None:
        assert self.engine is not None
        pusher = Pusher(ch_name, self.connectors[connector_name], self.engine.outbox,
                        self.metrics, self.engine.clock,
                        reconcile_every=self.config.daemon.reconcile_every)
        pusher.start()
        self.pushers[ch_name] = pusher

    async def _start_connector(self, name: str, conn: Connector) -> None:
        try:
            await conn.start()
        except Exception as exc:
            log.error("connector failed to start: %s", exc, extra={"connector": name})

    async def _feed(self, name: str, conn: Connector) -> None:
        assert self.engine is not None
        while True:
            try:
                async for inbound in conn.events():
                    await self.engine.submit(inbound)
                return
            except (asyncio.CancelledError, EngineStopped):
                raise
            except Exception as exc:
                log.error("intake failed, restarting: %s", exc, extra={"connector": name})
                await asyncio.sleep(1.0)

    async def _watchdog(self) -> None:
        """WATCHDOG=1 only while the engine makes progress; connector health and STATUS=."""
        assert self.engine is not None
        interval = self.notifier.watchdog_interval() or 5.0
        last_batches = -1
        while True:
            engine = self.engine
            for name, conn in self.connectors.items():
                up = conn.connected
                if up:
                    self.connected_once[name] = True
                self.metrics.connector_up.labels(name).set(1 if up else 0)
            stuck = (engine.batches == last_batches and engine.queue.qsize() > 0)
            if engine.running and not stuck:
                self.notifier.watchdog()
            last_batches = engine.batches
            down = [n for n, c in self.connectors.items() if not c.connected]
            pending = sum(engine.outbox.pending_count(ch) for ch in self.config.channels)
            self.notifier.status(
                ("all connectors up" if not down else f"down: {', '.join(down)}")
                + f"; outbox {pending}; db {'ok' if engine.db_ok else 'FAILING'}"
            )
            await asyncio.sleep(min(interval, 1.0))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.shutdown()
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        """Stop intake, commit what is queued, flush the pushers, persist, close."""
        self.notifier.stopping()
        log.info("stopping: draining")
        timeout = self.config.daemon.shutdown_timeout
        self._accepting = False
        for task in self._intake:
            task.cancel()
        for task in self._intake:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.engine is not None and self.engine.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.engine.queue.join(), timeout / 2)
        flushed = await asyncio.gather(*(p.flush(timeout / 2) for p in self.pushers.values()))
        if not all(flushed):
            log.warning("some channels were not flushed before the stop timeout; "
                        "their outbox is kept and pushed at the next start")
        for p in self.pushers.values():
            await p.stop()
        if self.engine is not None:
            await self.engine.stop(within=timeout / 4)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for name, conn in self.connectors.items():
            try:
                await conn.close()
            except Exception as exc:
                log.warning("connector close failed: %s", exc, extra={"connector": name})
        if self._runner is not None:
            await self._runner.cleanup()
        if self.http is not None:
            await self.http.close()
        if self.db is not None:
            await self.db.dispose()
        log.info("stopped")

    async def reload(self) -> bool:
        """SIGHUP: take a valid new configuration, keep the old one when it is invalid."""
        if self.config_path is None:
            return False
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %d error(s)",
                      len(exc.errors))
            for line in exc.errors:
                log.error("config: %s", line)
            return False
        if set(new.connectors) != set(self.config.connectors) or any(
            new.connectors[n].settings != self.config.connectors[n].settings
            for n in new.connectors
        ):
            log.warning("connector changes take effect at the next restart; "
                        "locations and channels are reloaded now")
            new = dataclasses.replace(new, connectors=self.config.connectors)
        unknown = [c for c, ch in new.channels.items() if ch.connector not in self.connectors]
        for c in unknown:
            log.warning("channel %s needs a restart (new connector)", c, extra={"channel": c})
        if unknown:
            new = dataclasses.replace(new, channels={
                c: ch for c, ch in new.channels.items() if c not in unknown})
        self.config = new
        assert self.engine is not None
        self.engine.reconfigure(new.ledger_config())
        for ch_name in list(self.pushers):
            if ch_name not in new.channels:
                await self.pushers.pop(ch_name).stop()
        for ch_name, ch in new.channels.items():
            if ch_name not in self.pushers:
                self._start_pusher(ch_name, ch.connector)
        log.info("configuration reloaded")
        return True
