"""Configuration loading: every error class, secret references, and the objects built from it."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from syncd.config import (
    Config,
    ConfigError,
    Duration,
    Secret,
    load_config,
    parse_config,
    parse_duration,
    redact_url,
    split_host_port,
)
from syncd.ledger import LedgerConfig
from syncd.model import Channel, Location
from syncd.registry import load_connector_types

REPO = Path(__file__).resolve().parent.parent

# ============================================================================================
# Fake connector types: a config_model with Secret and Duration fields, and the class
# attributes syncd reads (max_batch, per_location, basis).
# ============================================================================================


class FakePosSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    topic_prefix: str = "syncd"
    client_id: str | None = None
    username: str | None = None
    password: Secret | None = None
    keepalive: Duration = 60.0


class FakePos:
    config_model: ClassVar[type[BaseModel]] = FakePosSettings
    max_batch = 500
    per_location = True
    basis = "available"


class FakeShopSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shop_url: str
    api_version: str = "2026-04"
    access_token: Secret
    webhook_secret: Secret
    location_id: str | None = None
    poll_every: Duration = 60.0


class FakeShop:
    config_model: ClassVar[type[BaseModel]] = FakeShopSettings
    max_batch = 250
    # no per_location / basis: the defaults apply


class FakeVendureSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    admin_api_url: str


class FakeVendure:
    config_model: ClassVar[type[BaseModel]] = FakeVendureSettings
    max_batch = 100
    per_location = False
    basis = "on_hand_less_foreign"


class FakeEdiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inbox: str
    locations: dict[str, str]
    qty_qualifier: str = "33"
    sku_qualifier: str = "SK"


class FakeEdi:
    config_model: ClassVar[type[BaseModel]] = FakeEdiSettings
    max_batch = 1


REGISTRY: dict[str, type] = {
    "mqtt_pos": FakePos,
    "shopify": FakeShop,
    "vendure": FakeVendure,
    "edi_inventory": FakeEdi,
}

ENV = {
    "SYNCD_API_TOKEN": "api-token-value-1234",
    "SHOPIFY_TOKEN": "shpat_super_secret_9876",
    "SHOPIFY_WEBHOOK_SECRET": "whsec_hidden_5555",
}

VALID = """
[daemon]
state_dir = "/srv/syncd"
api_token = "env:SYNCD_API_TOKEN"
hold_ttl = "2h"
order_reservation_max_age = "7d"

[locations.paris-01]
kind = "store"
authority = "pos"
safety_stock = 1
pickup = true

[locations.lyon-dc]
kind = "warehouse"
authority = "pos"

[connectors.pos]
type = "mqtt_pos"
url = "mqtt://127.0.0.1:1883"

[connectors.shop]
type = "shopify"
shop_url = "https://example.myshopify.com"
access_token = "env:SHOPIFY_TOKEN"
webhook_secret = "env:SHOPIFY_WEBHOOK_SECRET"

[connectors.vendure]
type = "vendure"
admin_api_url = "http://127.0.0.1:3000/admin-api"

[channels.webshop]
connector = "shop"
sells_from = ["lyon-dc", "paris-01"]
safety_stock = 2
allocation = 0.5
max_quantity = 10000
location_map = { "lyon-dc" = "gid://shopify/Location/1" }

[channels.kiosks]
connector = "pos"
sells_from = ["paris-01"]

[channels.vendure]
connector = "vendure"
sells_from = ["lyon-dc"]
"""

# A minimal valid config to which each test adds one mistake.
MINIMAL = """
[locations.paris-01]
kind = "store"
authority = "pos"

