"""sd_notify protocol against real unix datagram sockets (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.sdnotify import Notifier


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, str]]:
    # AF_UNIX paths are limited to ~108 bytes: pytest's tmp_path can be too long, use /tmp.
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2.0)
        try:
            yield sock, path
        finally:
            sock.close()


def _received(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_lifecycle_messages_over_filesystem_socket(
    monkeypatch: pytest.MonkeyPatch, receiver: tuple[socket.socket, str]
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier.from_env()
    assert notifier.enabled

    assert notifier.ready()
    assert _received(sock) == b"READY=1"
    assert notifier.watchdog()
    assert _received(sock) == b"WATCHDOG=1"
    assert notifier.status("connectors: pos up, shop down")
    assert _received(sock) == b"STATUS=connectors: pos up, shop down"
    assert notifier.stopping()
    assert _received(sock) == b"STOPPING=1"


def test_raw_state_and_several_fields_in_one_datagram(
    monkeypatch: pytest.MonkeyPatch, receiver: tuple[socket.socket, str]
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier.from_env()

    assert notifier.notify("RELOADING=1")
    assert _received(sock) == b"RELOADING=1"
    assert notifier.notify(READY=1, STATUS="up\nand running", MAINPID=os.getpid())
    assert _received(sock) == f"READY=1\nSTATUS=up and running\nMAINPID={os.getpid()}".encode()


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"syncd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_env()
        assert notifier.address == "\0" + name

        assert notifier.ready()
        assert _received(sock) == b"READY=1"
        assert notifier.stopping()
        assert _received(sock) == b"STOPPING=1"


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False


def test_relative_path_is_ignored() -> None:
    assert not Notifier("relative/socket").enabled
    assert not Notifier("").enabled


def test_send_errors_never_raise(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens-here"))
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("still fine") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert Notifier.watchdog_interval() == 15.0
    assert Notifier.watchdog_interval({"WATCHDOG_USEC": "500000"}) == 0.25


def test_watchdog_interval_honours_watchdog_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier.watchdog_interval() is None


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "abc"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"},
    ],
)
def test_watchdog_interval_disabled(environ: dict[str, str]) -> None:
    assert Notifier.watchdog_interval(environ) is None
