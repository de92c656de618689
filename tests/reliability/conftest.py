"""Fixtures of the reliability suite.

The secret watch: every daemon this suite starts runs with the known secrets of `helpers.py`.
Their log files, every HTTP answer read through `helpers.DaemonProc`/the in-process clients, and
every log record emitted in this process (in-process daemons log without the CLI's redactor, so
this is the stricter check) are searched for those secrets. A hit fails the test that caused
it, and the session (a log line written after its test).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.reliability.helpers import LIVE, SECRETS, WATCH, record


class _SecretRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, rec: logging.LogRecord) -> None:
        self.count += 1
        try:
            text = rec.getMessage() + " " + " ".join(
                str(v) for k, v in vars(rec).items() if k not in ("msg", "args"))
        except Exception:  # a record that cannot be formatted is not a leak
            return
        if rec.exc_info:
            text += logging.Formatter().formatException(rec.exc_info)
        if any(s in text for s in SECRETS):
            WATCH.records.append(text[:2000])


@pytest.fixture(autouse=True)
def no_daemon_left_behind() -> Iterator[None]:
    """A test that failed half-way must not leave a `syncd run` behind."""
    yield
    while LIVE:
        proc = LIVE.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


_RECORDS = _SecretRecords()


@pytest.fixture(autouse=True)
def watch_for_secrets() -> Iterator[None]:
    """During each test of this suite: every log record of the process is searched (with the
    syncd loggers at DEBUG), and the test fails when it leaked a secret anywhere."""
    root = logging.getLogger()
    watched = [logging.getLogger(n) for n in ("syncd", "connectors")]
    levels = [lg.level for lg in watched]
    mark = WATCH.mark()
    root.addHandler(_RECORDS)
    for lg in watched:
        lg.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(_RECORDS)
        for lg, level in zip(watched, levels, strict=True):
            lg.setLevel(level)
    leaks = WATCH.leaks(since=mark)
    if leaks:
        pytest.fail("secrets leaked:\n" + "\n".join(leaks[:20]), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def secret_watch() -> Iterator[None]:
    """At the end: everything once more (logs written after their test), and the figures."""
    started = time.monotonic()
    yield
    scanned = WATCH.scanned()
    scanned["in_process_log_records"] = _RECORDS.count
    leaks = WATCH.leaks()
    record("secrets", "python3 -m pytest -q tests/reliability (session-wide check)",
           leaks=len(leaks), **scanned)
    record("run", "SYNCD_RELIABILITY_FIGURES=FILE python3 -m pytest -q tests/reliability",
           finished=datetime.now(UTC).isoformat(timespec="seconds"),
           seconds=round(time.monotonic() - started, 1), python=platform.python_version(),
           cpus=os.cpu_count(), kernel=platform.release(), mosquitto=_version(
               ["/usr/sbin/mosquitto", "-h"]), sqlite=_sqlite_version())
    if leaks:
        pytest.fail("secrets leaked:\n" + "\n".join(leaks[:20]), pytrace=False)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "absent"
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version
