"""The systemd unit: valid for systemd-analyze, hardened, and wired for sd_notify."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "syncd.service"
MAX_EXPOSURE = 1.5  # measured 1.1 with systemd 252; ProtectClock's implied char-rtc ACL etc.


def _directives(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (Debian package 'systemd')")
    return binary


def _runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists here (/usr/bin/syncd need not)."""
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/syncd " in text
    copy = tmp_path / "syncd.service"
    copy.write_text(text.replace("ExecStart=/usr/bin/syncd ", f"ExecStart={sys.executable} "))
    return copy


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        args, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
        timeout=60, check=False,
    )  # fmt: skip


def test_key_directives() -> None:
    unit = _directives(UNIT.read_text())
    service = unit["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30s",
        "ExecStart": "/usr/bin/syncd run --config /etc/syncd/syncd.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "RestartSec": "2s",
        "TimeoutStopSec": "30s",
        "DynamicUser": "yes",
        "StateDirectory": "syncd",
        "ConfigurationDirectory": "syncd",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    # A LoadCredential= with a missing source file stops the unit from starting: examples only.
    assert "LoadCredential" not in service
    assert "LoadCredential=shopify-token:" in UNIT.read_text()
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    binary = _systemd_analyze()
    copy = _runnable_copy(tmp_path)
    result = _run(binary, "verify", "--man=no", str(copy))
    about_unit = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(copy) in line or "syncd.service" in line
    ]
    assert about_unit == [], "\n".join(about_unit)
    assert result.returncode == 0, result.stderr


def test_systemd_analyze_verify_catches_mistakes(tmp_path: Path) -> None:
    """Guards the test above: a broken directive does show up in verify's output."""
    binary = _systemd_analyze()
    copy = _runnable_copy(tmp_path)
    copy.write_text(copy.read_text().replace("ProtectSystem=strict", "ProtectSystem=sometimes"))
    result = _run(binary, "verify", "--man=no", str(copy))
    assert f"{copy}:" in result.stdout + result.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    binary = _systemd_analyze()
    copy = _runnable_copy(tmp_path)
    result = _run(binary, "security", "--offline=true", "--no-pager", str(copy))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for syncd\.service: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout
    assert match.group(2) == "OK"
