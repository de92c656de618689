"""Shared by the benchmarks: the machine line and recording figures in BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import sqlite3
import time
from pathlib import Path

__all__ = ["machine", "record"]

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, {time.strftime('%Y-%m-%d')}")


def record(section: str, body: str) -> None:
    """Replace (or append) `## {section}` in BENCHMARKS.md with `body`."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head = f"## {section}"
    block = f"{head}\n\n{body.strip()}\n"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + block + ("\n" + text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text)
