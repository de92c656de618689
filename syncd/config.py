"""The configuration file: TOML, validated in full before anything starts.

`load_config(path)` reads, parses and validates the whole file and either returns a `Config` or
raises one `ConfigError` that lists *every* problem, one line each, as `dotted.key.path: message`
(syntax errors as `<file>: line L, column C: message`). Sections are validated independently, so a
mistake in one never hides a mistake in another.

Secrets are never inline. A `Secret` field takes a reference, resolved while validating:

- `"env:NAME"`  the environment variable NAME;
- `"file:/abs/path"`  the file's contents (one trailing newline stripped);
- `"cred:NAME"`  the systemd credential `$CREDENTIALS_DIRECTORY/NAME` (`LoadCredential=`).

Errors name the reference, never a value; resolved values are `SecretStr` and print masked.

Each `[connectors.<name>]` table has a `type`, looked up among the installed connector types
(`syncd.registry`); the rest of the table is validated by that type's `config_model`.
"""

from __future__ import annotations

import builtins
import ipaddress
import math
import os
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from .ledger import LedgerConfig
from .model import Channel, Location

__all__ = [
    "ChannelConfig",
    "Config",
    "ConfigError",
    "ConnectorSpec",
    "DaemonConfig",
    "Duration",
    "HostPort",
    "LocationConfig",
    "PositiveDuration",
    "Secret",
    "load_config",
    "parse_config",
    "parse_duration",
    "redact_url",
    "split_host_port",
]

SECTIONS = ("daemon", "locations", "connectors", "channels")

DEFAULT_HTTP_LISTEN = "127.0.0.1:9480"
DATABASE_SCHEMES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")


class ConfigError(Exception):
    """Everything wrong with a configuration, one `dotted.key.path: message` line per problem."""

    def __init__(self, errors: list[str] | str) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


# -- durations -------------------------------------------------------------------------------

_DURATION_MESSAGE = 'expected a duration like "500ms", "30s", "15m", "48h" or "14d"'
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)", re.ASCII)
_UNIT_SECONDS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}


