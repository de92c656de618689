"""The demo's live terminal view (rich): SKUs x channels, push lag, outbox, holds, oversells
prevented; and the summary printed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Coroutine
from typing import Any

import aiohttp
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from .traffic import Trade

__all__ = ["Board"]

_LAG = re.compile(r'^syncd_push_lag_seconds_(sum|count)\{channel="([^"]+)"\} (\S+)$', re.M)
SHOWN = 8


class Board:
    def __init__(self, base: str, http: aiohttp.ClientSession, trade: Trade, sim: Any) -> None:
        self.amazon = trade.marketplaces.get("amazon")
        self.woo = trade.marketplaces.get("woocommerce")
        self.base = base
        self.http = http
        self.trade = trade
        self.sim = sim
        self.console = Console()
        self.stock: dict[str, Any] = {}
        self.status: dict[str, Any] = {}
        self.lag: dict[str, float] = {}

    async def _poll(self) -> None:
        for sku in self.trade.skus[:SHOWN]:
            async with self.http.get(f"{self.base}/v1/stock/{sku}") as resp:
                self.stock[sku] = await resp.json()
        async with self.http.get(f"{self.base}/v1/status") as resp:
            self.status = await resp.json()
        async with self.http.get(f"{self.base}/metrics") as resp:
            text = await resp.text()
        parts: dict[str, dict[str, float]] = {}
        for kind, ch, value in _LAG.findall(text):
            parts.setdefault(ch, {})[kind] = float(value)
        self.lag = {ch: p["sum"] / p["count"] for ch, p in parts.items() if p.get("count")}

    def render(self) -> Group:
        table = Table(title="stock and what each channel publishes", expand=True)
        table.caption = ("on-hand at each location (rN: N reserved); kiosks: p/l/w per location; "
                         "then what syncd publishes for the webshop and what each channel shows")
        square = self.trade.square
        stores = ["paris-01", "lille-02"] + ([square.store] if square is not None else [])
        cols = ["SKU", *(st.split("-")[0] for st in stores), "lyon", "kiosks", "web", "Shopify",
                "Amazon", "Woo"]
        for col in cols:
            table.add_column(col, justify="right" if col != "SKU" else "left")
        for sku in self.trade.skus[:SHOWN]:
            s = self.stock.get(sku, {})
            locs = s.get("locations", {})
            chans = s.get("channels", {})

            def cell(loc: str, locs: dict[str, Any] = locs) -> str:
                v = locs.get(loc)
                if not v:
                    return "-"
                return f"{v['on_hand']}" + (f" r{v['reserved']}" if v["reserved"] else "")

            kiosk = chans.get("kiosks", {}).get("locations", {})
            kiosk_txt = "/".join(str(kiosk[k]["published"]) if k in kiosk else "-"
                                 for k in ("paris-01", "lille-02", "lyon-dc"))
            web = chans.get("webshop", {})
            shows = self.sim.available(sku) if self.sim is not None else None
            amz = self.amazon.quantity(sku) if self.amazon is not None else None
            woo = self.woo.stock(sku) if self.woo is not None else None
            table.add_row(sku, *(cell(st) for st in stores), cell("lyon-dc"), kiosk_txt,
                          str(web.get("published", "-")), "-" if shows is None else str(shows),
                          "-" if amz is None else str(amz), "-" if woo is None else str(woo))
        st = self.trade.stats
        chans = self.status.get("channels", {})
        lines = [
            "push lag (mean): " + ", ".join(f"{c} {v * 1000:.0f} ms"
                                            for c, v in sorted(self.lag.items())),
            "outbox pending: " + ", ".join(f"{c} {v['pending']}" for c, v in sorted(chans.items())),
            f"holds: {self.status.get('holds', {})}   oversold SKU-locations: "
            f"{self.status.get('oversold_skus', 0)}",
            f"store sales {st.sales}, returns {st.returns}, counts {st.counts}; online orders "
            f"{st.orders}, cancelled {st.cancelled}; holds placed {st.holds}, refused "
            f"{st.holds_refused}, collected {st.collected}, left to expire {st.left_to_expire}",
            f"oversells prevented (customers shown 0 for stock that was gone): {st.turned_away}"
            f"   webshop: {st.outage}",
            *st.log,
        ]
        return Group(table, Panel("\n".join(lines), title="syncd demo"))

    async def run(self, traffic: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(traffic)
        with Live(self.render(), console=self.console, refresh_per_second=4) as live:
            while not task.done():
                with contextlib.suppress(aiohttp.ClientError, ValueError):
                    await self._poll()
                live.update(self.render())
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)  # let the last pushes land
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                await self._poll()
            live.update(self.render())
        await task

    def summary(self) -> None:
        st = self.trade.stats
        pending = sum(v["pending"] for v in self.status.get("channels", {}).values())
        self.console.print()
        self.console.print(Panel(
            f"{st.sales} store sales, {st.returns} returns, {st.counts} counts, "
            f"{st.edi_files} warehouse EDI file(s)\n"
            f"{st.orders} online orders ({st.cancelled} cancelled), {st.turned_away} customers "
            f"turned away by an accurate 'sold out' (oversells prevented)\n"
            f"{st.holds} click-and-collect holds ({st.collected} collected, "
            f"{st.left_to_expire} left to expire, {st.holds_refused} refused for lack of stock)\n"
            f"webshop outage: {st.outage}; outbox pending at the end: {pending}\n"
            f"mean push lag: " + ", ".join(f"{c} {v * 1000:.0f} ms"
                                          for c, v in sorted(self.lag.items())),
            title="summary"))
