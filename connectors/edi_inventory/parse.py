"""`parse_any`: tell an X12 interchange from an EDIFACT one and parse it."""

from __future__ import annotations

from .document import Document, EdiError
from .eancom import parse_invrpt
from .x12 import parse_846

__all__ = ["decode", "parse_any"]


def parse_any(
    text: str,
    *,
    qty_qualifier: str = "33",
    sku_qualifier: str = "SK",
    eancom_qty_qualifier: str = "145",
    eancom_sku_qualifier: str = "SA",
) -> Document:
    """An X12 846 (starts with ISA) or an EANCOM INVRPT (starts with UNA or UNB), after an
    optional byte-order mark and leading whitespace. Raises `EdiError` and nothing else."""
    try:
        head = text.lstrip("\ufeff \t\r\n")[:3]
    except Exception as exc:  # not a str at all
        raise EdiError(None, f"not text ({type(exc).__name__})") from exc
    if head == "ISA":
        return parse_846(text, qty_qualifier=qty_qualifier, sku_qualifier=sku_qualifier)
    if head in ("UNA", "UNB"):
        return parse_invrpt(
            text, qty_qualifier=eancom_qty_qualifier, sku_qualifier=eancom_sku_qualifier
        )
    if not head:
        raise EdiError(None, "the file is empty")
    raise EdiError(1, "neither an X12 interchange (ISA) nor an EDIFACT one (UNA/UNB)")


def decode(data: bytes) -> str:
    """File bytes as text: UTF-8 (of which ASCII, X12's basic character set, is a subset), else
    ISO 8859-1 (EDIFACT's UNOC), which decodes any byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
