"""Security: who gets in, what they can send, and what never comes out.

- `/v1` without a token, with a wrong one, or with the right one in the wrong form: 401 on every
  route, and nothing happens; the token compare is constant-time (checked in the code).
- Webhook signatures are compared in constant time in every connector (checked in the code); a
  bad signature is 401; a replayed Shopify delivery (same `X-Shopify-Event-Id`) reserves once.
- Request bodies are size-limited (413) before anything is parsed or applied.
- No secret appears in a log line or an error: the session-wide secret watch (conftest.py), plus
  a daemon driven into errors on purpose (refused by Shopify, broker unreachable, wrong tokens).
- `systemd-analyze security` on the unit: the exposure score is recorded.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest

from connectors.shopify.mapping import sign
from connectors.shopify.sim import running_sim
from syncd import api
from tests.reliability.helpers import (
    API_TOKEN,
    REPO,
    SECRET_ENV,
    SECRETS,
    WATCH,
    WEBHOOK_SECRET,
    DaemonProc,
    RecordingSim,
    iso,
    now_us,
    record,
    retail_config,
    sqlite_rows,
    until,
)
from tests.servers import free_port

V1_ROUTES = [("GET", "/v1/status"), ("GET", "/v1/stock/A"), ("POST", "/v1/events"),
             ("POST", "/v1/holds"), ("GET", "/v1/holds/H1"), ("POST", "/v1/holds/H1/collect"),
             ("DELETE", "/v1/holds/H1"), ("GET", "/v1/nothing")]
LIMIT = 65536  # max_body_bytes of helpers.daemon_section


def fingerprint(state: Path) -> tuple[object, ...]:
    return (sqlite_rows(state, "SELECT count(*) FROM events")[0],
            sqlite_rows(state, "SELECT count(*), group_concat(state) FROM reservations")[0],
            sqlite_rows(state, "SELECT count(*), total(on_hand) FROM levels")[0])


async def test_v1_needs_the_exact_bearer_token_and_bodies_are_limited(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    port = free_port()
    state = tmp_path / "state"
    config = tmp_path / "syncd.toml"
    config.write_text(retail_config(state, port))
    d = DaemonProc(config, port)
    refused = 0
    try:
        await d.wait_ready()
        count = {"connector": "backoffice", "location": "paris", "event_id": "c1",
                 "type": "count", "sku": "A", "qty": 5, "occurred_at": iso(now_us())}
        assert (await d.call("POST", "/v1/events", count))[0] == 200
        hold = {"hold_id": "H1", "order_id": "W1", "sku": "A", "location": "paris", "qty": 1}
        before = fingerprint(state)
        # (trailing whitespace is not part of a header value in HTTP: not a different token)
        wrong = [None, "", "wrong", API_TOKEN[:-1], API_TOKEN + "x", API_TOKEN.upper(),
                 " " + API_TOKEN, "x" * 4096]
        for method, path in V1_ROUTES:
            body = hold if path == "/v1/holds" else count
            for token in wrong:
                status, answer = await d.call(method, path, body, token=token)
                assert status == 401, (method, path, token, status, answer)
                assert answer == {"error": "unauthorized", "detail": answer["detail"]}
                refused += 1
            # other schemes, or the token without its scheme
            for header in (f"Basic {API_TOKEN}", API_TOKEN, f"Bearer  {API_TOKEN}",
                           f"Token {API_TOKEN}"):
                async with d.http().request(method, d.base + path, json=body,
                                            headers={"Authorization": header}) as resp:
                    WATCH.body(await resp.text())
                    assert resp.status == 401, (method, path, header)
                    refused += 1
        assert fingerprint(state) == before  # nothing happened
        # bodies over max_body_bytes: 413, before anything is parsed or applied
        big = b'{"events": [' + b" " * LIMIT + b"]}"
        for method, path in (("POST", "/v1/events"), ("POST", "/v1/holds"),
                             ("POST", "/webhooks/backoffice")):
            status, answer = await d.call(method, path, raw=big)
            assert (status, answer["error"]) == (413, "body_too_large"), (path, answer)
        # without the token, a big body is refused before it is read
        status, _ = await d.call("POST", "/v1/events", raw=big, token=None)
        assert status == 401
        assert fingerprint(state) == before
        # the exact token works
        assert (await d.call("POST", "/v1/holds", hold))[0] == 201
    finally:
        assert await d.stop() == 0, d.tail()
    record("api_auth", f"python3 -m pytest -q '{request.node.nodeid}'",
           refused_requests=refused, routes=len(V1_ROUTES), body_limit_bytes=LIMIT)


# -- constant-time comparisons, checked in the code --------------------------------------------


def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _compares_values(fn: ast.AST) -> list[str]:
    """`==` / `!=` between two non-constant expressions (a timing leak when they are secrets)."""
    out = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
        ):
            sides = [node.left, *node.comparators]
            if not any(isinstance(s, ast.Constant) for s in sides):
                out.append(ast.unparse(node))
    return out


def test_secrets_are_compared_in_constant_time() -> None:
    checked: list[str] = []
    # the API token
    src = textwrap.dedent(inspect.getsource(api.auth_middleware))
    assert "hmac.compare_digest(" in src
    assert not _compares_values(ast.parse(src)), _compares_values(ast.parse(src))
    checked.append("syncd.api.auth_middleware")
    # every webhook signature check of every connector: a function that computes an HMAC and
    # returns a verdict (not a signature) must use compare_digest and no == between values
    for path in sorted((REPO / "connectors").rglob("*.py")):
        if path.name == "sim.py":
            continue
        for fn in _functions(path):
            body = ast.unparse(fn)
            if "hmac.new(" not in body and "compare_digest" not in body:
                continue
            returns = fn.returns is not None and ast.unparse(fn.returns) == "bool"
            if not returns and "verify" not in fn.name:
                continue  # a signer, not a verifier
            where = f"{path.relative_to(REPO)}:{fn.name}"
            assert "compare_digest(" in body, f"{where} compares without hmac.compare_digest"
            assert not _compares_values(fn), (where, _compares_values(fn))
            checked.append(where)
    assert any("shopify" in c for c in checked), checked
    record("constant_time", "python3 -m pytest -q tests/reliability/test_security.py -k constant",
           checked=checked)


# -- webhooks: signatures and replays ---------------------------------------------------------


async def test_webhook_signatures_and_replayed_deliveries(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    sim = RecordingSim()
    sim.add_items(["W1"], available=0)
    port = free_port()
    state = tmp_path / "state"
    async with running_sim(sim) as shop_url:
        config = tmp_path / "syncd.toml"
        config.write_text(retail_config(state, port, shop_url=shop_url))
        d = DaemonProc(config, port)
        try:
            await d.wait_ready()
            await d.call("POST", "/v1/events", {
                "connector": "backoffice", "location": "lyon", "event_id": "c", "type": "count",
                "sku": "W1", "qty": 20, "occurred_at": iso(now_us())})
            url = f"{d.base}/webhooks/shop"
            order = sim.order_payload(4242, [("W1", 3)])
            async with aiohttp.ClientSession() as http:
                # a wrong secret, no signature, a signature of another body: 401, nothing
                for kw in ({"secret": "not-" + WEBHOOK_SECRET}, {"signature": ""},
                           {"signature": sign(WEBHOOK_SECRET.encode(), b"{}")}):
                    secret = str(kw.pop("secret", WEBHOOK_SECRET))
                    res = await sim.send_webhook("orders/create", order, url, secret,
                                                 session=http, **kw)  # type: ignore[arg-type]
                    WATCH.body(res.body)
                    assert res.status == 401, res
                assert not sqlite_rows(state, "SELECT 1 FROM reservations")
                first = await sim.send_webhook("orders/create", order, url, WEBHOOK_SECRET,
                                               session=http)
                assert first.status == 200
                # Shopify redelivers: same event id, new webhook id; a replay with a changed
                # (re-signed) body under the same event id changes nothing either
                again = await sim.send_webhook("orders/create", order, url, WEBHOOK_SECRET,
                                               event_id=first.event_id, session=http)
                assert again.status == 200
                changed = sim.order_payload(4242, [("W1", 9)])
                third = await sim.send_webhook("orders/create", changed, url, WEBHOOK_SECRET,
                                               event_id=first.event_id, session=http)
                assert third.status == 200
            rows = sqlite_rows(state, "SELECT sku, qty, state FROM reservations")
            assert rows == [("W1", 3, "active")], rows
            outcomes = sqlite_rows(state, "SELECT outcome FROM events WHERE connector = 'shop'")
            assert outcomes == [("applied",)]  # the repeats are duplicates (not stored twice)
            await until(lambda: sim.available("W1") == 17, "the webshop shows 20 - 3")
        finally:
            assert await d.stop() == 0, d.tail()
    record("webhook_replay", f"python3 -m pytest -q '{request.node.nodeid}'",
           bad_signatures_refused=3, replays=2, reservations=len(rows))


# -- secrets never come out -------------------------------------------------------------------


async def test_errors_on_purpose_leak_no_secret(tmp_path: Path) -> None:
    """A daemon whose Shopify refuses its token and whose broker is unreachable (with a
    username and password), asked with wrong tokens and bad signatures: its log and answers
    hold none of its secrets."""
    sim = RecordingSim(access_token="shpat_some_other_token")  # refuses ours: 401
    sim.add_items(["Z1"], available=0)
    port = free_port()
    state = tmp_path / "state"
    async with running_sim(sim) as shop_url:
        text = retail_config(state, port, shop_url=shop_url)
        text += f"""
