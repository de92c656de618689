"""`[connectors.<name>]` settings of type `mqtt_pos`."""

from __future__ import annotations

from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from syncd.config import Duration, Secret
from syncd.wire import DEFAULT_MAX_PAYLOAD

__all__ = ["MqttPosConfig"]

_DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}
_SESSION_EXPIRY_MAX: Final = 0xFFFF_FFFF  # seconds; MQTT v5: the session never expires
_PACKET_MAX: Final = 268_435_455  # the largest MQTT packet


def _error(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


class MqttPosConfig(BaseModel):
    """The broker, the topic tree and the session of one POS connector."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)

    url: str  # mqtt://host[:1883] or mqtts://host[:8883]
    topic_prefix: str = "syncd"
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    username: Annotated[str, Field(min_length=1)] | None = None
    password: Secret | None = None
    session_expiry: Duration = 7 * 86400.0
    max_payload: Annotated[int, Field(ge=64, le=_PACKET_MAX)] = DEFAULT_MAX_PAYLOAD
    reconnect_max: Duration = 30.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # never echo the URL: a mistaken one may carry a password
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise _error("mqtt_url", "not a valid URL (mqtt://host:port)") from None
        if parts.scheme not in _DEFAULT_PORTS:
            raise _error("mqtt_url", 'must start with "mqtt://" or "mqtts://"')
        if parts.username is not None or parts.password is not None:
            raise _error(
                "mqtt_url", "credentials do not belong in the URL: use username and password"
            )
        if not parts.hostname:
            raise _error("mqtt_url", "has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise _error("mqtt_url", "must be mqtt://host:port with nothing after the port")
        if port == 0:
            raise _error("mqtt_url", "port must be between 1 and 65535")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or value.startswith(("/", "$")) or value.endswith("/"):
            raise _error("topic_prefix", 'must be like "syncd" or "acme/syncd"')
        if any(c in value for c in "+#\x00") or "//" in value:
            raise _error("topic_prefix", "must not contain wildcards, NUL or empty levels")
        return value

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 0x20 for c in value):
            raise _error("client_id", "must not contain control characters")
        return value

    @field_validator("session_expiry")
    @classmethod
    def _check_session_expiry(cls, value: float) -> float:
        if not 1 <= value <= _SESSION_EXPIRY_MAX:
            # 0 would end the session at every disconnect and lose unacknowledged messages
            raise _error("session_expiry", "must be between 1s and 136y (MQTT v5 limit)")
        return value

    @field_validator("reconnect_max")
    @classmethod
    def _check_reconnect_max(cls, value: float) -> float:
        if value <= 0:
            raise _error("reconnect_max", "must be greater than 0")
        return value

    @model_validator(mode="after")
    def _password_needs_username(self) -> MqttPosConfig:
        if self.password is not None and self.username is None:
            raise _error("credentials", "password is set but username is not")
        return self

    # -- derived --------------------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or _DEFAULT_PORTS[parts.scheme]
