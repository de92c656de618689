"""The daemon as ops run it: a real `syncd run` process with sd_notify on a real datagram socket,
SIGTERM, SIGHUP, `check-config`, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import PrometheusServer, free_port
from tests.test_api import TOKEN, config_text

REPO = Path(__file__).resolve().parent.parent


class DaemonProcess:
    def __init__(self, config: Path, env: dict[str, str], port: int) -> None:
        self.config = config
        self.port = port
        self.log = config.with_suffix(".log")
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "run", "--config", str(config)],
            cwd=REPO, env={**os.environ, "SYNCD_API_TOKEN": TOKEN, **env},
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST",
                                     data=json.dumps(body).encode())
        req.add_header("Authorization", f"Bearer {TOKEN}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if self.get("/readyz", None)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._log.close()
        return code


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = f"/tmp/syncd-notify-{os.getpid()}-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    yield sock, path
    sock.close()
    os.unlink(path)


def write_config(tmp_path: Path, extra: str = "") -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "syncd.toml"
    path.write_text(config_text(tmp_path / "state", port, extra))
    return path, port


def test_sd_notify_ready_watchdog_status_stopping_and_sigterm_exit_0(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    config, port = write_config(tmp_path)
    d = DaemonProcess(config, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}, port)
    seen: list[str] = []
    try:
        while not any(m.startswith("WATCHDOG=1") for m in seen):
            seen.append(sock.recv(4096).decode())
        assert "READY=1" in seen
        # READY only once the database and the HTTP listener are up
        assert d.get("/readyz", None)[0] == 200
        assert any(m.startswith("STATUS=") for m in seen) or "STATUS=" in sock.recv(4096).decode()
    finally:
        code = d.stop(signal.SIGTERM)
    while True:
        msg = sock.recv(4096).decode()
        if msg.startswith("STOPPING=1"):
            break
    assert code == 0, d.output()


def test_sighup_keeps_the_old_config_when_the_new_one_is_invalid(tmp_path: Path) -> None:
    config, port = write_config(tmp_path)
    d = DaemonProcess(config, {}, port)
    try:
        d.wait_ready()
        d.post("/v1/events", {"connector": "backoffice", "location": "paris", "event_id": "c",
                              "type": "count", "sku": "A", "qty": 10,
                              "occurred_at": "2026-11-23T10:00:00Z"})
        assert d.get("/v1/stock/A")[1]["locations"]["paris"]["available"] == 9
        config.write_text(config.read_text().replace("safety_stock = 1", "safty_stock = 3"))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in d.output():
            assert time.monotonic() < deadline, d.output()
            time.sleep(0.05)
        assert "locations.paris.safty_stock: unknown key" in d.output()
        assert d.get("/readyz", None)[0] == 200
        assert d.get("/v1/stock/A")[1]["locations"]["paris"]["available"] == 9
        # a valid file is taken
        config.write_text(config.read_text().replace("safty_stock = 3", "safety_stock = 3"))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while d.get("/v1/stock/A")[1]["locations"]["paris"]["available"] != 7:
            assert time.monotonic() < deadline, d.output()
            time.sleep(0.05)
    finally:
        assert d.stop() == 0


def test_check_config_exit_codes(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    env = {**os.environ, "SYNCD_API_TOKEN": TOKEN}
    ok = subprocess.run([sys.executable, "-m", "syncd.cli", "check-config", str(config)],
                        cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    config.write_text(config.read_text().replace("safety_stock = 1", "safty_stock = 1")
                      .replace('kind = "warehouse"', 'kind = "shed"'))
    bad = subprocess.run([sys.executable, "-m", "syncd.cli", "check-config", str(config)],
                         cwd=REPO, env={**env, "SYNCD_API_TOKEN": ""}, capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 2
    assert "locations.paris.safty_stock: unknown key" in bad.stderr
    assert "locations.lyon.kind:" in bad.stderr
    assert "daemon.api_token:" in bad.stderr
    assert TOKEN not in bad.stderr


def test_a_real_prometheus_scrapes_syncd(tmp_path: Path, prometheus_bin: Path) -> None:
    config, port = write_config(tmp_path)
    d = DaemonProcess(config, {}, port)
    try:
        d.wait_ready()
        d.post("/v1/events", {"connector": "backoffice", "location": "paris", "event_id": "c",
                              "type": "count", "sku": "A", "qty": 10,
                              "occurred_at": "2026-11-23T10:00:00Z"})
        prom = PrometheusServer.start([f"127.0.0.1:{port}"], binary=prometheus_bin)
        try:
            values = prom.wait_for(
                'syncd_events_total{connector="backoffice",type="count",outcome="applied"}',
                lambda v: v == [1.0], timeout=30)
            assert values == [1.0]
            assert prom.query_values('syncd_connector_up{connector="backoffice"}') == [1.0]
        finally:
            prom.stop()
    finally:
        assert d.stop() == 0


def test_status_command_summarises_a_running_daemon(tmp_path: Path) -> None:
    config, port = write_config(tmp_path)
    d = DaemonProcess(config, {}, port)
    try:
        d.wait_ready()
        out = subprocess.run(
            [sys.executable, "-m", "syncd.cli", "status", "--config", str(config)], cwd=REPO,
            env={**os.environ, "SYNCD_API_TOKEN": TOKEN}, capture_output=True, text=True,
            check=False, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "READY" in out.stdout
        assert "connector backoffice: up" in out.stdout
    finally:
        assert d.stop() == 0


def test_config_example_is_valid(tmp_path: Path) -> None:
    env = {**os.environ, "SYNCD_API_TOKEN": TOKEN, "SHOPIFY_TOKEN": "shpat_x",
           "SHOPIFY_WEBHOOK_SECRET": "whsec_x"}
    out = subprocess.run([sys.executable, "-m", "syncd.cli", "check-config",
                          str(REPO / "config.example.toml")], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_logs_are_json_lines_with_fields_and_never_a_secret(tmp_path: Path) -> None:
    config, port = write_config(tmp_path)
    d = DaemonProcess(config, {}, port)
    try:
        d.wait_ready()
        d.post("/v1/events", {"connector": "backoffice", "location": "paris", "event_id": "c",
                              "type": "count", "sku": "A", "qty": 0,
                              "occurred_at": "2026-11-23T10:00:00Z"})
        d.post("/v1/events", {"connector": "backoffice", "location": "paris", "event_id": "s",
                              "type": "sale", "sku": "A", "qty": 2,
                              "occurred_at": "2026-11-23T10:00:01Z"})  # oversold: logged
        d.get("/v1/stock/A", token="wrong-" + TOKEN)
    finally:
        assert d.stop() == 0
    lines = d.output().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON record
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r.get("location") == "paris" and "oversold" in r["msg"] for r in records)
    assert TOKEN not in d.output()
