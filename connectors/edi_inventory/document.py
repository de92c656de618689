"""What both parsers produce, the error they raise, and the value rules they share.

Dates and times in X12 and EDIFACT carry no time zone. Both parsers read them as UTC: the
warehouse's EDI translator is expected to stamp UTC (the usual practice for machine-to-machine
interchanges); what matters for conflict rule 3 is that one sender is consistent with itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Final

__all__ = [
    "MAX_ID_LEN",
    "MAX_QTY",
    "MAX_SKU_LEN",
    "Document",
    "EdiError",
    "LineCollector",
    "check_id",
    "parse_date",
    "parse_quantity",
    "short",
]

MAX_QTY: Final = 10**12  # far beyond any real stock figure, far inside a BIGINT
MAX_SKU_LEN: Final = 128
MAX_ID_LEN: Final = 35  # sender ids (UNB an..35) and control numbers (ISA13 n9, UNB an..14)

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


class EdiError(Exception):
    """A file that is not a valid interchange. `segment_number` is the 1-based position of the
    offending segment in the file (None when the file as a whole is at fault)."""

    def __init__(self, segment_number: int | None, reason: str, segment: str = "") -> None:
        super().__init__(segment_number, reason, segment)
        self.segment_number = segment_number
        self.reason = reason
        self.segment = segment  # the tag of the offending segment, e.g. "QTY"

    def __str__(self) -> str:
        if self.segment_number is None:
            return self.reason
        tag = f" ({self.segment})" if self.segment else ""
        return f"segment {self.segment_number}{tag}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Document:
    """One interchange, reduced to what syncd needs: who reports which stock, as of when."""

    standard: str  # "x12-846" | "eancom-invrpt"
    sender: str
    receiver: str
    control_number: str
    # the moment the stock figures are as of (aware, UTC); see each parser for its source
    document_date: datetime
    lines: list[tuple[str, int]] = field(default_factory=list)  # (sku, qty), file order


def short(value: str, limit: int = 40) -> str:
    """A value quoted for an error message, bounded (fuzzed input can be anything)."""
    text = value if len(value) <= limit else value[:limit] + "…"
    return repr(text)


def parse_quantity(raw: str, where: int, tag: str) -> int:
    """A stock quantity: a decimal number that must be a whole number ≥ 0."""
    text = raw.strip()
    if not text:
        raise EdiError(where, "quantity is empty", tag)
    if len(text) > 30 or not _NUMBER.fullmatch(text):
        raise EdiError(where, f"quantity {short(raw)} is not a number", tag)
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise EdiError(where, f"quantity {short(raw)} is not a number", tag) from None
    if value != value.to_integral_value():
        raise EdiError(where, f"quantity {short(raw)} is not a whole number", tag)
    if value < 0:
        raise EdiError(where, f"quantity {short(raw)} is negative", tag)
    if value > MAX_QTY:
        raise EdiError(where, f"quantity {short(raw)} is implausibly large", tag)
    return int(value)


def parse_date(date: str, time: str, where: int, tag: str) -> datetime:
    """CCYYMMDD or YYMMDD (read as 20YY), and HHMM[SS[D..]] (empty: midnight), as UTC."""
    date, time = date.strip(), time.strip()
    if not _DIGITS.fullmatch(date) or len(date) not in (6, 8):
        raise EdiError(where, f"date {short(date)} is not CCYYMMDD", tag)
    if len(date) == 6:
        date = "20" + date
    if time and (not _DIGITS.fullmatch(time) or len(time) not in (4, 6, 7, 8)):
        raise EdiError(where, f"time {short(time)} is not HHMM[SS[DD]]", tag)
    hh = int(time[0:2]) if time else 0
    mm = int(time[2:4]) if time else 0
    ss = int(time[4:6]) if len(time) >= 6 else 0
    frac = time[6:]
    micros = int(frac.ljust(6, "0")) if frac else 0
    try:
        return datetime(int(date[0:4]), int(date[4:6]), int(date[6:8]), hh, mm, ss, micros,
                        tzinfo=UTC)
    except ValueError:
        shown = f"{date} {time}".strip()
        raise EdiError(where, f"date/time {short(shown)} does not exist", tag) from None


class LineCollector:
    """The (sku, qty) lines of a document: a SKU reported twice is refused (which figure
    would be the truth?), and SKUs are bounded so that event ids fit the ledger."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, int]] = []
        self._first: dict[str, int] = {}

    def add(self, sku: str, qty: int, where: int, tag: str) -> None:
        if not sku:
            raise EdiError(where, "product id is empty", tag)
        if len(sku) > MAX_SKU_LEN:
            raise EdiError(where, f"product id {short(sku)} is longer than {MAX_SKU_LEN}", tag)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in sku):
            raise EdiError(where, f"product id {short(sku)} contains control characters", tag)
        first = self._first.get(sku)
        if first is not None:
            raise EdiError(
                where, f"product {short(sku)} is reported twice (first in segment {first})", tag
            )
        self._first[sku] = where
        self.lines.append((sku, qty))


def check_id(value: str, what: str, where: int, tag: str) -> str:
    """An envelope identifier (sender, receiver, control number): stripped, non-empty, bounded."""
    text = value.strip()
    if not text:
        raise EdiError(where, f"{what} is empty", tag)
    if len(text) > MAX_ID_LEN:
        raise EdiError(where, f"{what} {short(text)} is longer than {MAX_ID_LEN}", tag)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise EdiError(where, f"{what} {short(text)} contains control characters", tag)
    return text
