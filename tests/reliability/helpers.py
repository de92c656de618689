"""Shared tools of the reliability suite: a `syncd run` subprocess driven from asyncio, the
configurations, the ledger invariants, the figures file and the secret watch.

Everything here talks to real things: the daemon is `python -m syncd.cli run --config`, the broker
is mosquitto, the channel is the Shopify simulator on a loopback port, the database is SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from connectors.shopify.sim import ShopifySim
from syncd import availability
from syncd.config import Config, parse_config
from syncd.ledger import Ledger, LedgerConfig, replay
from syncd.model import Event, Level, ReservationState
from syncd.store import open_engine, sqlite_url
from syncd.store import repository as repo

REPO = Path(__file__).resolve().parents[2]

# Secrets of every daemon this suite starts. The secret watch (conftest.py) fails the session
# when any of them shows up in a daemon's log, a log record or an HTTP answer.
API_TOKEN = "rel-api-token-7d1e0c55a9"
SHOP_TOKEN = "shpat_rel_3b9f6c0e2d"
WEBHOOK_SECRET = "whsec-rel-91c4e7aa06"
MQTT_PASSWORD = "mqtt-rel-pass-5e2a91"
SECRETS = (API_TOKEN, SHOP_TOKEN, WEBHOOK_SECRET, MQTT_PASSWORD)
SECRET_ENV = {
    "SYNCD_API_TOKEN": API_TOKEN,
    "SHOPIFY_TOKEN": SHOP_TOKEN,
    "SHOPIFY_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "MQTT_PASSWORD": MQTT_PASSWORD,
}
SHOP_LOCATION = "gid://shopify/Location/1"


# -- the secret watch -------------------------------------------------------------------------


@dataclass
class SecretWatch:
    """What the session saw: daemon log files and HTTP answer bodies, grepped at the end."""

    logs: list[Path] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def body(self, text: str) -> None:
        with self.lock:
            self.bodies.append(text)

    def mark(self) -> tuple[int, int, int]:
        return len(self.logs), len(self.bodies), len(self.records)

    def leaks(self, since: tuple[int, int, int] = (0, 0, 0)) -> list[str]:
        found: list[str] = []
        texts: list[tuple[str, str]] = []
        for path in self.logs[since[0]:]:
            with contextlib.suppress(OSError):
                texts.append((str(path), path.read_text(errors="replace")))
        texts.extend(("HTTP answer", b) for b in self.bodies[since[1]:])
        texts.extend(("log record", r) for r in self.records[since[2]:])
        for where, text in texts:
            for s in SECRETS:
                if s in text:
                    found.append(f"{where}: contains a secret ({s[:6]}…)")
        return found

    def scanned(self) -> dict[str, int]:
        lines = 0
        for path in self.logs:
            with contextlib.suppress(OSError):
                lines += len(path.read_text(errors="replace").splitlines())
        return {"daemon_log_files": len(self.logs), "daemon_log_lines": lines,
                "http_answers": len(self.bodies), "in_process_log_records": len(self.records)}


WATCH = SecretWatch()

# every daemon process a test started; conftest.py SIGKILLs those still running after each test
LIVE: list[subprocess.Popen[bytes]] = []


# -- figures ----------------------------------------------------------------------------------


def figures_path() -> Path | None:
    raw = os.environ.get("SYNCD_RELIABILITY_FIGURES")
    return Path(raw) if raw else None


_figures_lock = threading.Lock()


def record(section: str, command: str, **values: Any) -> None:
    """Add figures to the JSON file named by `SYNCD_RELIABILITY_FIGURES` (when set); always
    print them, so `pytest -s` shows them too."""
    print(f"\n[reliability] {section}: {json.dumps(values, sort_keys=True)}")
    path = figures_path()
    if path is None:
        return
    with _figures_lock:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        entry = doc.setdefault(section, {"command": command, "values": {}})
        entry["command"] = command
        entry["values"].update(values)
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def pytest_command(nodeid: str) -> str:
    return f"python3 -m pytest -q '{nodeid}'"


def soak() -> bool:
    return os.environ.get("SYNCD_SOAK", "") not in ("", "0")


# -- configurations ---------------------------------------------------------------------------


def daemon_section(state: Path, port: int, **extra: str) -> str:
    """`[daemon]`; `extra` values are TOML literals and replace the defaults."""
    keys = {
        "state_dir": f'"{state}"',
        "http_listen": f'"127.0.0.1:{port}"',
        "api_token": '"env:SYNCD_API_TOKEN"',
        "hold_ttl": '"1h"',
        "shutdown_timeout": '"10s"',
        "max_body_bytes": "65536",
    }
    keys.update(extra)
    return "[daemon]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


def retail_config(state: Path, port: int, *, mqtt_url: str | None = None,
                  shop_url: str | None = None, client_id: str = "syncd-rel",
                  daemon_extra: dict[str, str] | None = None) -> str:
    """A store `paris` (POS over MQTT, or the back office over HTTP when there is no broker), a
    warehouse `lyon` (back office over HTTP), a Shopify webshop selling from both, and kiosks."""
    store_authority = "pos" if mqtt_url else "backoffice"
    text = daemon_section(state, port, **(daemon_extra or {}))
    text += f"""
