"""`edi_inventory`: warehouse stock files — ANSI X12 846 and EANCOM INVRPT — from an inbox.

Modules: `x12` and `eancom` (pure parsers, `Document` / `EdiError` in `document`, `parse_any` in
`parse`), `inbox` (the directory watcher), `connector` (the syncd connector), `sim` (a writer
of both formats, for tests and demos).
"""

from .connector import EdiInventoryConfig, EdiInventoryConnector
from .document import Document, EdiError
from .eancom import parse_invrpt
from .parse import parse_any
from .x12 import parse_846

__all__ = [
    "Document",
    "EdiError",
    "EdiInventoryConfig",
    "EdiInventoryConnector",
    "parse_846",
    "parse_any",
    "parse_invrpt",
]