[connectors.pos]
type = "mqtt_pos"
url = "mqtt://127.0.0.1:1883"
"""


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(text, registry=REGISTRY, environ=ENV if environ is None else environ)


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, environ)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# ============================================================================================
# A valid configuration and the objects built from it
# ============================================================================================


def test_valid_config_parses() -> None:
    config = parse(VALID)
    assert config.daemon.state_dir == "/srv/syncd"
    assert config.daemon.hold_ttl == 7200.0
    assert config.daemon.reconcile_every == 900.0  # default
    assert config.daemon.http_listen == "127.0.0.1:9480"
    assert config.daemon.api_token is not None
    assert config.daemon.api_token.get_secret_value() == ENV["SYNCD_API_TOKEN"]
    assert set(config.locations) == {"paris-01", "lyon-dc"}
    spec = config.connectors["shop"]
    assert spec.type == "shopify"
    assert spec.cls is FakeShop
    assert isinstance(spec.settings, FakeShopSettings)
    assert spec.settings.access_token.get_secret_value() == ENV["SHOPIFY_TOKEN"]
    assert config.channels["webshop"].allocation == 0.5


def test_database_url_defaults_to_sqlite_in_state_dir() -> None:
    config = parse(VALID)
    assert config.database_url() == "sqlite+aiosqlite:////srv/syncd/syncd.db"
    url = "postgresql+asyncpg://syncd:pa55word@db:5432/syncd"
    config = parse(MINIMAL + f'\n[daemon]\ndatabase_url = "{url}"\n')
    assert config.database_url() == url
    assert config.redacted_database_url() == "postgresql+asyncpg://syncd:***@db:5432/syncd"
    assert config.daemon.redacted_database_url() == config.redacted_database_url()


def test_bad_database_url_is_not_echoed() -> None:
    url = "mysql://root:hunter2@db/syncd"
    errors = errors_of(MINIMAL + f'\n[daemon]\ndatabase_url = "{url}"\n')
    assert errors == [
        'daemon.database_url: must start with "sqlite+aiosqlite://" or "postgresql+asyncpg://"'
    ]


def test_redact_url() -> None:
    assert redact_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert redact_url("postgresql+asyncpg://u:p@ss@h/db") == "postgresql+asyncpg://u:***@h/db"
    assert redact_url("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"


def test_ledger_config_builds_locations_and_channels() -> None:
    config = parse(VALID)
    ledger = config.ledger_config()
    assert isinstance(ledger, LedgerConfig)
    assert ledger.order_reservation_max_age == 7 * 86_400 * 1_000_000
    assert isinstance(ledger.order_reservation_max_age, int)
    assert ledger.locations["paris-01"] == Location(
        name="paris-01", kind="store", authority="pos", safety_stock=1, pickup=True
    )
    assert ledger.locations["lyon-dc"] == Location(
        name="lyon-dc", kind="warehouse", authority="pos", safety_stock=0, pickup=False
    )
    assert ledger.channels["webshop"] == Channel(
        name="webshop",
        connector="shop",
        sells_from=("lyon-dc", "paris-01"),
        safety_stock=2,
        allocation=0.5,
        max_quantity=10000,
        location_map=(("lyon-dc", "gid://shopify/Location/1"),),
        per_location=False,  # FakeShop has no per_location: the default
        basis="available",  # FakeShop has no basis: the default
    )
    kiosks = ledger.channels["kiosks"]
    assert kiosks.per_location is True  # from FakePos.per_location
    assert kiosks.basis == "available"
    assert kiosks.location_map == ()
    assert kiosks.max_quantity == 1_000_000
    assert ledger.channels["vendure"].basis == "on_hand_less_foreign"  # from FakeVendure.basis
    # the names are the interned strings that the keys of levels and outbox rows hold
    web = ledger.channels["webshop"]
    names = [web.name, *web.sells_from, *(n for pair in web.location_map for n in pair),
             *ledger.locations, *(loc.name for loc in ledger.locations.values())]
    assert all(sys.intern(name) is name for name in names)


def test_connector_channels() -> None:
    config = parse(VALID)
    assert set(config.connector_channels("shop")) == {"webshop"}
    assert config.connector_channels("pos")["kiosks"].per_location is True
    assert config.connector_channels("nobody") == {}


def test_example_config_parses() -> None:
    config = load_config(REPO / "config.example.toml", registry=REGISTRY, environ=ENV)
    assert set(config.locations) == {"paris-01", "lyon-dc"}
    assert {name: spec.type for name, spec in config.connectors.items()} == {
        "pos": "mqtt_pos",
        "wms": "edi_inventory",
        "shop": "shopify",
    }
    assert set(config.channels) == {"webshop", "kiosks"}
    assert config.daemon.reconcile_every == 900.0
    assert config.daemon.hold_ttl == 48 * 3600.0
    assert config.daemon.order_reservation_max_age == 14 * 86400.0
    assert config.daemon.shutdown_timeout == 25.0
    assert config.database_url() == "sqlite+aiosqlite:////var/lib/syncd/syncd.db"
    config.ledger_config()


def test_example_config_documents_every_key() -> None:
    """Every key of [daemon], a location and a channel appears in the example."""
    from syncd.config import ChannelConfig, DaemonConfig, LocationConfig

    text = (REPO / "config.example.toml").read_text()
    for model in (DaemonConfig, LocationConfig, ChannelConfig):
        for key in model.model_fields:
            assert key in text, f"{model.__name__}.{key} is not in config.example.toml"


# ============================================================================================
# One test per error class
# ============================================================================================


def test_unknown_key() -> None:
    errors = errors_of(MINIMAL.replace('kind = "store"', 'kind = "store"\nsafty_stock = 1'))
    assert errors == ["locations.paris-01.safty_stock: unknown key"]


def test_unknown_key_in_daemon() -> None:
    assert errors_of(MINIMAL + '\n[daemon]\nstate_dri = "/x"\n') == [
        "daemon.state_dri: unknown key"
    ]


def test_unknown_section() -> None:
    assert errors_of(MINIMAL + "\n[location.extra]\nkind = 1\n") == ["location: unknown key"]


def test_missing_key() -> None:
    errors = errors_of(MINIMAL.replace('kind = "store"\n', ""))
    assert errors == ["locations.paris-01.kind: required key missing"]


def test_wrong_type() -> None:
    errors = errors_of(MINIMAL.replace('kind = "store"', 'kind = "store"\nsafety_stock = "3"'))
    assert errors == ["locations.paris-01.safety_stock: Input should be a valid integer"]
    errors = errors_of(MINIMAL.replace('kind = "store"', 'kind = "store"\npickup = "yes"'))
    assert errors == ["locations.paris-01.pickup: Input should be a valid boolean"]


def test_out_of_range() -> None:
    errors = errors_of(MINIMAL.replace('kind = "store"', 'kind = "store"\nsafety_stock = -1'))
    assert errors == ["locations.paris-01.safety_stock: Input should be greater than or equal to 0"]
    errors = errors_of(
        MINIMAL + '\n[channels.c]\nconnector = "pos"\nsells_from = ["paris-01"]\nallocation = 1.5\n'
    )
    assert errors == ["channels.c.allocation: Input should be less than or equal to 1"]


def test_bad_literal() -> None:
    errors = errors_of(MINIMAL.replace('kind = "store"', 'kind = "shop"'))
    assert errors == ["locations.paris-01.kind: Input should be 'store' or 'warehouse'"]


def test_bad_duration() -> None:
    expected = 'expected a duration like "500ms", "30s", "15m", "48h" or "14d"'
    assert errors_of(MINIMAL + '\n[daemon]\nhold_ttl = "2 days"\n') == [
        f"daemon.hold_ttl: {expected}"
    ]
    # a bare number is refused: the unit is never implied
    assert errors_of(MINIMAL + "\n[daemon]\nreconcile_every = 900\n") == [
        f"daemon.reconcile_every: {expected}"
    ]
    assert errors_of(MINIMAL + '\n[daemon]\nreconcile_every = "0s"\n') == [
        "daemon.reconcile_every: Input should be greater than 0"
    ]


def test_duration_in_connector_settings() -> None:
    errors = errors_of(MINIMAL + 'keepalive = "forever"\n')
    assert errors == [
        'connectors.pos.keepalive: expected a duration like "500ms", "30s", "15m", "48h" or "14d"'
    ]
    settings = parse(MINIMAL + 'keepalive = "500ms"\n').connectors["pos"].settings
    assert isinstance(settings, FakePosSettings)
    assert settings.keepalive == 0.5


@pytest.mark.parametrize(
    "value", ["localhost", "127.0.0.1", ":9480", "::1:9480", "[::1]", "[nope]:80", "h:abc"]
)
def test_bad_host_port(value: str) -> None:
    errors = errors_of(MINIMAL + f'\n[daemon]\nhttp_listen = "{value}"\n')
    assert errors == [
        'daemon.http_listen: expected "host:port" like "127.0.0.1:9480" or "[::1]:9480"'
    ]


@pytest.mark.parametrize("value", ["127.0.0.1:0", "127.0.0.1:65536"])
def test_bad_port(value: str) -> None:
    errors = errors_of(MINIMAL + f'\n[daemon]\nhttp_listen = "{value}"\n')
    assert errors == ["daemon.http_listen: port must be between 1 and 65535"]


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:9480") == ("127.0.0.1", 9480)
    assert split_host_port("[::1]:9480") == ("::1", 9480)
    assert split_host_port("0.0.0.0:80") == ("0.0.0.0", 80)
    assert split_host_port("localhost:65535") == ("localhost", 65535)
    with pytest.raises(ValueError, match="host:port"):
        split_host_port("localhost")
    config = parse(MINIMAL + '\n[daemon]\nhttp_listen = "[::1]:9480"\n')
    assert config.daemon.http_listen == "[::1]:9480"


def test_toml_syntax_error_has_line_and_column() -> None:
    text = '[daemon]\nstate_dir = "/x"\nhold_ttl = 48h\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="syncd.toml", registry=REGISTRY, environ=ENV)
    assert info.value.errors == [
        "syncd.toml: line 3, column 14: Expected newline or end of document after a statement"
    ]


def test_toml_syntax_error_at_end_of_document() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[daemon]\nstate_dir = ", source="c.toml", registry=REGISTRY, environ=ENV)
    assert info.value.errors == ["c.toml: line 2, column 13: Invalid value"]


def test_unknown_authority() -> None:
    errors = errors_of(MINIMAL.replace('authority = "pos"', 'authority = "till"'))
    assert errors == ["locations.paris-01.authority: unknown connector 'till'"]


def test_unknown_channel_connector() -> None:
    errors = errors_of(
        MINIMAL + '\n[channels.web]\nconnector = "shop"\nsells_from = ["paris-01"]\n'
    )
    assert errors == ["channels.web.connector: unknown connector 'shop'"]


def test_unknown_sells_from_location() -> None:
    errors = errors_of(
        MINIMAL + '\n[channels.web]\nconnector = "pos"\nsells_from = ["paris-01", "nice-02"]\n'
    )
    assert errors == ["channels.web.sells_from: unknown location 'nice-02'"]


def test_duplicate_sells_from() -> None:
    errors = errors_of(
        MINIMAL + '\n[channels.web]\nconnector = "pos"\nsells_from = ["paris-01", "paris-01"]\n'
    )
    assert errors == ["channels.web.sells_from: location 'paris-01' is listed twice"]


def test_empty_sells_from() -> None:
    errors = errors_of(MINIMAL + '\n[channels.web]\nconnector = "pos"\nsells_from = []\n')
    assert len(errors) == 1
    assert errors[0].startswith("channels.web.sells_from: List should have at least 1 item")


def test_sells_from_wrong_type_is_indexed() -> None:
    errors = errors_of(
        MINIMAL + '\n[channels.webshop]\nconnector = "pos"\nsells_from = ["paris-01", 7]\n'
    )
    assert errors == ["channels.webshop.sells_from.1: Input should be a valid string"]


def test_location_map_not_in_sells_from() -> None:
    errors = errors_of(
        MINIMAL + '\n[locations.lyon-dc]\nkind = "warehouse"\nauthority = "pos"\n'
        '\n[channels.web]\nconnector = "pos"\nsells_from = ["paris-01"]\n'
        'location_map = { "lyon-dc" = "L1" }\n'
    )
    assert errors == ["channels.web.location_map.lyon-dc: not in sells_from"]


def test_location_map_sends_each_channel_side_location_one_figure() -> None:
    """Two stores mapped to one channel-side location would overwrite each other's figure."""
    errors = errors_of(
        MINIMAL + '\n[locations.lyon-dc]\nkind = "warehouse"\nauthority = "pos"\n'
        '\n[channels.web]\nconnector = "pos"\nsells_from = ["paris-01", "lyon-dc"]\n'
        'location_map = { "paris-01" = "L1", "lyon-dc" = "L1" }\n'
    )
    assert errors == ["channels.web.location_map.lyon-dc: 'L1' already takes the figure of "
                      "'paris-01'; a channel-side location takes one location's figure"]