[locations.paris]
kind = "store"
authority = "{store_authority}"
pickup = true

[locations.lyon]
kind = "warehouse"
authority = "backoffice"

[connectors.backoffice]
type = "http_source"
"""
    if mqtt_url:
        text += f"""
[connectors.pos]
type = "mqtt_pos"
url = "{mqtt_url}"
client_id = "{client_id}"
reconnect_max = "500ms"

[channels.kiosks]
connector = "pos"
sells_from = ["paris"]
"""
    if shop_url:
        text += f"""
[connectors.shop]
type = "shopify"
shop_url = "{shop_url}"
access_token = "env:SHOPIFY_TOKEN"
webhook_secret = "env:SHOPIFY_WEBHOOK_SECRET"
location_id = "{SHOP_LOCATION}"
timeout = "3s"

[channels.webshop]
connector = "shop"
sells_from = ["paris", "lyon"]
"""
    return text


def load(text: str) -> Config:
    return parse_config(text, environ=SECRET_ENV)


# -- the daemon as a process ------------------------------------------------------------------


class DaemonProc:
    """`syncd run` in a subprocess, driven from an asyncio test (non-blocking HTTP)."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = config.with_name(f"{config.stem}-{time.monotonic_ns()}.log")
        WATCH.logs.append(self.log)
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "run", "--config", str(config)],
            cwd=REPO, env={**os.environ, **SECRET_ENV, **(env or {})},
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.session: aiohttp.ClientSession | None = None
        LIVE.append(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def http(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self.session

    async def call(self, method: str, path: str, body: Any = None, *,
                   token: str | None = API_TOKEN, raw: bytes | None = None,
                   limit: float = 15.0) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        async with self.http().request(method, self.base + path, data=data, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=limit)) as resp:
            text = await resp.text()
            WATCH.body(text)
            try:
                doc = json.loads(text) if text else None
            except ValueError:
                doc = text
            return resp.status, doc

    async def wait_ready(self, within: float = 30.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < within:
            if not self.alive():
                raise AssertionError(f"syncd exited {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                status, _ = await self.call("GET", "/readyz", token=None, limit=2)
                if status == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise AssertionError(f"syncd not ready within {within}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    async def metric(self, name: str) -> float:
        """The sum of a metric's samples whose line starts with `name` (no labels filter)."""
        async with self.http().get(self.base + "/metrics") as resp:
            text = await resp.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def close_http(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def kill(self) -> int:
        await self.close_http()
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        code = await asyncio.to_thread(self.proc.wait, 30)
        self._log.close()
        return code

    async def stop(self, grace: float = 40.0) -> int:
        await self.close_http()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = await asyncio.to_thread(self.proc.wait, 10)
        self._log.close()
        return code


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def until(cond: Callable[[], bool | Awaitable[bool]], what: str,
                within: float = 30.0, every: float = 0.05) -> float:
    """Wait (bounded) until `cond()` is true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        value = cond()
        if not isinstance(value, bool):
            value = await value
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


# -- the database and its invariants ----------------------------------------------------------


@dataclass
class Snapshot:
    events: list[tuple[Event, int, str]]
    levels: dict[tuple[str, str], Level]
    reservations: dict[str, tuple[str, str, str, int]]  # res_id -> (state, sku, location, qty)
    outbox: dict[tuple[str, str, str], repo.OutboxRow]


async def snapshot(state_dir: Path) -> Snapshot:
    """Everything durable, read while no daemon runs."""
    db = open_engine(sqlite_url(state_dir))
    try:
        async with db.connect() as conn:
            events = await repo.iter_events(conn)
            levels = await repo.load_levels(conn)
            stored = await repo.load_reservations(conn)
            outbox = await repo.load_outbox(conn)
    finally:
        await db.dispose()
    res = {r.res_id: (r.state.value, r.sku, r.location, r.qty) for r in stored}
    return Snapshot(events, levels, res, outbox)


def replay_matches(snap: Snapshot, config: LedgerConfig) -> tuple[Ledger, list[str]]:
    """Replay the ledger from scratch and compare it with the stored levels (on-hand,
    watermark, floor and the bounded delta tail) and reservations."""
    ledger = replay(config, [(e, at) for e, at, _ in snap.events])
    problems: list[str] = []
    replayed = {k: v for k, v in ledger.levels.items() if v.version}
    for key in sorted(set(replayed) | set(snap.levels)):
        a, b = replayed.get(key), snap.levels.get(key)
        if a is None or b is None:
            problems.append(f"level {key}: replay {a} != stored {b}")
            continue
        if (a.on_hand, a.watermark, a.floor, a.tail) != (b.on_hand, b.watermark, b.floor, b.tail):
            only_a = sorted(set(a.tail) - set(b.tail))[:3]
            only_b = sorted(set(b.tail) - set(a.tail))[:3]
            problems.append(
                f"level {key}: on_hand {a.on_hand}/{b.on_hand}, watermark {a.watermark}/"
                f"{b.watermark}, floor {a.floor}/{b.floor}, tail {len(a.tail)}/{len(b.tail)} "
                f"(replay only {only_a}, stored only {only_b}) [replay/stored]")
    rres = {r.res_id: (r.state.value, r.sku, r.location, r.qty)
            for r in ledger.reservations.values()}
    for rid in sorted(set(rres) | set(snap.reservations)):
        if rres.get(rid) != snap.reservations.get(rid):
            problems.append(f"reservation {rid}: replay {rres.get(rid)} != stored "
                            f"{snap.reservations.get(rid)}")
    return ledger, problems


def duplicates(snap: Snapshot) -> int:
    idents = [(e.connector, e.event_id) for e, _, _ in snap.events]
    return len(idents) - len(set(idents))


def published_figures(ledger: Ledger, config: Config, channel: str, skus: Iterable[str],
                      now: int) -> dict[str, int]:
    """The pooled figure a channel should show for each SKU, from a (replayed) ledger."""
    ch = config.ledger_config().channels[channel]
    out: dict[str, int] = {}
    for sku in skus:
        total = sum(max(0, ledger.avail(sku, loc, now)) for loc in ch.sells_from)
        out[sku] = availability.published(total, ch.allocation, ch.safety_stock,
                                          ch.max_quantity)
    return out


def open_holds(ledger: Ledger) -> dict[str, int]:
    return {r.res_id: r.qty for r in ledger.reservations.values()
            if r.state is ReservationState.HELD}


async def levels_now(state_dir: Path) -> dict[tuple[str, str], int]:
    """On-hand per (SKU, location) as the database gives it now: the level rows (a lazy
    checkpoint) rolled forward with the ledger. Works while a daemon runs (WAL)."""
    db = open_engine(sqlite_url(state_dir))
    try:
        async with db.connect() as conn:
            found = await repo.load_levels(conn)
    finally:
        await db.dispose()
    return {key: lvl.on_hand for key, lvl in found.items()}


def sqlite_rows(state_dir: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """A read through a separate SQLite connection (works while a daemon runs: WAL)."""
    db = sqlite3.connect(state_dir / "syncd.db", timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


# -- a Shopify simulator that remembers what it was told --------------------------------------


class RecordingSim(ShopifySim):
    """The simulator, counting every quantity it applied per SKU (with a time stamp), so a test
    can tell "one current value per SKU" from "an hour of history"."""

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("access_token", SHOP_TOKEN)
        super().__init__(**kw)
        self.applied: list[tuple[float, str, int]] = []  # (monotonic, sku, quantity)
        self.call_times: list[float] = []

    async def handle(self, request: Any) -> Any:
        self.call_times.append(time.monotonic())
        return await super().handle(request)

    def _apply_quantities(self, data: Any, quantities: list[Any]) -> dict[str, Any]:
        out = super()._apply_quantities(data, quantities)
        if out.get("inventoryAdjustmentGroup") is not None:
            at = time.monotonic()
            for q in quantities:
                item = self.items.get(q.get("inventoryItemId"))
                if item is not None:
                    self.applied.append((at, item.sku, int(q["quantity"])))
        return out

    def applied_since(self, t: float) -> Counter[str]:
        return Counter(sku for at, sku, _ in self.applied if at >= t)

    def calls_between(self, a: float, b: float) -> int:
        return sum(1 for t in self.call_times if a <= t < b)


class Publisher:
    """A till with a persistent MQTT session (QoS 1)."""

    def __init__(self, url: str, identifier: str = "till-rel") -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.host, self.port = host, int(port)
        self.identifier = identifier
        self.published = 0

    async def send(self, messages: Iterable[dict[str, Any]], location: str = "paris",
                   *, pause: float = 0.0) -> None:
        async with aiomqtt.Client(self.host, self.port, identifier=self.identifier,
                                  clean_session=False) as c:
            for m in messages:
                await c.publish(f"syncd/pos/{location}/events", json.dumps(m), qos=1)
                self.published += 1
                if pause:
                    await asyncio.sleep(pause)


def iso(us: int) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")


def now_us() -> int:
    return time.time_ns() // 1000
