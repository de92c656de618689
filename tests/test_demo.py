"""`syncd demo` (the README's first command) runs the whole system and ends cleanly: the real
daemon, mosquitto, every simulator, the Square store's webhooks, an EDI file and an outage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.usefixtures("mosquitto")  # mosquitto installed (the demo starts its own broker)
def test_the_demo_runs_every_connector_and_ends_with_nothing_pending(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "demo", "--duration", "8", "--skus", "12",
         "--seed", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/bin", "TMPDIR": str(tmp_path), "COLUMNS": "120"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "MQTT broker: mqtt://" in out  # the real broker, not the HTTP fallback
    assert "Square POS simulator for marseille-03" in out
    assert "also amazon, woocommerce" in out
    assert "daemon stopped (exit 0)" in out
    assert re.search(r"outbox pending at the end: 0\b", out), out[-3000:]
    sales = re.search(r"(\d+) store sales", out)
    assert sales is not None and int(sales.group(1)) > 0
    assert "Traceback" not in out
