"""Shared pytest fixtures for syncd's test suite.

Keep this file generic: one section per concern, each with a header comment. Helpers that are
not fixtures belong in plain modules next to it (e.g. ``tests/servers.py``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

# `python3 -m pytest` (scripts/test.sh) puts the repo root on sys.path; a bare `pytest` does not.
# Make `tests.servers` importable either way.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

if TYPE_CHECKING:
    from tests.vendure_server import VendureServer

from tests.servers import (  # noqa: E402
    BinaryNotFoundError,
    MosquittoServer,
    PostgresServer,
    find_prometheus,
)


def _missing(exc: BinaryNotFoundError) -> NoReturn:
    """Skip when server software is absent on a dev box; fail loudly in CI (``CI`` set)."""
    if os.environ.get("CI"):
        pytest.fail(f"{exc} (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(str(exc))


# ============================================================================================
# Real servers (tests/servers.py): PostgreSQL, mosquitto, Prometheus on free loopback ports.
# Start-up cost measured on the dev VM: postgres ~1 s (once per session), mosquitto ~10 ms,
# prometheus ~0.1 s (but its first scrape of a target comes ~5 s after start).
# ============================================================================================


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster per session (superuser ``syncd``, database ``syncd``).

    Tests that need isolation should call ``postgres.create_database("<unique name>")``
    (~40 ms) and use the returned ``postgresql+asyncpg://`` URL.
    """
    try:
        server = PostgresServer.start()
    except BinaryNotFoundError as exc:
        _missing(exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mosquitto() -> Iterator[MosquittoServer]:
    """A fresh mosquitto broker per test (starts in ~10 ms), so tests may kill/restart it."""
    try:
        server = MosquittoServer.start()
    except BinaryNotFoundError as exc:
        _missing(exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    """Path of the prometheus binary, for ``PrometheusServer.start(targets, binary=...)``."""
    try:
        return find_prometheus()
    except BinaryNotFoundError as exc:
        _missing(exc)


# ============================================================================================
# (add further fixture sections below, each with its own header)
# ============================================================================================


@pytest.fixture(scope="session")
def vendure() -> Iterator[VendureServer]:  # shared by test_vendure and the e2e test
    """One real Vendure for the session. Without node/npm: skipped on a dev box, an error in CI.
    Any other failure (npm ci, boot, seeding) fails loudly with Vendure's output."""
    from tests.vendure_server import VendureServer, ensure_installed

    try:
        spent = ensure_installed()
    except BinaryNotFoundError as exc:
        _missing(exc)
    started = time.monotonic()
    server = VendureServer.start()
    print(
        f"\nVendure: npm ci {spent:.1f}s (0 = cached), boot and seed "
        f"{time.monotonic() - started:.1f}s on port {server.port}"
    )
    try:
        yield server
    finally:
        server.stop()
