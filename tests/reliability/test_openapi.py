"""The published OpenAPI description of `/v1` (docs/openapi.yaml) against a running daemon.

- Every route the daemon serves under `/v1`, `/healthz` and `/readyz` is described, and nothing
  else is.
- schemathesis (CLI, run as a subprocess against a real `syncd run` with the bearer token) with
  the checks `not_a_server_error`, `status_code_conformance`, `content_type_conformance` and
  `response_schema_conformance`, a bounded number of examples per operation (more with
  `SYNCD_SOAK=1`), a fixed seed.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from syncd.api import build_app
from tests.reliability.helpers import (
    API_TOKEN,
    REPO,
    DaemonProc,
    record,
    retail_config,
    soak,
)
from tests.servers import free_port

SPEC = REPO / "docs" / "openapi.yaml"
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")
EXAMPLES = 200 if soak() else 20


def test_the_description_covers_every_route() -> None:
    spec = yaml.safe_load(SPEC.read_text())
    described = {(path, method.upper()) for path, ops in spec["paths"].items()
                 for method in ops if method in ("get", "post", "delete", "put", "patch")}

    class _Daemon:
        metrics = type("M", (), {"registry": None})()

    app = build_app(_Daemon(), 1024)  # type: ignore[arg-type]
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if route.method in ("HEAD", "*") or not path.startswith(("/v1", "/healthz", "/readyz")):
            continue
        served.add((path, route.method))
    assert described == served
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            needs_token = path.startswith("/v1/")
            assert (op.get("security") != []) == needs_token, (path, method)
            if needs_token:
                assert "401" in op["responses"], (path, method)


def schemathesis_available() -> bool:
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        return False
    return True


async def test_schemathesis_against_a_running_daemon(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if not schemathesis_available():
        message = "schemathesis is not installed (pip install '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so this is an error, not a skip", pytrace=False)
        pytest.skip(message)
    port = free_port()
    config = tmp_path / "syncd.toml"
    config.write_text(retail_config(tmp_path / "state", port))
    d = DaemonProc(config, port)
    try:
        await d.wait_ready()
        status, _ = await d.call("POST", "/v1/events", {"events": [
            {"connector": "backoffice", "location": loc, "event_id": f"c-{loc}", "type": "count",
             "sku": "A", "qty": 50, "occurred_at": "2026-11-23T10:00:00Z"}
            for loc in ("paris", "lyon")]})
        assert status == 200
        argv = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
                "run", str(SPEC), "--url", d.base, "-H", f"Authorization: Bearer {API_TOKEN}",
                "--checks", ",".join(CHECKS), "--max-examples", str(EXAMPLES), "--seed", "8",
                "--no-color", "--generation-database", "none", "--suppress-health-check", "all",
                "--request-timeout", "20", "--workers", "1", "--output-sanitize", "true"]
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                       cwd=tmp_path, timeout=600)
    finally:
        code = await d.stop()
    out = done.stdout + done.stderr
    assert API_TOKEN not in out
    match = re.search(r"(\d+) generated, (\d+) passed", out)
    record("schemathesis", f"python3 -m pytest -q '{request.node.nodeid}'"
           + (" (SYNCD_SOAK=1)" if soak() else ""),
           checks=list(CHECKS), max_examples_per_operation=EXAMPLES,
           test_cases=int(match.group(1)) if match else None,
           passed=int(match.group(2)) if match else None, exit_code=done.returncode)
    assert done.returncode == 0, out[-6000:]
    assert match and match.group(1) == match.group(2), out[-3000:]
    assert code == 0, d.tail()