def test_at_least_one_location() -> None:
    text = '[connectors.pos]\ntype = "mqtt_pos"\nurl = "mqtt://h"\n'
    assert errors_of(text) == ["locations: at least one location is required"]


def test_section_must_be_a_table() -> None:
    assert errors_of("locations = 3\n") == ["locations: expected a table"]


def test_invalid_name() -> None:
    errors = errors_of(MINIMAL + '\n[channels."web shop"]\nconnector = "pos"\nsells_from = []\n')
    assert len(errors) == 1
    assert errors[0].startswith("channels.web shop: invalid name")


def test_unknown_connector_type() -> None:
    errors = errors_of(MINIMAL.replace('type = "mqtt_pos"', 'type = "mqtt"'))
    assert errors == [
        "connectors.pos.type: unknown connector type 'mqtt' "
        "(known: edi_inventory, mqtt_pos, shopify, vendure)"
    ]


def test_connector_type_missing() -> None:
    errors = errors_of(MINIMAL.replace('type = "mqtt_pos"\n', ""))
    assert errors == ["connectors.pos.type: required key missing"]


def test_connector_schema_error_is_prefixed() -> None:
    errors = errors_of(MINIMAL.replace('url = "mqtt://127.0.0.1:1883"', 'urll = "mqtt://h"'))
    assert errors == [
        "connectors.pos.url: required key missing",
        "connectors.pos.urll: unknown key",
    ]


