"""`syncd demo`: the whole system on this machine.

It starts, in a temporary directory: Debian's mosquitto (the store POS connector and the in-store
kiosks), the Shopify simulator (the webshop), a warehouse EDI inbox when the `edi_inventory`
connector is installed, and the real `syncd run` daemon on its default embedded SQLite. Then it
plays a seeded day of trade, compressed into `--duration` seconds, and shows what every channel
publishes, live. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from .services import Broker, DaemonProcess, free_port
from .traffic import SQUARE_LOCATION, SQUARE_STORE, SquareTills, Trade
from .view import Board

__all__ = ["run_demo"]

SHOP_SECRET_ENV = "SYNCD_DEMO_SHOPIFY_SECRET"  # noqa: S105 - an environment variable name


def _config(root: Path, http: int, broker: Broker | None, shop_url: str | None,
            edi_inbox: Path | None, extra: str = "", more_stores: tuple[str, ...] = ()) -> str:
    pos = (f'type = "mqtt_pos"\nurl = "{broker.url}"\nclient_id = "syncd-demo-{http}"'
           if broker else 'type = "http_source"')
    wms = (f'type = "edi_inventory"\ninbox = "{edi_inbox}"\nlocations = {{ "WH001" = "lyon-dc" }}'
           f'\npoll_every = "200ms"\nsettle = "200ms"' if edi_inbox else 'type = "http_source"')
    text = f"""
[daemon]
state_dir = "{root / 'state'}"
http_listen = "127.0.0.1:{http}"
api_token = "env:SYNCD_DEMO_TOKEN"
hold_ttl = "8s"
reconcile_every = "10s"
log_level = "info"

[locations.paris-01]
kind = "store"
authority = "pos"
safety_stock = 1
pickup = true

[locations.lille-02]
kind = "store"
authority = "pos"
pickup = true

[locations.lyon-dc]
kind = "warehouse"
authority = "wms"

[connectors.pos]
{pos}

[connectors.wms]
{wms}

[channels.kiosks]
connector = "pos"
sells_from = ["paris-01", "lille-02", "lyon-dc"]
"""
    if shop_url:
        text += f"""
[connectors.shop]
type = "shopify"
shop_url = "{shop_url}"
access_token = "env:SYNCD_DEMO_SHOPIFY_TOKEN"
webhook_secret = "env:{SHOP_SECRET_ENV}"
location_id = "gid://shopify/Location/1"

[channels.webshop]
connector = "shop"
sells_from = {json.dumps(["lyon-dc", "paris-01", "lille-02", *more_stores])}
safety_stock = 1
"""
    return text + extra


def _installed(kind: str) -> bool:
    from ..registry import load_connector_types

    types, _errors = load_connector_types()
    return kind in types


async def _demo(root: Path, duration: float, skus: int, seed: int) -> int:
    http = free_port()
    token = secrets.token_hex(16)
    broker: Broker | None = None
    try:
        broker = Broker(root) if _installed("mqtt_pos") else None
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"note: {exc}; store events go through the HTTP API instead of MQTT")
    sim: Any = None
    shop_url: str | None = None
    stack = contextlib.AsyncExitStack()
    env = {"SYNCD_DEMO_TOKEN": token}
    if _installed("shopify"):
        from connectors.shopify.sim import ShopifySim, running_sim

        sim = ShopifySim(locations=("Online warehouse",))
        sim.add_items([f"SKU-{i:04d}" for i in range(skus)], available=0)
        shop_url = await stack.enter_async_context(running_sim(sim))
        env.update({"SYNCD_DEMO_SHOPIFY_TOKEN": sim.access_token,
                    SHOP_SECRET_ENV: secrets.token_hex(16)})
    inbox = root / "edi" / "inbox" if _installed("edi_inventory") else None
    if inbox is not None:
        inbox.mkdir(parents=True)
    sku_names = [f"SKU-{i:04d}" for i in range(skus)]
    marketplaces, extra = await _marketplaces(stack, env, sku_names)
    square, square_extra = await _square(stack, env, sku_names, f"http://127.0.0.1:{http}")
    config = root / "syncd.toml"
    config.write_text(_config(root, http, broker, shop_url, inbox, extra + square_extra,
                              (SQUARE_STORE,) if square is not None else ()))
    daemon = DaemonProcess(config, env, root / "syncd.log")
    base = f"http://127.0.0.1:{http}"
    print(f"syncd demo: daemon at {base} (metrics: {base}/metrics), state in {root}")
    print(f"            MQTT broker: {broker.url if broker else 'none'}; "
          f"Shopify simulator: {shop_url or 'not installed'}; EDI inbox: {inbox or 'none'}; "
          f"also {', '.join(sorted(marketplaces)) or 'no other channel'}"
          + (f"; Square POS simulator for {SQUARE_STORE}" if square is not None else ""))
    code = 0
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http_s:
            if not await _ready(http_s, base, daemon):
                print(f"syncd did not become ready; see {root / 'syncd.log'}")
                return 1
            trade = Trade(base=base, http=http_s, broker=broker, sim=sim,
                          shop_secret=env.get(SHOP_SECRET_ENV, ""), edi_inbox=inbox,
                          skus=skus, seed=seed, duration=duration, marketplaces=marketplaces,
                          square=square)
            board = Board(base, http_s, trade, sim)
            await board.run(trade.run())
            board.summary()
    except asyncio.CancelledError:
        code = 130
    finally:
        exit_code = daemon.stop()
        print(f"daemon stopped (exit {exit_code}); log: {root / 'syncd.log'}")
        await stack.aclose()
        if broker is not None:
            broker.stop()
    return code


async def _marketplaces(
    stack: contextlib.AsyncExitStack, env: dict[str, str], skus: list[str]
) -> tuple[dict[str, Any], str]:
    """The Amazon and WooCommerce simulators, when those connectors are installed, and their
    configuration: both sell from the warehouse; WooCommerce also from the Paris store."""
    sims: dict[str, Any] = {}
    text = ""
    if _installed("amazon_sp"):
        from connectors.amazon_sp.sim import AmazonSpSim
        from connectors.amazon_sp.sim import running_sim as amazon_sim

        amz = AmazonSpSim(feed_interval=5.0, feed_queue_delay=0.5, feed_process_delay=1.0)
        amz.add_listings(skus, quantity=0)
        url = await stack.enter_async_context(amazon_sim(amz))
        env.update({"SYNCD_DEMO_AMZ_SECRET": amz.client_secret,
                    "SYNCD_DEMO_AMZ_REFRESH": amz.refresh_token})
        sims["amazon"] = amz
        text += f"""
