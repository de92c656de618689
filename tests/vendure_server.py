"""A real Vendure server for the Vendure connector tests: installed from npm, booted with node,
seeded through its Admin API, driven through its Admin and Shop APIs.

`tests/vendure/package.json` and `package-lock.json` pin `@vendure/core` 3.7.3 and `sql.js`;
`ensure_installed()` runs `npm ci` there once (skipped while `node_modules` is newer than the
lock file; a file lock keeps concurrent test runs from installing twice). `VendureServer.start()`
boots `tests/vendure/server.js` on a free loopback port with an in-memory sql.js database
(`synchronize: true`), waits until the Admin API answers, and seeds what placing an order needs:
a country and a zone (the channel's default tax and shipping zone), a tax category and rate, a
shipping method, a payment method (`syncd-test-payment`, which settles at once) and two stock
locations besides Vendure's "Default Stock Location".

The helpers are synchronous (urllib): tests call them between awaits; each call is a few
milliseconds on loopback.

Measured on the dev VM (2 cores): `npm ci` 29 s with an empty npm cache, 43–50 s while the
machine is busy; boot and seeding 6.5–10.5 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import HOST, BinaryNotFoundError, free_port

__all__ = [
    "NODE_DIR",
    "PASSWORD",
    "SYNCD_PASSWORD",
    "SYNCD_USER",
    "GraphQLFailure",
    "VendureServer",
    "ensure_installed",
]

NODE_DIR = Path(__file__).resolve().parent / "vendure"
PASSWORD = "syncd-test-superadmin"
SYNCD_USER = "syncd@example.com"  # the administrator the connector logs in as
SYNCD_PASSWORD = "syncd-test-connector"
# what the connector needs, and nothing more
SYNCD_PERMISSIONS = ["ReadCatalog", "UpdateCatalog", "ReadOrder"]
_ids = itertools.count(1)


class GraphQLFailure(AssertionError):
    """A helper's GraphQL call failed (the test setup is wrong, or Vendure is)."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BinaryNotFoundError(f"{name} not found: the Vendure tests need Node.js and npm")
    return path


def _installed() -> bool:
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    return (
        marker.exists()
        and (NODE_DIR / "node_modules" / "@vendure" / "core").is_dir()
        and marker.stat().st_mtime >= lock.stat().st_mtime
    )


