"""Minimal implementation of systemd's ``sd_notify`` protocol (see ``sd_notify(3)``).

The service manager passes a unix datagram socket in ``NOTIFY_SOCKET``: a filesystem path, or an
abstract socket name written with a leading ``@``. Each message is one datagram of newline
separated ``KEY=VALUE`` assignments (``READY=1``, ``WATCHDOG=1``, ``STATUS=...``, ``STOPPING=1``).
When ``NOTIFY_SOCKET`` is unset (not under systemd, or not ``Type=notify``) every call is a no-op,
and sending never raises: the daemon must not die because its supervisor is gone.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to the service manager; a no-op when ``address`` is None."""

    def __init__(self, address: str | None) -> None:
        if address and address[0] == "@":
            address = "\0" + address[1:]  # abstract namespace
        elif address and address[0] != "/":
            log.debug("sd_notify: unsupported NOTIFY_SOCKET %r, notifications disabled", address)
            address = None
        self.address: str | None = address or None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        return cls((os.environ if environ is None else environ).get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str | None = None, /, **fields: str | int) -> bool:
        """Send ``state`` (raw ``KEY=VALUE`` lines) and/or ``fields``; True when delivered."""
        if self.address is None:
            return False
        lines = [state] if state else []
        lines += [f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ready(self) -> bool:
        return self.notify(READY=1)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    @staticmethod
    def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None if off."""
        env = os.environ if environ is None else environ
        pid, usec = env.get("WATCHDOG_PID"), env.get("WATCHDOG_USEC")
        try:
            if pid and int(pid) != os.getpid():
                return None
            return int(usec) / 2_000_000 if usec and int(usec) > 0 else None
        except ValueError:
            return None
