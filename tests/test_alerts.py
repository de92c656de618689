"""Prometheus alerting rules: valid for promtool and behaving as its unit tests expect."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "ops" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULES_TEST = PROMETHEUS_DIR / "alerts_test.yml"

EXPECTED_ALERTS = {
    "SyncdDown": "critical",
    "SyncdConnectorDown": "critical",
    "SyncdPushLagHigh": "warning",
    "SyncdOutboxGrowing": "warning",
    "SyncdOversoldSkus": "critical",
    "SyncdDeadLetters": "warning",
    "SyncdHoldsExpiring": "warning",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    return subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        cwd=PROMETHEUS_DIR,
        timeout=120,
        check=False,
    )


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_severity_summary_and_description() -> None:
    yaml = pytest.importorskip("yaml")
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert {rule["alert"]: rule["labels"]["severity"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
        assert "syncd_" in rule["expr"] or 'up{job="syncd"}' in rule["expr"], rule["alert"]


def test_unit_tests_cover_connector_down_and_oversold() -> None:
    text = RULES_TEST.read_text()
    for alert in ("SyncdConnectorDown", "SyncdOversoldSkus"):
        assert f"alertname: {alert}" in text