def ensure_installed() -> float:
    """`npm ci` in tests/vendure unless already done for this lock file. Returns the seconds
    spent (0 when cached). Raises `BinaryNotFoundError` without node or npm."""
    _tool("node")
    npm = _tool("npm")
    if _installed():
        return 0.0
    with (NODE_DIR / ".npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed():
                return 0.0
            started = time.monotonic()
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"npm ci failed in {NODE_DIR} (exit {proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
                )
            # npm ci keeps node_modules/.package-lock.json's mtime from the tarball step: touch
            # it so the cache check above compares with this install
            (NODE_DIR / "node_modules" / ".package-lock.json").touch()
            return time.monotonic() - started
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _post(
    url: str, query: str, variables: Mapping[str, Any] | None, headers: Mapping[str, str]
) -> tuple[dict[str, str], Any]:
    body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return ({k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return ({k.lower(): v for k, v in exc.headers.items()}, json.loads(exc.read() or b"{}"))


def _data(doc: Any, query: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("errors") or not isinstance(doc.get("data"), dict):
        raise GraphQLFailure(f"{' '.join(query.split())[:200]} -> {json.dumps(doc)[:1000]}")
    data: dict[str, Any] = doc["data"]
    return data


def _result(data: Mapping[str, Any], key: str) -> Any:
    """A mutation result that may be an ErrorResult union member."""
    value = data[key]
    if isinstance(value, dict) and value.get("errorCode"):
        raise GraphQLFailure(f"{key}: {value.get('errorCode')}: {value.get('message')}")
    return value


@dataclass
class VendureServer:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    token: str = ""  # the superadmin's session
    locations: dict[str, str] = field(default_factory=dict)  # "lyon"/"paris"/"default" -> id
    shipping_method: str = ""
    channel_token: str = ""
    syncd_role: str = ""

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"{self.base}/admin-api"

    @property
    def shop_url(self) -> str:
        return f"{self.base}/shop-api"

    @classmethod
    def start(cls, timeout: float = 120.0) -> VendureServer:
        node = _tool("node")
        port = free_port()
        log_path = Path(tempfile.mkdtemp(prefix="syncd-vendure-")) / "vendure.log"
        env = {
            **os.environ,
            "VENDURE_PORT": str(port),
            "VENDURE_DISABLE_TELEMETRY": "true",
            "VENDURE_SUPERADMIN_PASSWORD": PASSWORD,
            "NODE_ENV": "test",
        }
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [node, "server.js"],
                cwd=NODE_DIR,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(port, proc, log_path)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"Vendure exited with {proc.returncode} while booting:\n{server.output()}"
                )
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"Vendure did not answer within {timeout:g}s:\n{server.output()}"
                )
            with contextlib.suppress(OSError, ValueError):
                _, doc = _post(server.admin_url, "{ __typename }", None, {})
                if isinstance(doc, dict) and doc.get("data"):
                    break
            time.sleep(0.1)
        try:
            server.seed()
        except BaseException:
            server.stop()
            raise
        return server

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.log_path.parent, ignore_errors=True)

    # -- raw calls ------------------------------------------------------------------------------

    def login(self, username: str = "superadmin", password: str = PASSWORD) -> str:
        headers, doc = _post(
            self.admin_url,
            """
            mutation($u: String!, $p: String!) {
              login(username: $u, password: $p) { __typename ... on ErrorResult { errorCode } }
            }""",
            {"u": username, "p": password},
            {},
        )
        if _data(doc, "login")["login"]["__typename"] != "CurrentUser":
            raise GraphQLFailure(f"login refused: {doc}")
        return headers["vendure-auth-token"]

    def admin(
        self, query: str, variables: Mapping[str, Any] | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """One Admin API operation as the superadmin (or with `token`)."""
        _, doc = _post(
            self.admin_url, query, variables, {"Authorization": f"Bearer {token or self.token}"}
        )
        return _data(doc, query)

    def shop(
        self, query: str, variables: Mapping[str, Any] | None = None, token: str | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """One Shop API operation in the session `token` (a new anonymous one when None);
        returns the data and the session token."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp_headers, doc = _post(self.shop_url, query, variables, headers)
        return _data(doc, query), resp_headers.get("vendure-auth-token", token)

    # -- seeding --------------------------------------------------------------------------------

    def seed(self) -> None:
        self.token = self.login()
        country = self.admin("""mutation { createCountry(input: {code: "FR", enabled: true,
            translations: [{languageCode: en, name: "France"}]}) { id } }""")
        zone = self.admin(
            'mutation($c: ID!) { createZone(input: {name: "Europe", memberIds: [$c]}) { id } }',
            {"c": country["createCountry"]["id"]},
        )["createZone"]["id"]
        channel = self.admin("{ activeChannel { id token } }")["activeChannel"]
        self.channel_token = channel["token"]
        _result(
            self.admin(
                """mutation($id: ID!, $z: ID!) { updateChannel(input: {id: $id,
            defaultTaxZoneId: $z, defaultShippingZoneId: $z}) {
            __typename ... on ErrorResult { errorCode message } } }""",
                {"id": channel["id"], "z": zone},
            ),
            "updateChannel",
        )
        category = self.admin("""mutation { createTaxCategory(input: {name: "Standard",
            isDefault: true}) { id } }""")["createTaxCategory"]["id"]
        self.admin(
            """mutation($c: ID!, $z: ID!) { createTaxRate(input: {name: "FR standard",
            enabled: true, value: 20, categoryId: $c, zoneId: $z}) { id } }""",
            {"c": category, "z": zone},
        )
        self.shipping_method = self.admin("""mutation { createShippingMethod(input: {
            code: "standard", fulfillmentHandler: "manual-fulfillment",
            checker: {code: "default-shipping-eligibility-checker",
                      arguments: [{name: "orderMinimum", value: "0"}]},
            calculator: {code: "default-shipping-calculator", arguments: [
                {name: "rate", value: "500"}, {name: "includesTax", value: "auto"},
                {name: "taxRate", value: "0"}]},
            translations: [{languageCode: en, name: "Standard", description: ""}]}) { id } }
            """)["createShippingMethod"]["id"]
        self.admin("""mutation { createPaymentMethod(input: {code: "test", enabled: true,
            handler: {code: "syncd-test-payment", arguments: []},
            translations: [{languageCode: en, name: "Test", description: ""}]}) { id } }""")
        self.syncd_role = self.admin(
            """mutation($p: [Permission!]!) { createRole(input: {
            code: "syncd", description: "syncd inventory sync", permissions: $p}) { id } }""",
            {"p": SYNCD_PERMISSIONS},
        )["createRole"]["id"]
        self.admin(
            """mutation($e: String!, $p: String!, $r: ID!) { createAdministrator(input: {
            firstName: "syncd", lastName: "connector", emailAddress: $e, password: $p,
            roleIds: [$r]}) { id } }""",
            {"e": SYNCD_USER, "p": SYNCD_PASSWORD, "r": self.syncd_role},
        )
        existing = self.admin("{ stockLocations { items { id name } } }")["stockLocations"]
        self.locations["default"] = existing["items"][0]["id"]
        for key, name in (("lyon", "Lyon DC"), ("paris", "Paris store")):
            self.locations[key] = self.admin(
                "mutation($n: String!) { createStockLocation(input: {name: $n}) { id } }",
                {"n": name},
            )["createStockLocation"]["id"]

    # -- catalogue and stock ----------------------------------------------------------------------

    def create_variant(self, sku: str, stock: Mapping[str, int] | None = None) -> str:
        """A product with one variant of that SKU; `stock` is stockOnHand per location key
        ("lyon", "paris", "default"). Returns the variant id."""
        n = next(_ids)
        product = self.admin(
            """mutation($name: String!, $slug: String!) {
            createProduct(input: {translations: [{languageCode: en, name: $name, slug: $slug,
            description: ""}]}) { id } }""",
            {"name": f"Product {sku}", "slug": f"p-{n}"},
        )
        levels = [
            {"stockLocationId": self.locations[k], "stockOnHand": q}
            for k, q in (stock or {}).items()
        ]
        created = self.admin(
            """mutation($input: [CreateProductVariantInput!]!) {
            createProductVariants(input: $input) { id } }""",
            {
                "input": [
                    {
                        "productId": product["createProduct"]["id"],
                        "sku": sku,
                        "price": 1000,
                        "translations": [{"languageCode": "en", "name": sku}],
                        "stockLevels": levels,
                    }
                ]
            },
        )
        vid: str = created["createProductVariants"][0]["id"]
        return vid

    def stock(self, variant_id: str) -> dict[str, tuple[int, int]]:
        """(stockOnHand, stockAllocated) per location key."""
        doc = self.admin(
            """query($id: ID!) { productVariant(id: $id) {
            stockLevels { stockLocationId stockOnHand stockAllocated } } }""",
            {"id": variant_id},
        )["productVariant"]
        keys = {v: k for k, v in self.locations.items()}
        return {
            keys.get(lv["stockLocationId"], lv["stockLocationId"]): (
                lv["stockOnHand"],
                lv["stockAllocated"],
            )
            for lv in doc["stockLevels"]
        }

    def on_hand(self, variant_id: str) -> dict[str, int]:
        return {k: v[0] for k, v in self.stock(variant_id).items()}

    def set_stock(self, variant_id: str, stock: Mapping[str, int]) -> None:
        """What a merchant does in the admin: set stockOnHand by hand."""
        self.admin(
            """mutation($input: [UpdateProductVariantInput!]!) {
            updateProductVariants(input: $input) { id } }""",
            {
                "input": [
                    {
                        "id": variant_id,
                        "stockLevels": [
                            {"stockLocationId": self.locations[k], "stockOnHand": q}
                            for k, q in stock.items()
                        ],
                    }
                ]
            },
        )

    def saleable(self, variant_id: str) -> int:
        """What Vendure sells: Σ (stockOnHand − stockAllocated) (outOfStockThreshold 0)."""
        return sum(on - alloc for on, alloc in self.stock(variant_id).values())

    # -- orders ---------------------------------------------------------------------------------

    def place_order(self, lines: Sequence[tuple[str, int]]) -> str:
        """A real order through the Shop API, paid with the test handler (PaymentSettled).
        Returns the order id."""
        token: str | None = None
        for variant_id, qty in lines:
            data, token = self.shop(
                """mutation($v: ID!, $q: Int!) {
                addItemToOrder(productVariantId: $v, quantity: $q) {
                __typename ... on ErrorResult { errorCode message } } }""",
                {"v": variant_id, "q": qty},
                token,
            )
            _result(data, "addItemToOrder")
        n = next(_ids)
        steps: list[tuple[str, dict[str, Any]]] = [
            (
                """mutation($e: String!) { setCustomerForOrder(input: {emailAddress: $e,
                firstName: "Test", lastName: "Customer"}) {
                __typename ... on ErrorResult { errorCode message } } }""",
                {"e": f"customer{n}@example.com"},
            ),
            (
                """mutation { setOrderShippingAddress(input: {streetLine1: "1 rue de la Paix",
                city: "Paris", postalCode: "75002", countryCode: "FR"}) {
                __typename ... on ErrorResult { errorCode message } } }""",
                {},
            ),
            (
                """mutation($m: [ID!]!) { setOrderShippingMethod(shippingMethodId: $m) {
                __typename ... on ErrorResult { errorCode message } } }""",
                {"m": [self.shipping_method]},
            ),
            (
                """mutation { transitionOrderToState(state: "ArrangingPayment") {
                __typename ... on ErrorResult { errorCode message } } }""",
                {},
            ),
        ]
        for query, variables in steps:
            data, token = self.shop(query, variables, token)
            _result(data, next(iter(data)))
        data, token = self.shop(
            """mutation { addPaymentToOrder(input: {method: "test",
            metadata: {}}) { __typename ... on Order { id state }
            ... on ErrorResult { errorCode message } } }""",
            None,
            token,
        )
        order = _result(data, "addPaymentToOrder")
        if order["state"] != "PaymentSettled":
            raise GraphQLFailure(f"order not settled: {order}")
        oid: str = order["id"]
        return oid

    def cancel_order(self, order_id: str) -> None:
        data = self.admin(
            """mutation($id: ID!) { cancelOrder(input: {orderId: $id,
            reason: "test"}) { __typename ... on Order { state }
            ... on ErrorResult { errorCode message } } }""",
            {"id": order_id},
        )
        _result(data, "cancelOrder")

    def fulfil(self, order_id: str, state: str = "Shipped") -> None:
        """Fulfil every line of the order (Vendure records the sale), then move the
        fulfillment to `state`."""
        lines = self.admin(
            "query($id: ID!) { order(id: $id) { lines { id quantity } } }", {"id": order_id}
        )["order"]["lines"]
        data = self.admin(
            """mutation($input: FulfillOrderInput!) {
            addFulfillmentToOrder(input: $input) { __typename ... on Fulfillment { id }
            ... on ErrorResult { errorCode message } } }""",
            {
                "input": {
                    "lines": [
                        {"orderLineId": ln["id"], "quantity": ln["quantity"]} for ln in lines
                    ],
                    "handler": {
                        "code": "manual-fulfillment",
                        "arguments": [
                            {"name": "method", "value": "test"},
                            {"name": "trackingCode", "value": "T1"},
                        ],
                    },
                }
            },
        )
        ful = _result(data, "addFulfillmentToOrder")
        if state != "Pending":
            data = self.admin(
                """mutation($id: ID!, $s: String!) {
                transitionFulfillmentToState(id: $id, state: $s) { __typename
                ... on ErrorResult { errorCode message } } }""",
                {"id": ful["id"], "s": state},
            )
            _result(data, "transitionFulfillmentToState")

    def order_state(self, order_id: str) -> str:
        state: str = self.admin("query($id: ID!) { order(id: $id) { state } }", {"id": order_id})[
            "order"
        ]["state"]
        return state


@contextlib.contextmanager
def running_vendure() -> Iterator[VendureServer]:
    ensure_installed()
    server = VendureServer.start()
    try:
        yield server
    finally:
        server.stop()
