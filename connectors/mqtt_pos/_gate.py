"""Flow control at the socket: stop reading the broker while too much is unacknowledged.

MQTT v5's Receive Maximum asks the broker to stop sending once that many QoS 1 messages wait
for our PUBACK. mosquitto 2.0.11 does not honour it when it replays a stored session (measured:
thousands more), and aiomqtt queues whatever paho reads without bound, so a long backlog used to
become the daemon's memory. The gate enforces the window itself: past `limit` unacknowledged
messages it removes the socket from the event loop's readers; the kernel's receive buffer
fills, TCP flow control stops the broker, and the rest stays queued in our session at the broker.
It reads again once acknowledgements bring the count down to `resume_at`.

A pause lasts as long as a commit (milliseconds). If the engine stalls for longer than the
keepalive, paho misses the PINGRESP and drops the connection, which is what a stalled consumer
should get: the broker keeps the messages and re-sends them on the next connection.

asyncio has no public "pause this reader": the reader's callback (aiomqtt's, which calls paho's
`loop_read`) is taken from the selector's key before it is removed, and given back on resume.
Event loops without a selector (none that syncd runs on) simply never pause.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho_mqtt

__all__ = ["ReadGate"]

log = logging.getLogger(__name__)


class ReadGate:
    """Counts QoS 1 messages read from one connection and not yet acknowledged."""

    def __init__(self, paho: paho_mqtt.Client, limit: int, resume_at: int | None = None) -> None:
        self.paho = paho
        self.limit = limit
        self.resume_at = limit // 2 if resume_at is None else resume_at
        self.unacked = 0
        self.pauses = 0
        self._loop = asyncio.get_running_loop()
        self._paused: tuple[socket.socket, Callable[..., Any], tuple[Any, ...]] | None = None
        inner = paho.on_message

        def on_message(client: paho_mqtt.Client, userdata: Any, message: Any) -> None:
            if message.qos > 0:
                self.unacked += 1
                if self.unacked >= self.limit and self._paused is None:
                    self._pause()
            if inner is not None:
                inner(client, userdata, message)

        paho.on_message = on_message

    @property
    def paused(self) -> bool:
        return self._paused is not None

    def acked(self) -> None:
        self.unacked = max(0, self.unacked - 1)
        if self._paused is not None and self.unacked <= self.resume_at:
            self._resume()

    def _pause(self) -> None:
        sock = self.paho.socket()
        selector = getattr(self._loop, "_selector", None)
        if not isinstance(sock, socket.socket) or selector is None:
            return
        try:
            handle = selector.get_key(sock.fileno()).data[0]
        except (KeyError, ValueError):
            return
        if handle is None or handle.cancelled():
            return
        callback, args = handle._callback, handle._args
        self._loop.remove_reader(sock.fileno())
        self._paused = (sock, callback, args)
        self.pauses += 1

    def _resume(self) -> None:
        assert self._paused is not None
        sock, callback, args = self._paused
        self._paused = None
        if self.paho.socket() is sock and sock.fileno() != -1:
            self._loop.add_reader(sock.fileno(), callback, *args)
