"""ANSI X12 846 Inventory Inquiry/Advice: one interchange per file, read into a `Document`.

Layout (X12 4010 and later)::

    ISA*00*          *00*          *ZZ*WH001          *ZZ*SYNCD          *261123*1000*^*00501*
        000000001*0*P*>~                     (one line in the file: 106 characters)
    GS*IB*WH001*SYNCD*20261123*1000*1*X*005010~
    ST*846*0001~
    BIA*00*SI*INV-1*20261123*0955~          purpose, report type, reference, CCYYMMDD, HHMM[SS[D..]]
    LIN**SK*SKU-1*UP*012345678905~          LIN01 line id, then (qualifier, id) pairs
    QTY*33*12*EA~                            33 = quantity available, 17 = quantity on hand
    SE*4*0001~                               SE01 = segments from ST to SE inclusive
    GE*1*1~                                  GE01 = transaction sets in the group
    IEA*1*000000001~                         IEA01 = functional groups in the interchange

Delimiters come from the ISA itself: the element separator is the character right after "ISA",
the component separator is ISA16 and the segment terminator is the character after ISA16. Line
breaks after a terminator (or a line break used as the terminator, with or without a carriage
return) are tolerated. The ISA fields are located by separator rather than by fixed column, so a
sender that does not pad ISA06/ISA08 to 15 characters is still read.

The document date is BIA04/BIA05 of the first transaction set (the moment the inventory advice
describes; a missing BIA05 means midnight). Without a BIA it falls back to the functional group's
GS04/GS05, then to the interchange's ISA09/ISA10. All are read as UTC (see `document`).

A LIN loop runs from its LIN to the next LIN, CTT or SE. Its SKU is the id of the first pair
whose qualifier is `sku_qualifier`; its quantity is the first QTY in the loop whose QTY01 is
`qty_qualifier`. Other QTY segments (another qualifier, sub-quantities) are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from .document import Document, EdiError, LineCollector, check_id, parse_date, parse_quantity

__all__ = ["parse_846"]

_TAG = re.compile(r"[A-Z][A-Z0-9]{1,2}", re.ASCII)
_COUNT = re.compile(r"[0-9]{1,9}", re.ASCII)
_ENVELOPE = frozenset({"ISA", "GS", "ST", "SE", "GE", "IEA"})


@dataclass(slots=True)
class _Seg:
    num: int  # 1-based position in the file
    tag: str
    els: list[str]  # els[0] is the tag, els[n] is element n

    def el(self, n: int) -> str:
        return self.els[n] if n < len(self.els) else ""


def parse_846(text: str, *, qty_qualifier: str = "33", sku_qualifier: str = "SK") -> Document:
    """Parse one X12 846 interchange. Raises `EdiError`, and only that, for any bad input."""
    try:
        return _Parser(text, qty_qualifier, sku_qualifier).parse()
    except EdiError:
        raise
    except Exception as exc:  # a bug must still surface as a rejected file, never a crash
        raise EdiError(None, f"unreadable X12 interchange ({type(exc).__name__})") from exc


def _delimiters(text: str) -> tuple[str, str, str]:
    """(element separator, component separator, segment terminator) from the ISA segment."""
    if not text.startswith("ISA") or len(text) < 4:
        raise EdiError(1, "an X12 interchange starts with ISA", "ISA")
    element = text[3]
    if element.isalnum() or element.isspace():
        raise EdiError(1, f"element separator {element!r} must be a punctuation character", "ISA")
    pos = 3
    for _ in range(15):  # the separators before ISA02 .. ISA16
        pos = text.find(element, pos + 1)
        if pos < 0:
            raise EdiError(1, "ISA segment is incomplete (fewer than 16 elements)", "ISA")
    if pos + 2 >= len(text):
        raise EdiError(1, "ISA segment is incomplete (no segment terminator)", "ISA")
    component, terminator = text[pos + 1], text[pos + 2]
    if component.isalnum() or component.isspace() or component == element:
        raise EdiError(1, f"component separator (ISA16) {component!r} is not usable", "ISA")
    if terminator.isalnum() or terminator in (element, component) or terminator == " ":
        raise EdiError(1, f"segment terminator {terminator!r} is not usable", "ISA")
    return element, component, terminator


def _segments(text: str, element: str, terminator: str) -> list[_Seg]:
    out: list[_Seg] = []
    for raw in text.split(terminator):
        body = raw.strip("\r\n")
        if not body:
            continue  # blank lines between segments, the newline after the last one
        els = body.split(element)
        num = len(out) + 1
        tag = els[0]
        if not _TAG.fullmatch(tag):
            raise EdiError(num, f"{_quote(tag)} is not a segment tag", tag[:3])
        out.append(_Seg(num, tag, els))
    return out


def _quote(value: str) -> str:
    return repr(value if len(value) <= 20 else value[:20] + "…")


def _count(seg: _Seg, n: int) -> int:
    raw = seg.el(n).strip()
    if not _COUNT.fullmatch(raw):
        raise EdiError(seg.num, f"{seg.tag}{n:02d} {_quote(raw)} is not a count", seg.tag)
    return int(raw)


class _Parser:
    def __init__(self, text: str, qty_qualifier: str, sku_qualifier: str) -> None:
        self.text = text.lstrip("\ufeff \t\r\n")
        self.qty_qualifier = qty_qualifier
        self.sku_qualifier = sku_qualifier
        self.lines = LineCollector()
        self.date: datetime | None = None  # from the first BIA
        self.group_date: tuple[_Seg, str, str] | None = None  # the first GS04/GS05

    def parse(self) -> Document:
        element, _component, terminator = _delimiters(self.text)
        segs = _segments(self.text, element, terminator)
        isa = segs[0]
        if len(isa.els) != 17:
            raise EdiError(1, f"ISA has {len(isa.els) - 1} elements, not 16", "ISA")
        sender = check_id(isa.el(6), "sender id (ISA06)", 1, "ISA")
        receiver = check_id(isa.el(8), "receiver id (ISA08)", 1, "ISA")
        control = check_id(isa.el(13), "interchange control number (ISA13)", 1, "ISA")
        i, groups = 1, 0
        while True:
            if i >= len(segs):
                raise EdiError(1, f"interchange {control} has no IEA trailer (file truncated?)",
                               "ISA")
            seg = segs[i]
            if seg.tag == "GS":
                i = self._group(segs, i)
                groups += 1
            elif seg.tag == "IEA":
                if _count(seg, 1) != groups:
                    raise EdiError(seg.num, f"IEA01 says {seg.el(1).strip()} functional groups, "
                                   f"the interchange has {groups}", "IEA")
                if seg.el(2).strip() != control:
                    raise EdiError(seg.num, f"IEA02 {_quote(seg.el(2).strip())} does not match "
                                   f"ISA13 {_quote(control)}", "IEA")
                i += 1
                break
            else:
                raise EdiError(seg.num, f"expected GS or IEA, found {seg.tag}", seg.tag)
        if i < len(segs):
            raise EdiError(segs[i].num, "data after IEA (one interchange per file)", segs[i].tag)
        date = self.date
        if date is None and self.group_date is not None:
            gs, gdate, gtime = self.group_date
            date = parse_date(gdate, gtime, gs.num, "GS")
        if date is None:
            date = parse_date(isa.el(9), isa.el(10), 1, "ISA")
        return Document("x12-846", sender, receiver, control, date, self.lines.lines)

    def _group(self, segs: list[_Seg], i: int) -> int:
        gs = segs[i]
        control = gs.el(6).strip()
        if not control:
            raise EdiError(gs.num, "GS06 (group control number) is empty", "GS")
        if self.group_date is None:
            self.group_date = (gs, gs.el(4), gs.el(5))
        i += 1
        sets = 0
        while True:
            if i >= len(segs):
                raise EdiError(gs.num, f"functional group {control} has no GE trailer "
                               "(file truncated?)", "GS")
            seg = segs[i]
            if seg.tag == "ST":
                i = self._set(segs, i)
                sets += 1
            elif seg.tag == "GE":
                if _count(seg, 1) != sets:
                    raise EdiError(seg.num, f"GE01 says {seg.el(1).strip()} transaction sets, "
                                   f"the group has {sets}", "GE")
                if seg.el(2).strip() != control:
                    raise EdiError(seg.num, f"GE02 {_quote(seg.el(2).strip())} does not match "
                                   f"GS06 {_quote(control)}", "GE")
                return i + 1
            elif seg.tag in _ENVELOPE:
                raise EdiError(seg.num, f"{seg.tag} before the GE closing the functional group "
                               f"of segment {gs.num}", seg.tag)
            else:
                raise EdiError(seg.num, f"expected ST or GE, found {seg.tag}", seg.tag)

    def _set(self, segs: list[_Seg], i: int) -> int:
        st = segs[i]
        kind = st.el(1).strip()
        if kind != "846":
            raise EdiError(st.num, f"transaction set {_quote(kind)} is not an 846", "ST")
        control = st.el(2).strip()
        if not control:
            raise EdiError(st.num, "ST02 (transaction set control number) is empty", "ST")
        loop: _Loop | None = None
        j = i + 1
        while True:
            if j >= len(segs):
                raise EdiError(st.num, f"transaction set {control} has no SE trailer "
                               "(file truncated?)", "ST")
            seg = segs[j]
            tag = seg.tag
            if tag == "SE":
                self._close(loop)
                expected = j - i + 1
                if _count(seg, 1) != expected:
                    raise EdiError(seg.num, f"SE01 says {seg.el(1).strip()} segments, the "
                                   f"transaction set has {expected}", "SE")
                if seg.el(2).strip() != control:
                    raise EdiError(seg.num, f"SE02 {_quote(seg.el(2).strip())} does not match "
                                   f"ST02 {_quote(control)}", "SE")
                return j + 1
            if tag in _ENVELOPE:
                raise EdiError(seg.num, f"{tag} before the SE closing the transaction set of "
                               f"segment {st.num}", tag)
            if tag == "LIN":
                self._close(loop)
                loop = self._open(seg)
            elif tag == "QTY":
                if loop is not None and loop.qty is None and (
                    seg.el(1).strip() == self.qty_qualifier
                ):
                    loop.qty = parse_quantity(seg.el(2), seg.num, "QTY")
            elif tag == "CTT":
                self._close(loop)
                loop = None
            elif tag == "BIA" and loop is None and self.date is None:
                self.date = parse_date(seg.el(4), seg.el(5), seg.num, "BIA")
            j += 1

    def _open(self, lin: _Seg) -> _Loop:
        found: list[str] = []
        for k in range(2, len(lin.els) - 1, 2):
            qualifier = lin.els[k].strip()
            if qualifier == self.sku_qualifier:
                return _Loop(lin, lin.els[k + 1].strip())
            if qualifier:
                found.append(qualifier)
        have = f" (it has {', '.join(found[:6])})" if found else ""
        raise EdiError(lin.num, f"no {_quote(self.sku_qualifier)} product id{have}", "LIN")

    def _close(self, loop: _Loop | None) -> None:
        if loop is None:
            return
        if loop.qty is None:
            raise EdiError(loop.lin.num, f"LIN loop has no QTY with qualifier "
                           f"{_quote(self.qty_qualifier)}", "LIN")
        self.lines.add(loop.sku, loop.qty, loop.lin.num, "LIN")


@dataclass(slots=True)
class _Loop:
    lin: _Seg
    sku: str
    qty: int | None = None
