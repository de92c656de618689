"""EANCOM INVRPT (UN/EDIFACT D.96A inventory report): one interchange per file → `Document`.

Layout::

    UNA:+.? '                                      optional: the delimiters, in this order:
                                                   component, element, decimal mark, release,
                                                   reserved (repetition in syntax 4), terminator
    UNB+UNOC:3+5412345000013:14+5412345000020:14+261123:1000+INV0001'
    UNH+1+INVRPT:D:96A:UN:EAN008'                  message reference, message type
    BGM+35+INVR21599+9'
    DTM+137:202611230955:203'                      document date; format 102 CCYYMMDD, 203
                                                   CCYYMMDDHHMM (204 CCYYMMDDHHMMSS accepted)
    LIN+1++5412345111115:EN'                       line number, action, item number:type
    PIA+5+SKU-1:SA::91'                            5 = product identification, SA = supplier's
                                                   article number
    QTY+145:300'                                   145 = actual stock
    UNT+6+1'                                       segments from UNH to UNT inclusive
    UNZ+1+INV0001'                                 messages in the interchange, control ref

Without UNA the defaults `:+.? '` apply. The release character (`?`) makes the next character
literal, so `PIA+5+A?+B:SA'` names the article "A+B". Segment numbers in errors count UNA, when
present, as segment 1: they are positions in the file.

The SKU of a LIN loop (LIN to the next LIN, UNS or UNT): with `sku_qualifier="LIN"` the LIN item
number itself; otherwise the first PIA item number whose type is `sku_qualifier` (default "SA"),
or else the LIN item number when its type is `sku_qualifier` (e.g. "EN"). The quantity is the
first `QTY+<qty_qualifier>` in the loop (EANCOM repeats QTY+145 for sub-quantities by
package; the first one is the total).

The document date is the first message's DTM+137 (the date of the report); without one, the UNB
date/time of preparation. Both are read as UTC (see `document`). Functional groups (UNG/UNE),
which EANCOM allows but hardly anyone sends, are refused.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime

from .document import Document, EdiError, LineCollector, check_id, parse_date, parse_quantity

__all__ = ["parse_invrpt"]

_TAG = re.compile(r"[A-Z][A-Z0-9]{2}", re.ASCII)
_COUNT = re.compile(r"[0-9]{1,9}", re.ASCII)
_SERVICE = frozenset({"UNA", "UNB", "UNG", "UNE", "UNH", "UNT", "UNZ"})
_DATE_FORMATS = {"102": 8, "203": 12, "204": 14}


@dataclass(slots=True)
class _Seg:
    num: int
    tag: str
    els: list[list[str]]  # els[n] is element n, as its components; els[0] == [tag]

    def get(self, n: int, c: int = 0) -> str:
        if n >= len(self.els) or c >= len(self.els[n]):
            return ""
        return self.els[n][c]


@dataclass(frozen=True, slots=True)
class _Syntax:
    component: str = ":"
    element: str = "+"
    release: str = "?"
    terminator: str = "'"


def parse_invrpt(
    text: str, *, qty_qualifier: str = "145", sku_qualifier: str = "SA"
) -> Document:
    """Parse one EANCOM INVRPT interchange. Raises `EdiError`, and only that, for any input."""
    try:
        return _Parser(text, qty_qualifier, sku_qualifier).parse()
    except EdiError:
        raise
    except Exception as exc:  # a bug must still surface as a rejected file, never a crash
        raise EdiError(None, f"unreadable EDIFACT interchange ({type(exc).__name__})") from exc


# -- lexing ------------------------------------------------------------------------------------


def _syntax(text: str) -> tuple[_Syntax, int]:
    """The delimiters and where the first segment after UNA starts."""
    if not text.startswith("UNA"):
        return _Syntax(), 0
    if len(text) < 9:
        raise EdiError(1, "UNA segment is incomplete", "UNA")
    comp, elem, dec, rel, term = text[3], text[4], text[5], text[6], text[8]
    release = "" if rel == " " else rel
    marks = [comp, elem, term, *([release] if release else [])]
    if len(set(marks)) != len(marks):
        raise EdiError(1, "UNA delimiters are not all different", "UNA")
    if any(c.isalnum() or c == " " for c in marks):
        raise EdiError(1, "UNA delimiters must be punctuation characters", "UNA")
    if dec not in ".,":
        raise EdiError(1, f"UNA decimal mark {dec!r} is neither '.' nor ','", "UNA")
    return _Syntax(comp, elem, release, term), 9


@functools.lru_cache(maxsize=64)
def _splitter(sep: str, release: str) -> re.Pattern[str]:
    return re.compile(f"({re.escape(release)}.)|{re.escape(sep)}", re.DOTALL)


def _split(text: str, sep: str, release: str) -> list[str]:
    """Split at every `sep` that the release character does not escape (escapes are kept)."""
    if not release or release not in text:
        return text.split(sep)
    parts: list[str] = []
    start = 0
    for m in _splitter(sep, release).finditer(text):
        if m.group(1) is None:
            parts.append(text[start : m.start()])
            start = m.end()
    parts.append(text[start:])
    return parts


def _unescape(value: str, release: str, num: int, tag: str) -> str:
    if not release or release not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == release:
            if i + 1 >= len(value):
                raise EdiError(num, "release character at the end of the data", tag)
            out.append(value[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _segments(text: str) -> list[_Seg]:
    syntax, start = _syntax(text)
    segs: list[_Seg] = []
    if start:
        segs.append(_Seg(1, "UNA", [["UNA"]]))
    rel = syntax.release
    for raw in _split(text[start:], syntax.terminator, rel):
        body = raw.strip("\r\n")
        if not body:
            continue
        num = len(segs) + 1
        els: list[list[str]] = []
        for element in _split(body, syntax.element, rel):
            comps = _split(element, syntax.component, rel)
            els.append([_unescape(c, rel, num, body[:3]) for c in comps])
        tag = els[0][0] if len(els[0]) == 1 else ""
        if not _TAG.fullmatch(tag):
            raise EdiError(num, f"{_quote(body[:20])} does not start with a segment tag", body[:3])
        if tag == "UNA":
            raise EdiError(num, "UNA is only allowed at the start of the file", "UNA")
        segs.append(_Seg(num, tag, els))
    return segs


def _quote(value: str) -> str:
    return repr(value if len(value) <= 20 else value[:20] + "…")


def _count(seg: _Seg, n: int) -> int:
    raw = seg.get(n).strip()
    if not _COUNT.fullmatch(raw):
        raise EdiError(seg.num, f"{seg.tag} count {_quote(raw)} is not a number", seg.tag)
    return int(raw)


# -- structure ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Loop:
    lin: _Seg
    item: str
    item_type: str
    pia: str | None = None
    qty: int | None = None


class _Parser:
    def __init__(self, text: str, qty_qualifier: str, sku_qualifier: str) -> None:
        self.text = text.lstrip("\ufeff \t\r\n")
        self.qty_qualifier = qty_qualifier
        self.sku_qualifier = sku_qualifier
        self.lines = LineCollector()
        self.date: datetime | None = None

    def parse(self) -> Document:
        if not self.text.startswith(("UNA", "UNB")):
            raise EdiError(1, "an EDIFACT interchange starts with UNA or UNB", "")
        segs = _segments(self.text)
        first = 1 if segs and segs[0].tag == "UNA" else 0
        if first >= len(segs) or segs[first].tag != "UNB":
            num = segs[first].num if first < len(segs) else first + 1
            raise EdiError(num, "expected UNB (interchange header)", "UNB")
        unb = segs[first]
        sender = check_id(unb.get(2), "sender id (UNB S002)", unb.num, "UNB")
        receiver = check_id(unb.get(3), "recipient id (UNB S003)", unb.num, "UNB")
        control = check_id(unb.get(5), "interchange control reference (UNB 0020)", unb.num,
                           "UNB")
        i, messages = first + 1, 0
        while True:
            if i >= len(segs):
                raise EdiError(unb.num, f"interchange {control} has no UNZ trailer "
                               "(file truncated?)", "UNB")
            seg = segs[i]
            if seg.tag == "UNH":
                i = self._message(segs, i)
                messages += 1
            elif seg.tag == "UNZ":
                if _count(seg, 1) != messages:
                    raise EdiError(seg.num, f"UNZ says {seg.get(1).strip()} messages, the "
                                   f"interchange has {messages}", "UNZ")
                if seg.get(2).strip() != control:
                    raise EdiError(seg.num, f"UNZ reference {_quote(seg.get(2).strip())} does "
                                   f"not match UNB {_quote(control)}", "UNZ")
                i += 1
                break
            elif seg.tag == "UNG":
                raise EdiError(seg.num, "functional groups (UNG) are not supported", "UNG")
            else:
                raise EdiError(seg.num, f"expected UNH or UNZ, found {seg.tag}", seg.tag)
        if i < len(segs):
            raise EdiError(segs[i].num, "data after UNZ (one interchange per file)", segs[i].tag)
        date = self.date
        if date is None:
            date = parse_date(unb.get(4, 0), unb.get(4, 1), unb.num, "UNB")
        return Document("eancom-invrpt", sender, receiver, control, date, self.lines.lines)

    def _message(self, segs: list[_Seg], i: int) -> int:
        unh = segs[i]
        ref = unh.get(1).strip()
        if not ref:
            raise EdiError(unh.num, "message reference (UNH 0062) is empty", "UNH")
        kind = unh.get(2, 0).strip()
        if kind != "INVRPT":
            raise EdiError(unh.num, f"message type {_quote(kind)} is not INVRPT", "UNH")
        loop: _Loop | None = None
        seen_lin = False
        j = i + 1
        while True:
            if j >= len(segs):
                raise EdiError(unh.num, f"message {ref} has no UNT trailer (file truncated?)",
                               "UNH")
            seg = segs[j]
            tag = seg.tag
            if tag == "UNT":
                self._close(loop)
                expected = j - i + 1
                if _count(seg, 1) != expected:
                    raise EdiError(seg.num, f"UNT says {seg.get(1).strip()} segments, the "
                                   f"message has {expected}", "UNT")
                if seg.get(2).strip() != ref:
                    raise EdiError(seg.num, f"UNT reference {_quote(seg.get(2).strip())} does "
                                   f"not match UNH {_quote(ref)}", "UNT")
                return j + 1
            if tag in _SERVICE:
                raise EdiError(seg.num, f"{tag} before the UNT closing the message of segment "
                               f"{unh.num}", tag)
            if tag == "LIN":
                self._close(loop)
                loop = _Loop(seg, seg.get(3, 0).strip(), seg.get(3, 1).strip())
                seen_lin = True
            elif tag == "PIA":
                if loop is not None and loop.pia is None:
                    loop.pia = self._pia(seg)
            elif tag == "QTY":
                if loop is not None and loop.qty is None and (
                    seg.get(1, 0).strip() == self.qty_qualifier
                ):
                    # either decimal mark is accepted, whatever UNA announces (ISO 9735)
                    raw = seg.get(1, 1).replace(",", ".")
                    loop.qty = parse_quantity(raw, seg.num, "QTY")
            elif tag == "UNS":
                self._close(loop)
                loop = None
            elif tag == "DTM" and not seen_lin and self.date is None and (
                seg.get(1, 0).strip() == "137"
            ):
                self.date = self._dtm(seg)
            j += 1

    def _pia(self, seg: _Seg) -> str | None:
        for n in range(2, len(seg.els)):
            if seg.get(n, 1).strip() == self.sku_qualifier:
                return seg.get(n, 0).strip()
        return None

    def _dtm(self, seg: _Seg) -> datetime:
        value, fmt = seg.get(1, 1).strip(), seg.get(1, 2).strip()
        size = _DATE_FORMATS.get(fmt)
        if size is None:
            raise EdiError(seg.num, f"date format {_quote(fmt)} is not supported "
                           "(102, 203 or 204)", "DTM")
        if len(value) != size:
            raise EdiError(seg.num, f"date {_quote(value)} does not match format {fmt}", "DTM")
        return parse_date(value[:8], value[8:], seg.num, "DTM")

    def _close(self, loop: _Loop | None) -> None:
        if loop is None:
            return
        lin = loop.lin
        if self.sku_qualifier == "LIN":
            if not loop.item:
                raise EdiError(lin.num, "LIN has no item number", "LIN")
            sku = loop.item
        elif loop.pia is not None:
            sku = loop.pia
        elif loop.item and loop.item_type == self.sku_qualifier:
            sku = loop.item
        else:
            raise EdiError(lin.num, f"LIN loop has no {_quote(self.sku_qualifier)} product id "
                           "(PIA)", "LIN")
        if loop.qty is None:
            raise EdiError(lin.num, f"LIN loop has no QTY+{self.qty_qualifier}", "LIN")
        self.lines.add(sku, loop.qty, lin.num, "LIN")