[connectors.amz]
type = "amazon_sp"
endpoint = "{url}"
token_url = "{url}/auth/o2/token"
client_id = "{amz.client_id}"
client_secret = "env:SYNCD_DEMO_AMZ_SECRET"
refresh_token = "env:SYNCD_DEMO_AMZ_REFRESH"
seller_id = "{amz.seller_id}"
marketplace_ids = ["{amz.marketplace_ids[0]}"]
feed_threshold = 50
poll_every = "2s"
feed_poll_every = "200ms"
feed_min_interval = "5s"

[channels.amazon]
connector = "amz"
sells_from = ["lyon-dc"]
safety_stock = 1
"""
    if _installed("woocommerce"):
        from connectors.woocommerce.sim import WooSim
        from connectors.woocommerce.sim import running_sim as woo_sim

        woo = WooSim()
        woo.add_products(skus, stock=0)
        url = await stack.enter_async_context(woo_sim(woo))
        env.update({"SYNCD_DEMO_WOO_KEY": woo.consumer_key,
                    "SYNCD_DEMO_WOO_SECRET": woo.consumer_secret,
                    "SYNCD_DEMO_WOO_HOOKS": secrets.token_hex(16)})
        sims["woocommerce"] = woo
        text += f"""
[connectors.woo]
type = "woocommerce"
url = "{url}"
consumer_key = "env:SYNCD_DEMO_WOO_KEY"
consumer_secret = "env:SYNCD_DEMO_WOO_SECRET"
webhook_secret = "env:SYNCD_DEMO_WOO_HOOKS"
poll_every = "2s"

[channels.woo]
connector = "woo"
sells_from = ["lyon-dc", "paris-01"]
"""
    return sims, text


async def _square(
    stack: contextlib.AsyncExitStack, env: dict[str, str], skus: list[str], base: str
) -> tuple[SquareTills | None, str]:
    """A third store, `marseille-03`, whose tills are Square: its counts reach syncd by signed
    `inventory.count.updated` webhooks, and a reconciliation poll reads them back."""
    if not _installed("square"):
        return None, ""
    from connectors.square.sim import SquareSim
    from connectors.square.sim import running_sim as square_sim

    sim = SquareSim(locations=(SQUARE_LOCATION,))
    sim.add_variations(skus)
    url = await stack.enter_async_context(square_sim(sim))
    key = secrets.token_hex(16)
    env.update({"SYNCD_DEMO_SQUARE_TOKEN": sim.access_token, "SYNCD_DEMO_SQUARE_KEY": key})
    hook = f"{base}/webhooks/square"
    text = f"""
[locations.{SQUARE_STORE}]
kind = "store"
authority = "square"
pickup = true

[connectors.square]
type = "square"
base_url = "{url}"
access_token = "env:SYNCD_DEMO_SQUARE_TOKEN"
webhook_signature_key = "env:SYNCD_DEMO_SQUARE_KEY"
notification_url = "{hook}"
locations = {{ "{SQUARE_LOCATION}" = "{SQUARE_STORE}" }}
poll_every = "10s"
"""
    return SquareTills(sim, hook, key, SQUARE_LOCATION, SQUARE_STORE), text


async def _ready(http: aiohttp.ClientSession, base: str, daemon: DaemonProcess) -> bool:
    for _ in range(600):
        if not daemon.alive():
            return False
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return True
        await asyncio.sleep(0.05)
    return False


def run_demo(duration: float, skus: int, seed: int) -> int:
    with tempfile.TemporaryDirectory(prefix="syncd-demo-") as tmp:
        try:
            return asyncio.run(_demo(Path(tmp), duration, max(1, skus), seed))
        except KeyboardInterrupt:
            print("interrupted; stopped cleanly")
            return 130
