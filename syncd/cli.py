"""The `syncd` command: run, check-config, status, db upgrade, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from .config import Config, ConfigError, load_config

__all__ = ["main"]

DEFAULT_CONFIG = "/etc/syncd/syncd.toml"


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"syncd: {path}: {len(exc.errors)} configuration error(s):", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(f"{args.config}: ok ({len(cfg.locations)} locations, {len(cfg.connectors)} "
          f"connectors, {len(cfg.channels)} channels)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .app import Daemon, secret_values
    from .logs import setup_logging

    cfg = _load(args.config)
    redactor = setup_logging(cfg.daemon.log_level)
    redactor.add(secret_values(cfg))
    return asyncio.run(Daemon(cfg, config_path=args.config, tune=True).run())


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from .store import open_engine, upgrade

    cfg = _load(args.config)

    async def go() -> None:
        db = open_engine(cfg.database_url())
        try:
            await upgrade(db)
        finally:
            await db.dispose()

    os.makedirs(cfg.daemon.state_dir, exist_ok=True)
    asyncio.run(go())
    print(f"database at head: {cfg.redacted_database_url()}")
    return 0


def _get(url: str, token: str | None) -> tuple[int, Any]:
    req = urllib.request.Request(url)  # noqa: S310 - the operator's own daemon URL
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def cmd_status(args: argparse.Namespace) -> int:
    base, token = args.url, os.environ.get("SYNCD_API_TOKEN")
    if args.config:
        cfg = _load(args.config)
        base = base or f"http://{cfg.daemon.http_listen}"
        if cfg.daemon.api_token is not None:
            token = cfg.daemon.api_token.get_secret_value()
    base = (base or "http://127.0.0.1:9480").rstrip("/")
    try:
        code, ready = _get(f"{base}/readyz", None)
    except (OSError, ValueError) as exc:
        print(f"syncd is not reachable at {base}: {exc}", file=sys.stderr)
        return 3
    print(f"syncd at {base}: {'READY' if code == 200 else 'NOT READY'}")
    print(f"  database: {'ok' if ready.get('database') else 'FAILING'}")
    for name, up in sorted(ready.get("connectors", {}).items()):
        print(f"  connector {name}: {'connected' if up else 'never connected'}")
    code, status = _get(f"{base}/v1/status", token)
    if code != 200:
        print(f"  /v1/status: {code} {status.get('error', '')} {status.get('detail', '')}")
        return 0 if ready.get("ready") else 1
    for name, up in sorted(status["connectors"].items()):
        print(f"  connector {name}: {'up' if up else 'DOWN'}")
    for ch, info in sorted(status["channels"].items()):
        print(f"  channel {ch} (via {info['connector']}): {info['pending']} pending")
    holds = ", ".join(f"{k} {v}" for k, v in sorted(status["holds"].items())) or "none"
    print(f"  holds: {holds}")
    print(f"  oversold SKU-locations: {status['oversold_skus']}")
    return 0 if ready.get("ready") else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(duration=args.duration, skus=args.skus, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncd", description="Inventory synchronization daemon.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground (systemd ExecStart)")
    run.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a configuration file; exit 2 if bad")
    check.add_argument("config")
    check.set_defaults(func=cmd_check_config)
    status = sub.add_parser("status", help="summarise a running daemon (/readyz and /v1)")
    status.add_argument("--url", help="base URL (default from --config, else 127.0.0.1:9480)")
    status.add_argument("--config", "-c", help="read the listen address and token from it")
    status.set_defaults(func=cmd_status)
    db = sub.add_parser("db", help="database maintenance")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply the Alembic migrations (also done at start)")
    up.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    up.set_defaults(func=cmd_db_upgrade)
    demo = sub.add_parser(
        "demo",
        help="the whole system on this machine with simulated channels",
        description=(
            "Starts the real syncd daemon on SQLite in a temporary directory, a local MQTT "
            "broker (Debian's mosquitto; without it, store events go through the HTTP API) and "
            "the simulators of the bundled connectors (Shopify, WooCommerce, Amazon SP-API, a "
            "Square store, an EDI warehouse inbox), then sends store sales, returns, counts, "
            "webshop and marketplace orders, click-and-collect holds (collected or left to "
            "expire) and a webshop outage, and shows what each channel publishes. Metrics are "
            "at http://127.0.0.1:<port>/metrics (the port is printed at start). Ctrl-C stops "
            "everything cleanly."
        ),
    )
    demo.add_argument("--duration", type=float, default=20.0, help="seconds of traffic")
    demo.add_argument("--skus", type=int, default=20, help="number of SKUs")
    demo.add_argument("--seed", type=int, default=1, help="random seed")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
