"""The HTTP API (aiohttp, one listener): metrics, health, `/v1` and channel webhooks.

Every error is JSON, `{"error": "<code>", "detail": "..."}`, with a 4xx for the caller's mistakes
and never a traceback. `/v1` needs `Authorization: Bearer <api_token>`, compared in constant time.
Writes (`POST /v1/events`, holds, webhooks) answer only after their commit.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from .config import parse_duration
from .engine import CommitFailed, EngineStopped
from .model import Event, EventType, Outcome, Reservation, ReservationState, from_micros
from .wire import MalformedMessage, parse_api_events

if TYPE_CHECKING:
    from .app import Daemon

__all__ = ["build_app", "hold_json"]

log = logging.getLogger("syncd.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
HOLD_ERRORS = {
    "insufficient_stock": 409,
    "hold_conflict": 409,
    "not_pickup_location": 400,
    "bad_quantity": 400,
    "unknown_hold": 404,
    "not_a_hold": 404,
}


def error(status: int, code: str, detail: str = "") -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "body_too_large"}.get(exc.status, "bad_request")
        return error(exc.status, code, exc.reason or "")
    except EngineStopped:
        return error(503, "shutting_down", "syncd is stopping")
    except CommitFailed:
        return error(503, "database_unavailable", "the change was not committed; retry")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error(500, "internal", "internal error; see the syncd log")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        daemon = request.app[DAEMON]
        token = daemon.api_token()
        given = request.headers.get("Authorization", "")
        if token is None:
            return error(401, "unauthorized", "no api_token is configured; /v1 is disabled")
        expected = f"Bearer {token}".encode()
        if not hmac.compare_digest(given.encode(), expected):
            return error(401, "unauthorized", "missing or wrong bearer token")
    return await handler(request)


async def read_json(request: web.Request) -> Any:
    body = await request.read()
    try:
        return json.loads(body)
    except RecursionError:
        raise web.HTTPBadRequest(reason="body is not JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(reason=f"body is not JSON: {exc}"[:200]) from None


# -- health ---------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if daemon.engine is not None and daemon.engine.running:
        return web.json_response({"status": "ok"})
    return error(503, "unhealthy", "the engine is not running")


async def readyz(request: web.Request) -> web.Response:
    detail = request.app[DAEMON].readiness()
    ok = detail["database"] and all(detail["connectors"].values())
    body = {"ready": ok, **detail}
    return web.json_response(body, status=200 if ok else 503)


# -- /v1 ------------------------------------------------------------------------------------------


async def stock(request: web.Request) -> web.Response:
    engine = request.app[DAEMON].require_engine()
    return web.json_response(engine.stock(request.match_info["sku"]))


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[DAEMON].status_summary())


async def post_events(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    engine = daemon.require_engine()
    body = await request.read()
    try:
        events = parse_api_events(body, daemon.config.locations, daemon.config.connectors)
    except MalformedMessage as exc:
        code = "bad_request" if exc.reason.startswith(("not JSON", "not UTF-8")) else "bad_event"
        return error(400, code, exc.reason)
    verdicts = await engine.apply(events)
    return web.json_response({"results": [
        {"event_id": e.event_id, "outcome": v.outcome.value, "reason": v.reason}
        for e, v in zip(events, verdicts, strict=True)
    ]})


class HoldRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hold_id: StrictStr | None = Field(None, min_length=1, max_length=200)
    order_id: StrictStr = Field(min_length=1, max_length=255)
    sku: StrictStr = Field(min_length=1, max_length=255)
    location: StrictStr = Field(min_length=1, max_length=128)
    qty: StrictInt = Field(gt=0, le=1_000_000)
    ttl: StrictStr | None = None


def hold_json(r: Reservation, now: int) -> dict[str, Any]:
    state = r.state.value
    if r.state is ReservationState.HELD and r.expires_at is not None and r.expires_at <= now:
        state = ReservationState.EXPIRED.value  # expiry is decided when read
    return {
        "hold_id": r.res_id,
        "order_id": r.order_id,
        "sku": r.sku,
        "location": r.location,
        "qty": r.qty,
        "state": state,
        "created_at": from_micros(r.created_at).isoformat(),
        "expires_at": from_micros(r.expires_at).isoformat() if r.expires_at else None,
    }


async def create_hold(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    engine = daemon.require_engine()
    try:
        req = HoldRequest.model_validate(await read_json(request))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        return error(400, "bad_request", f"{where}: {msg}" if where else msg)
    ttl = daemon.config.daemon.hold_ttl
    if req.ttl is not None:
        try:
            ttl = parse_duration(req.ttl)
        except ValueError as exc:
            return error(400, "bad_request", f"ttl: {exc}")
        if ttl <= 0:
            return error(400, "bad_request", "ttl: must be positive")
    if req.location not in daemon.config.locations:
        return error(400, "bad_request", f"location: unknown location {req.location!r}")
    hold_id = req.hold_id or uuid.uuid4().hex
    now = engine.clock()
    ev = Event(
        connector="api", event_id=f"hold:{hold_id}:create", type=EventType.HOLD_CREATE,
        sku=req.sku, qty=req.qty, occurred_at=now, location=req.location, hold_id=hold_id,
        order_id=req.order_id, expires_at=now + int(ttl * 1_000_000),
    )
    (v,) = await engine.apply([ev])
    if v.outcome is Outcome.APPLIED and v.reservation is not None:
        return web.json_response(hold_json(v.reservation, engine.clock()), status=201)
    if v.outcome is Outcome.DUPLICATE and v.reservation is not None:
        return web.json_response(hold_json(v.reservation, engine.clock()), status=200)
    return error(HOLD_ERRORS.get(v.reason, 409), v.reason or "rejected", _hold_detail(v.reason))


def _hold_detail(reason: str) -> str:
    return {
        "insufficient_stock": "not enough available stock at that location",
        "hold_conflict": "a different hold already has this hold_id",
        "not_pickup_location": "that location does not offer pickup",
        "unknown_hold": "no such hold",
        "hold_expired": "the hold has expired",
    }.get(reason, reason)


async def get_hold(request: web.Request) -> web.Response:
    engine = request.app[DAEMON].require_engine()
    r = await engine.reservation(request.match_info["hold_id"])
    if r is None or r.kind.value != "hold":
        return error(404, "unknown_hold", "no such hold")
    return web.json_response(hold_json(r, engine.clock()))


async def _end_hold(request: web.Request, typ: EventType, verb: str) -> web.Response:
    engine = request.app[DAEMON].require_engine()
    hold_id = request.match_info["hold_id"]
    now = engine.clock()
    ev = Event(connector="api", event_id=f"hold:{hold_id}:{verb}", type=typ, sku="", qty=0,
               occurred_at=now, hold_id=hold_id)
    (v,) = await engine.apply([ev])
    if v.outcome in (Outcome.APPLIED, Outcome.DUPLICATE) and v.reservation is not None:
        return web.json_response(hold_json(v.reservation, engine.clock()))
    return error(HOLD_ERRORS.get(v.reason, 409), v.reason or "rejected", _hold_detail(v.reason))


async def collect_hold(request: web.Request) -> web.Response:
    return await _end_hold(request, EventType.HOLD_COLLECT, "collect")


async def release_hold(request: web.Request) -> web.Response:
    return await _end_hold(request, EventType.HOLD_RELEASE, "release")


# -- webhooks -------------------------------------------------------------------------------------


async def webhook(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    name = request.match_info["connector"]
    connector = daemon.connectors.get(name)
    if connector is None:
        return error(404, "not_found", f"no connector {name!r}")
    body = await request.read()
    headers: Mapping[str, str] = {k.lower(): v for k, v in request.headers.items()}
    reply = await connector.webhook(headers, body)
    if reply.status >= 400:
        return error(reply.status, reply.error or "rejected", reply.detail)
    if reply.events or reply.dead:
        await daemon.require_engine().apply(reply.events, reply.dead)
    return web.json_response({"ok": True, "events": len(reply.events)}, status=reply.status)


def build_app(daemon: Daemon, max_body_bytes: int) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, auth_middleware],
                          client_max_size=max_body_bytes)
    app[DAEMON] = daemon
    app.router.add_get("/metrics", make_aiohttp_handler(daemon.metrics.registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/stock/{sku}", stock)
    app.router.add_post("/v1/events", post_events)
    app.router.add_post("/v1/holds", create_hold)
    app.router.add_get("/v1/holds/{hold_id}", get_hold)
    app.router.add_post("/v1/holds/{hold_id}/collect", collect_hold)
    app.router.add_delete("/v1/holds/{hold_id}", release_hold)
    app.router.add_post("/webhooks/{connector}", webhook)
    return app