# ============================================================================================
# Secrets
# ============================================================================================


SHOP = """
[connectors.shop]
type = "shopify"
shop_url = "https://example.myshopify.com"
access_token = "{token}"
webhook_secret = "env:SHOPIFY_WEBHOOK_SECRET"
"""


def test_secret_env_missing_names_the_reference() -> None:
    errors = errors_of(MINIMAL + SHOP.format(token="env:SHOPIFY_TOKEN"), environ={})
    assert errors == [
        "connectors.shop.access_token: env:SHOPIFY_TOKEN is not set",
        "connectors.shop.webhook_secret: env:SHOPIFY_WEBHOOK_SECRET is not set",
    ]


def test_secret_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    errors = errors_of(MINIMAL + SHOP.format(token=f"file:{missing}"))
    assert errors == [
        f"connectors.shop.access_token: file:{missing}: cannot read (No such file or directory)"
    ]


def test_secret_file_resolved(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-a-file\n\n")
    config = parse(MINIMAL + SHOP.format(token=f"file:{path}"))
    settings = config.connectors["shop"].settings
    assert isinstance(settings, FakeShopSettings)
    assert settings.access_token.get_secret_value() == "from-a-file\n"  # one newline stripped


def test_secret_file_must_be_absolute() -> None:
    errors = errors_of(MINIMAL + SHOP.format(token="file:token.txt"))
    assert errors == ['connectors.shop.access_token: "file:" must be followed by an absolute path']


def test_secret_cred_without_credentials_directory() -> None:
    errors = errors_of(MINIMAL + SHOP.format(token="cred:shopify-token"))
    assert errors == [
        "connectors.shop.access_token: cred:shopify-token: $CREDENTIALS_DIRECTORY is not set"
    ]


def test_secret_cred_resolved(tmp_path: Path) -> None:
    (tmp_path / "shopify-token").write_text("from-credentials\n")
    environ = {**ENV, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    config = parse(MINIMAL + SHOP.format(token="cred:shopify-token"), environ=environ)
    settings = config.connectors["shop"].settings
    assert isinstance(settings, FakeShopSettings)
    assert settings.access_token.get_secret_value() == "from-credentials"


def test_secret_cred_missing_file(tmp_path: Path) -> None:
    environ = {**ENV, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    errors = errors_of(MINIMAL + SHOP.format(token="cred:absent"), environ=environ)
    assert errors == [
        "connectors.shop.access_token: cred:absent: cannot read (No such file or directory)"
    ]


def test_secret_cred_name_cannot_escape_the_directory(tmp_path: Path) -> None:
    environ = {**ENV, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    errors = errors_of(MINIMAL + SHOP.format(token="cred:../etc/passwd"), environ=environ)
    assert errors == ['connectors.shop.access_token: "cred:" must be followed by a credential name']


def test_inline_secret_is_refused_without_echoing_it() -> None:
    literal = "shpat_0123456789abcdef"
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + SHOP.format(token=literal))
    assert info.value.errors == [
        "connectors.shop.access_token: secrets are never inline: "
        'use "env:NAME", "file:/path" or "cred:NAME"'
    ]
    assert literal not in str(info.value)
    assert literal not in repr(info.value)


def test_inline_secret_in_daemon_is_refused() -> None:
    literal = "let-me-in"
    errors = errors_of(MINIMAL + f'\n[daemon]\napi_token = "{literal}"\n')
    assert errors == [
        'daemon.api_token: secrets are never inline: use "env:NAME", "file:/path" or "cred:NAME"'
    ]
    assert literal not in "\n".join(errors)


def test_secret_values_never_appear_in_errors_or_repr() -> None:
    config = parse(VALID)
    for value in ENV.values():
        assert value not in repr(config)
        assert value not in str(config)
        assert value not in repr(config.connectors["shop"])
        assert value not in repr(config.daemon)
    # an invalid config whose secrets resolved: still nothing in the error
    broken = VALID.replace('shop_url = "https://example.myshopify.com"', "shop_url = 3")
    broken = broken.replace('kind = "store"', 'kind = "store"\nsafty_stock = 1')
    with pytest.raises(ConfigError) as info:
        parse(broken)
    for value in ENV.values():
        assert value not in str(info.value)
        assert value not in repr(info.value)


def test_environ_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_TEST_TOKEN", "process-env-value")
    config = parse_config(
        MINIMAL + '\n[daemon]\napi_token = "env:SYNCD_TEST_TOKEN"\n', registry=REGISTRY
    )
    assert config.daemon.api_token is not None
    assert config.daemon.api_token.get_secret_value() == "process-env-value"


# ============================================================================================
# Several errors at once, and loading from a file
# ============================================================================================


def test_several_errors_all_listed() -> None:
    text = """
top = 1

[daemon]
hold_ttl = "soon"
http_listen = "nowhere"

[locations.paris-01]
kind = "store"
authority = "till"
safty_stock = 1

[connectors.pos]
type = "mqtt_pos"

[connectors.x]
type = "carrier_pigeon"

[channels.webshop]
connector = "shop"
sells_from = ["paris-01", "nice"]
allocation = 0
"""
    errors = errors_of(text)
    assert sorted(errors) == sorted(
        [
            "top: unknown key",
            'daemon.hold_ttl: expected a duration like "500ms", "30s", "15m", "48h" or "14d"',
            'daemon.http_listen: expected "host:port" like "127.0.0.1:9480" or "[::1]:9480"',
            "locations.paris-01.safty_stock: unknown key",
            "connectors.pos.url: required key missing",
            "connectors.x.type: unknown connector type 'carrier_pigeon' "
            "(known: edi_inventory, mqtt_pos, shopify, vendure)",
            "channels.webshop.allocation: Input should be greater than 0",
        ]
    )
    # cross-references are checked over the entries that validated: a broken location's
    # authority is not checked, a broken channel's references neither
    text2 = text.replace("safty_stock = 1\n", "").replace("allocation = 0\n", "")
    errors2 = errors_of(text2)
    assert "locations.paris-01.authority: unknown connector 'till'" in errors2
    assert "channels.webshop.connector: unknown connector 'shop'" in errors2
    assert "channels.webshop.sells_from: unknown location 'nice'" in errors2
    assert "connectors.pos.url: required key missing" in errors2


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, registry=REGISTRY, environ=ENV)
    assert info.value.errors == [f"{path}: cannot read (No such file or directory)"]


def test_load_config_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text("[daemon\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, registry=REGISTRY, environ=ENV)
    assert info.value.errors == [
        f"{path}: line 1, column 8: Expected ']' at the end of a table declaration"
    ]


def test_registry_load_errors_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import syncd.registry

    def fake_load() -> tuple[dict[str, type], list[str]]:
        return {"mqtt_pos": FakePos}, [
            "connectors: type 'shopify' failed to load: ImportError: no module named x"
        ]

    monkeypatch.setattr(syncd.registry, "load_connector_types", fake_load)
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + SHOP.format(token="env:SHOPIFY_TOKEN"), environ=ENV)
    # the type that failed to load is not also reported as unknown
    assert info.value.errors == [
        "connectors: type 'shopify' failed to load: ImportError: no module named x"
    ]


def test_registry_from_entry_points() -> None:
    types, errors = load_connector_types()
    assert isinstance(types, dict)
    assert isinstance(errors, list)
    for name, cls in types.items():
        assert isinstance(name, str)
        assert isinstance(cls, type)


def test_registry_reports_a_broken_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import syncd.registry

    eps = [
        EntryPoint("good", "tests.test_config:FakePos", "syncd.connectors"),
        EntryPoint("broken", "tests.no_such_module:Nope", "syncd.connectors"),
    ]

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        assert group == "syncd.connectors"
        return eps

    monkeypatch.setattr(syncd.registry, "entry_points", fake_entry_points)
    types, errors = syncd.registry.load_connector_types()
    assert types == {"good": FakePos}
    assert errors == [
        "connectors: type 'broken' failed to load: "
        "ModuleNotFoundError: No module named 'tests.no_such_module'"
    ]


# ============================================================================================
# parse_duration (property tests)
# ============================================================================================

FACTORS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


@given(n=st.integers(min_value=0, max_value=10**6), unit=st.sampled_from(sorted(FACTORS)))
def test_parse_duration_round_trip(n: int, unit: str) -> None:
    expected = n / 1000 if unit == "ms" else float(n * FACTORS[unit])
    assert parse_duration(f"{n}{unit}") == expected


@given(
    st.one_of(
        st.text(),
        st.text(alphabet="0123456789.msdh -+e_"),
        st.from_regex(r"[0-9]{1,400}(\.[0-9]{0,30})?(ms|s|m|h|d|)", fullmatch=True),
    )
)
def test_parse_duration_parses_or_raises_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert isinstance(seconds, float)
    assert math.isfinite(seconds)
    assert seconds >= 0


@pytest.mark.parametrize("text", ["30", "", "1.5", "-1s", "1 s", "1S", "1e3s", "1.s", ".5s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration like"):
        parse_duration(text)


def test_parse_duration_fraction() -> None:
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration("500ms") == 0.5


def test_integer_allocation_is_accepted() -> None:
    config = parse(
        MINIMAL + '\n[channels.c]\nconnector = "pos"\nsells_from = ["paris-01"]\nallocation = 1\n'
    )
    assert config.channels["c"].allocation == 1.0