def parse_duration(text: str) -> float:
    """`"500ms"`, `"30s"`, `"15m"`, `"48h"`, `"14d"` (a decimal fraction is allowed) as seconds.

    Raises `ValueError` for anything else, including a bare number: the unit is never implied."""
    if not isinstance(text, str):
        raise ValueError(_DURATION_MESSAGE)
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(_DURATION_MESSAGE)
    seconds = float(Decimal(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if not math.isfinite(seconds):
        raise ValueError("duration is too large")
    return seconds


def _validate_duration(value: object) -> float:
    if not isinstance(value, str):
        raise PydanticCustomError("duration", _DURATION_MESSAGE)
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("duration", "{detail}", {"detail": str(exc)}) from None


# Seconds, always written as a string with a unit (a bare number is refused: 30 what?).
# Field defaults are plain floats, which pydantic does not validate.
Duration = Annotated[float, BeforeValidator(_validate_duration)]
PositiveDuration = Annotated[Duration, annotated_types.Gt(0)]


# -- secrets ---------------------------------------------------------------------------------

# Where `env:` and `cred:` references are resolved. `load_config(..., environ=...)` sets it for
# the duration of one validation, so tests never touch the process environment.
_ENVIRON: ContextVar[Mapping[str, str]] = ContextVar("syncd_config_environ", default=os.environ)

_INLINE_MESSAGE = 'secrets are never inline: use "env:NAME", "file:/path" or "cred:NAME"'
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_CRED_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*", re.ASCII)


def _secret_error(detail: str) -> PydanticCustomError:
    return PydanticCustomError("secret_reference", "{detail}", {"detail": detail})


def _read_secret_file(ref: str, path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _secret_error(f"{ref}: cannot read ({reason})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _secret_error(f"{ref}: not valid UTF-8") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise _secret_error(f"{ref}: is empty")
    return text


def _resolve_secret(value: object) -> str:
    """A reference, resolved. Messages name the reference and never the value."""
    if not isinstance(value, str):
        raise _secret_error(_INLINE_MESSAGE)
    scheme, sep, rest = value.partition(":")
    if not sep or scheme not in ("env", "file", "cred"):
        raise _secret_error(_INLINE_MESSAGE)
    environ = _ENVIRON.get()
    if scheme == "env":
        if not _ENV_NAME_RE.fullmatch(rest):
            raise _secret_error('"env:" must be followed by an environment variable name')
        resolved = environ.get(rest)
        if resolved is None:
            raise _secret_error(f"{value} is not set")
        if not resolved:
            raise _secret_error(f"{value} is empty")
        return resolved
    if scheme == "file":
        if not rest.startswith("/"):
            raise _secret_error('"file:" must be followed by an absolute path')
        return _read_secret_file(value, Path(rest))
    # cred:
    if not _CRED_NAME_RE.fullmatch(rest) or rest in (".", ".."):
        raise _secret_error('"cred:" must be followed by a credential name')
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise _secret_error(f"{value}: $CREDENTIALS_DIRECTORY is not set")
    return _read_secret_file(value, Path(directory) / rest)


# A credential given by reference ("env:NAME", "file:/abs/path", "cred:NAME"), resolved while
# validating; the value is a `SecretStr` (`.get_secret_value()`), masked in every repr.
Secret = Annotated[SecretStr, BeforeValidator(_resolve_secret)]


# -- host:port -------------------------------------------------------------------------------

_HOSTPORT_MESSAGE = 'expected "host:port" like "127.0.0.1:9480" or "[::1]:9480"'
_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
    re.ASCII,
)


def split_host_port(value: str) -> tuple[str, int]:
    """`"127.0.0.1:9480"` → `("127.0.0.1", 9480)`; `"[::1]:9480"` → `("::1", 9480)`.

    Raises `ValueError` when `value` is not a host and a port in 1..65535."""
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ValueError(_HOSTPORT_MESSAGE)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(_HOSTPORT_MESSAGE) from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(_HOSTPORT_MESSAGE)
        if not _HOSTNAME_RE.fullmatch(host):
            raise ValueError(_HOSTPORT_MESSAGE)
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(_HOSTPORT_MESSAGE)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return host, port


def _validate_host_port(value: str) -> str:
    try:
        split_host_port(value)
    except ValueError as exc:
        raise PydanticCustomError("host_port", "{detail}", {"detail": str(exc)}) from None
    return value


# A listen address, "host:port" (IPv6 hosts in brackets). Split it with `split_host_port`.
HostPort = Annotated[str, AfterValidator(_validate_host_port)]


# -- database URL ----------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL with the password of its user info (if any) masked, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    if at < 0:
        return url
    user, colon, _password = rest[:at].partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:***{rest[at:]}"


# -- models ----------------------------------------------------------------------------------

_MODEL_CONFIG = ConfigDict(
    extra="forbid",
    strict=True,
    frozen=True,
    hide_input_in_errors=True,
)

MAX_BODY_LIMIT = 64 * 1024 * 1024


class DaemonConfig(BaseModel):
    """`[daemon]`: the process itself."""

    model_config = _MODEL_CONFIG

    state_dir: Annotated[str, Field(min_length=1)] = "/var/lib/syncd"
    database_url: str | None = None
    http_listen: HostPort = DEFAULT_HTTP_LISTEN
    api_token: Secret | None = None
    reconcile_every: PositiveDuration = 15 * 60.0
    hold_ttl: PositiveDuration = 48 * 3600.0
    order_reservation_max_age: PositiveDuration = 14 * 86400.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: Annotated[int, Field(ge=1, le=MAX_BODY_LIMIT)] = 1_048_576
    shutdown_timeout: PositiveDuration = 25.0

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(DATABASE_SCHEMES):
            # never echo the URL: it may carry a password
            raise PydanticCustomError(
                "database_url",
                'must start with "sqlite+aiosqlite://" or "postgresql+asyncpg://"',
            )
        return value

    def redacted_database_url(self) -> str | None:
        """`database_url` with its password masked (None when not set)."""
        return None if self.database_url is None else redact_url(self.database_url)


class LocationConfig(BaseModel):
    """`[locations.<name>]`: a place where stock physically is."""

    model_config = _MODEL_CONFIG

    kind: Literal["store", "warehouse"]
    authority: str
    safety_stock: Annotated[int, Field(ge=0)] = 0
    pickup: bool = False


class ChannelConfig(BaseModel):
    """`[channels.<name>]`: a place where stock is offered, served by one connector."""

    model_config = _MODEL_CONFIG

    connector: str
    sells_from: Annotated[list[str], Field(min_length=1)]
    safety_stock: Annotated[int, Field(ge=0)] = 0
    allocation: Annotated[float, Field(gt=0, le=1)] = 1.0
    max_quantity: Annotated[int, Field(ge=0)] = 1_000_000
    location_map: dict[str, str] = Field(default_factory=dict)

    @field_validator("sells_from")
    @classmethod
    def _no_duplicates(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise PydanticCustomError(
                    "duplicate_location", "location '{name}' is listed twice", {"name": name}
                )
            seen.add(name)
        return value


@dataclass(slots=True, frozen=True)
class ConnectorSpec:
    """`[connectors.<name>]`: its type, the class registered for it and its validated settings."""

    type: str
    settings: BaseModel
    cls: builtins.type[Any]


def _channel(name: str, ch: ChannelConfig, connectors: Mapping[str, ConnectorSpec]) -> Channel:
    spec = connectors.get(ch.connector)
    cls: Any = spec.cls if spec is not None else None
    # names interned, as the keys of levels and outbox rows are (`model.kept_key`): a figure's
    # key built from them then matches its row by identity
    return Channel(
        name=sys.intern(name),
        connector=ch.connector,
        sells_from=tuple(map(sys.intern, ch.sells_from)),
        safety_stock=ch.safety_stock,
        allocation=ch.allocation,
        max_quantity=ch.max_quantity,
        location_map=tuple((sys.intern(k), sys.intern(v)) for k, v in ch.location_map.items()),
        per_location=bool(getattr(cls, "per_location", False)),
        basis=str(getattr(cls, "basis", "available")),
    )


@dataclass(slots=True, frozen=True)
class Config:
    """A validated configuration."""

    daemon: DaemonConfig
    locations: dict[str, LocationConfig]
    connectors: dict[str, ConnectorSpec]
    channels: dict[str, ChannelConfig]
    source: str = "<config>"

    def database_url(self) -> str:
        """The configured URL, or SQLite in the state directory."""
        if self.daemon.database_url is not None:
            return self.daemon.database_url
        return f"sqlite+aiosqlite:///{self.daemon.state_dir.rstrip('/') or '/'}/syncd.db"

    def redacted_database_url(self) -> str:
        return redact_url(self.database_url())

    def location_objects(self) -> dict[str, Location]:
        return {
            sys.intern(name): Location(
                name=sys.intern(name),  # as the keys of levels are (`model.kept_key`)
                kind=loc.kind,
                authority=loc.authority,
                safety_stock=loc.safety_stock,
                pickup=loc.pickup,
            )
            for name, loc in self.locations.items()
        }

    def channel(self, name: str) -> Channel:
        return _channel(name, self.channels[name], self.connectors)

    def channel_objects(self) -> dict[str, Channel]:
        return {name: self.channel(name) for name in self.channels}

    def connector_channels(self, connector_name: str) -> dict[str, Channel]:
        """The channels served by one connector (empty when it serves none)."""
        return {
            name: self.channel(name)
            for name, ch in self.channels.items()
            if ch.connector == connector_name
        }

    def ledger_config(self) -> LedgerConfig:
        return LedgerConfig(
            locations=self.location_objects(),
            channels=self.channel_objects(),
            order_reservation_max_age=round(self.daemon.order_reservation_max_age * 1_000_000),
        )


# -- validation ------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
_NAME_MESSAGE = 'invalid name: use letters, digits, "-" and "_" (at most 64 characters)'
_PREFIXES_TO_DROP = ("Value error, ", "Assertion failed, ")
_TOML_POSITION_RE = re.compile(
    r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$", re.S
)
_TOML_END_RE = re.compile(r"^(?P<msg>.*) \(at end of document\)$", re.S)


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key missing"
    msg = str(err.get("msg", "invalid"))
    for prefix in _PREFIXES_TO_DROP:
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def _pydantic_errors(prefix: str, exc: ValidationError) -> list[str]:
    """One line per error, built from `loc` and `msg` only: the input is never shown."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        path = ".".join([prefix, *(str(part) for part in err["loc"])])
        lines.append(f"{path}: {_message(err)}")
    return lines


def _toml_error(source: str, text: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    lineno = getattr(exc, "lineno", None)
    colno = getattr(exc, "colno", None)
    raw_msg = getattr(exc, "msg", None)
    if isinstance(lineno, int) and isinstance(colno, int) and isinstance(raw_msg, str):
        return f"{source}: line {lineno}, column {colno}: {raw_msg}"
    match = _TOML_POSITION_RE.match(message)
    if match:
        return f"{source}: line {match['line']}, column {match['col']}: {match['msg']}"
    match = _TOML_END_RE.match(message)
    if match:
        lines = text.split("\n")
        return f"{source}: line {len(lines)}, column {len(lines[-1]) + 1}: {match['msg']}"
    return f"{source}: {message}"


def _table(data: Mapping[str, Any], key: str, errors: list[str]) -> dict[str, Any] | None:
    """A section as a dict (empty when absent); None, with an error, when it is not a table."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        errors.append(f"{key}: expected a table")
        return None
    return value


def _entries(
    section: str, table: dict[str, Any], errors: list[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """`[section.<name>]` entries that are tables with a valid name; errors for the others."""
    for name, value in table.items():
        if not _NAME_RE.fullmatch(name):
            errors.append(f"{section}.{name}: {_NAME_MESSAGE}")
            continue
        if not isinstance(value, dict):
            errors.append(f"{section}.{name}: expected a table")
            continue
        yield name, value


def _validate_connector(
    name: str,
    raw: dict[str, Any],
    registry: Mapping[str, type],
    unavailable: frozenset[str],
    errors: list[str],
) -> ConnectorSpec | None:
    path = f"connectors.{name}"
    settings = dict(raw)
    type_name = settings.pop("type", None)
    if type_name is None:
        errors.append(f"{path}.type: required key missing")
        return None
    if not isinstance(type_name, str):
        errors.append(f"{path}.type: Input should be a valid string")
        return None
    cls = registry.get(type_name)
    if cls is None:
        if type_name not in unavailable:  # its load error is already listed
            known = ", ".join(sorted(registry)) or "none installed"
            errors.append(f"{path}.type: unknown connector type {type_name!r} (known: {known})")
        return None
    model = getattr(cls, "config_model", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        errors.append(f"{path}.type: connector type {type_name!r} declares no config_model")
        return None
    try:
        validated = model.model_validate(settings)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(path, exc))
        return None
    return ConnectorSpec(type=type_name, settings=validated, cls=cls)


@contextmanager
def _resolving_in(environ: Mapping[str, str] | None) -> Iterator[None]:
    token = _ENVIRON.set(os.environ if environ is None else environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def _parse(
    text: str,
    *,
    source: str,
    registry: Mapping[str, type],
    environ: Mapping[str, str] | None,
    errors: list[str],
    unavailable: frozenset[str] = frozenset(),
) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([*errors, _toml_error(source, text, exc)]) from None

    for key in data:
        if key not in SECTIONS:
            errors.append(f"{key}: unknown key")

    with _resolving_in(environ):
        daemon: DaemonConfig | None = None
        daemon_raw = _table(data, "daemon", errors)
        if daemon_raw is not None:
            try:
                daemon = DaemonConfig.model_validate(daemon_raw)
            except ValidationError as exc:
                errors.extend(_pydantic_errors("daemon", exc))

        # names as written, even when the entry itself is invalid: a reference to a connector
        # whose settings are wrong is not also an "unknown connector"
        locations: dict[str, LocationConfig] = {}
        locations_raw = _table(data, "locations", errors)
        location_names: set[str] = set(locations_raw or ())
        if locations_raw is not None:
            if not locations_raw:
                errors.append("locations: at least one location is required")
            for name, raw in _entries("locations", locations_raw, errors):
                try:
                    locations[name] = LocationConfig.model_validate(raw)
                except ValidationError as exc:
                    errors.extend(_pydantic_errors(f"locations.{name}", exc))

        connectors: dict[str, ConnectorSpec] = {}
        connectors_raw = _table(data, "connectors", errors)
        connector_names: set[str] = set(connectors_raw or ())
        if connectors_raw is not None:
            for name, raw in _entries("connectors", connectors_raw, errors):
                spec = _validate_connector(name, raw, registry, unavailable, errors)
                if spec is not None:
                    connectors[name] = spec

        channels: dict[str, ChannelConfig] = {}
        channels_raw = _table(data, "channels", errors)
        if channels_raw is not None:
            for name, raw in _entries("channels", channels_raw, errors):
                try:
                    channels[name] = ChannelConfig.model_validate(raw)
                except ValidationError as exc:
                    errors.extend(_pydantic_errors(f"channels.{name}", exc))

    # cross-references, over what validated
    if connectors_raw is not None:
        for name, loc in locations.items():
            if loc.authority not in connector_names:
                errors.append(f"locations.{name}.authority: unknown connector {loc.authority!r}")
    for name, ch in channels.items():
        if connectors_raw is not None and ch.connector not in connector_names:
            errors.append(f"channels.{name}.connector: unknown connector {ch.connector!r}")
        if locations_raw is not None:
            for loc_name in ch.sells_from:
                if loc_name not in location_names:
                    errors.append(f"channels.{name}.sells_from: unknown location {loc_name!r}")
        first_of: dict[str, str] = {}  # channel-side location -> the syncd location mapped first
        for loc_name, remote in ch.location_map.items():
            if loc_name not in ch.sells_from:
                errors.append(f"channels.{name}.location_map.{loc_name}: not in sells_from")
            if remote in first_of:  # two figures would overwrite each other there
                errors.append(f"channels.{name}.location_map.{loc_name}: {remote!r} already "
                              f"takes the figure of {first_of[remote]!r}; a channel-side "
                              "location takes one location's figure")
            first_of.setdefault(remote, loc_name)
    # a connector type's own checks of the channels it serves (`connectors.base`)
    for cname, spec in connectors.items():
        check = getattr(spec.cls, "check_channels", None)
        if check is None:
            continue
        served = {n: _channel(n, ch, connectors) for n, ch in channels.items()
                  if ch.connector == cname}
        if served:
            errors.extend(check(cname, spec.settings, served))

    if errors or daemon is None:
        raise ConfigError(errors or ["daemon: invalid"])
    return Config(
        daemon=daemon,
        locations=locations,
        connectors=connectors,
        channels=channels,
        source=source,
    )


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    registry: Mapping[str, type] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate a configuration given as TOML text.

    `registry` maps connector type names to classes (default: the installed entry points, whose
    load failures are configuration errors too). `environ` is where `env:` and `cred:` secret
    references are resolved (default: `os.environ`). Raises `ConfigError` listing every problem.
    """
    errors: list[str] = []
    unavailable: frozenset[str] = frozenset()
    if registry is None:
        from .registry import load_connector_types

        registry, load_errors = load_connector_types()
        errors.extend(load_errors)
        unavailable = frozenset(
            m.group(1) for e in load_errors if (m := re.search(r"type '([^']*)'", e))
        )
    return _parse(
        text,
        source=source,
        registry=registry,
        environ=environ,
        errors=errors,
        unavailable=unavailable,
    )


def load_config(
    path: str | os.PathLike[str],
    *,
    registry: Mapping[str, type] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read and validate the configuration file at `path` (see `parse_config`)."""
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 (byte {exc.start})") from None
    return parse_config(text, source=source, registry=registry, environ=environ)