[connectors.pos]
type = "mqtt_pos"
url = "mqtt://127.0.0.1:{free_port()}"
username = "syncd"
password = "env:MQTT_PASSWORD"
reconnect_max = "200ms"
"""
        config = tmp_path / "syncd.toml"
        config.write_text(text)
        d = DaemonProc(config, port)
        try:
            await until(lambda: _healthy(d), "healthz", within=30)
            await d.call("POST", "/v1/events", {
                "connector": "backoffice", "location": "lyon", "event_id": "c", "type": "count",
                "sku": "Z1", "qty": 5, "occurred_at": iso(now_us())})
            for token in ("wrong", API_TOKEN + "0", ""):
                await d.call("GET", "/v1/status", token=token)
            async with aiohttp.ClientSession() as http:
                res = await sim.send_webhook("orders/create", sim.order_payload(1, [("Z1", 1)]),
                                             f"{d.base}/webhooks/shop", "bad", session=http)
                WATCH.body(res.body)
            await until(lambda: "Shopify refused" in d.tail(100_000), "the refusal logged",
                        within=30)
            await until(lambda: "cannot connect" in d.tail(100_000), "the broker error logged",
                        within=30)
        finally:
            await d.stop()
    log = d.log.read_text()
    for secret in SECRETS:
        assert secret not in log


async def _healthy(d: DaemonProc) -> bool:
    try:
        return (await d.call("GET", "/healthz", token=None, limit=2))[0] == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False



def test_check_config_errors_name_references_not_values(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(retail_config(tmp_path / "state", free_port(),
                                    shop_url="https://example.myshopify.com")
                      .replace('location_id = "gid://shopify/Location/1"',
                               'location_id = "nowhere"')
                      .replace('access_token = "env:SHOPIFY_TOKEN"',
                               'access_token = "env:SHOPIFY_TOKEN_MISSING"'))
    out = subprocess.run([sys.executable, "-m", "syncd.cli", "check-config", str(config)],
                         cwd=REPO, env={**os.environ, **SECRET_ENV}, capture_output=True,
                         text=True, check=False, timeout=60)
    assert out.returncode == 2
    assert "SHOPIFY_TOKEN_MISSING" in out.stderr
    for secret in SECRETS:
        assert secret not in out.stdout + out.stderr


# -- the systemd unit -------------------------------------------------------------------------


def test_systemd_exposure_score(tmp_path: Path) -> None:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed")
    unit = REPO / "systemd" / "syncd.service"
    copy = tmp_path / "syncd.service"  # ExecStart must name a binary that exists here
    copy.write_text(unit.read_text().replace("ExecStart=/usr/bin/syncd ",
                                             f"ExecStart={sys.executable} "))
    out = subprocess.run([binary, "security", "--offline=true", "--no-pager", str(copy)],
                         capture_output=True, text=True, check=False, timeout=60,
                         env={**os.environ, "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"})
    match = re.search(r"Overall exposure level for syncd\.service: (\d+\.\d+) (\w+)", out.stdout)
    assert match, out.stdout + out.stderr
    version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[0]
    record("systemd", "systemd-analyze security --offline=true systemd/syncd.service "
           "(ExecStart pointed at an existing binary)",
           exposure=float(match.group(1)), rating=match.group(2), systemd=version)
    assert float(match.group(1)) <= 2.0
