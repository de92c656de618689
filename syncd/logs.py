"""Logging: one line per record, JSON when stderr is not a TTY, never a secret.

Records carry `connector` / `channel` / `location` fields when the code passes them in `extra`.
`Redactor` replaces every resolved secret value (API token, connector credentials) with `***` in
the message, its arguments and its fields, whatever code path logged it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = ["FIELDS", "JsonFormatter", "Redactor", "TextFormatter", "setup_logging"]

FIELDS = ("connector", "channel", "location", "sku_count", "on_hand", "outcome")
_STD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info).replace("\n", " | ")
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{record.levelname[0]} {record.name}: {record.getMessage()}"
        if fields:
            line += f" [{fields}]"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


class Redactor(logging.Filter):
    """Masks known secret values anywhere in a record."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, values: Iterable[str]) -> None:
        self.secrets.update(v for v in values if v and len(v) >= 4)

    def _mask(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self._mask(record.getMessage())
        record.args = None
        for k, v in _extras(record).items():
            if isinstance(v, str):
                setattr(record, k, self._mask(v))
        if record.exc_info and record.exc_info[1] is not None:
            text = self._mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
            record.msg = f"{record.msg} | {text}"
        return True


REDACTOR = Redactor()


def setup_logging(level: str = "info", stream: TextIO | None = None,
                  json_lines: bool | None = None) -> Redactor:
    stream = stream if stream is not None else sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return REDACTOR
