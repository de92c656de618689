"""Store POS over MQTT (`type = "mqtt_pos"`), the protocol of DESIGN.md "Store POS over MQTT".

- In: `{prefix}/pos/{location}/events`, QoS 1, one event or `{"events": [...]}`. Each message is
  acknowledged (PUBACK) only after the engine committed it (manual acknowledgement, persistent
  MQTT v5 session): an unacknowledged message is re-sent by the broker after any crash, and the
  engine deduplicates it by `event_id`. See `_connector.py` for how this is wired through aiomqtt.
- A malformed message is dead-lettered whole, with its reason (`parse_message`), then
  acknowledged; it never stops the loop.
- Out: retained `{prefix}/availability/{sku}` (per location), QoS 1 `{prefix}/pos/{location}/holds`
  and `{prefix}/pos/{location}/resync` (a sequence gap was seen: send fresh counts).
"""

from __future__ import annotations

from syncd.wire import MalformedMessage, parse_message, topic_sku

from ._config import MqttPosConfig
from ._connector import MqttPosConnector, MqttPosStats

__all__ = [
    "MalformedMessage",
    "MqttPosConfig",
    "MqttPosConnector",
    "MqttPosStats",
    "parse_message",
    "topic_sku",
]
