"""A warehouse's EDI translator, simulated: writes X12 846 and EANCOM INVRPT interchanges.

Used by the tests (round trips through the parsers) and by anything that needs a WMS dropping
stock files in an inbox. `drop` writes the way a careful sender does: to a `.part` name first,
then renamed into place, so the watcher never sees a half-written file under its final name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

__all__ = ["drop", "render_846", "render_invrpt"]


def render_846(
    lines: Sequence[tuple[str, int]],
    *,
    when: datetime,
    sender: str = "WH001",
    receiver: str = "SYNCD",
    control: int = 1,
    element: str = "*",
    component: str = ">",
    terminator: str = "~\n",
    repetition: str | None = "^",
    qty_qualifier: str = "33",
    sku_qualifier: str = "SK",
    on_hand: Mapping[str, int] | None = None,
    sets: int = 1,
) -> str:
    """An 846 interchange: one functional group, `sets` transaction sets sharing the lines.

    Each LIN carries a vendor part number pair before the SKU pair; `on_hand` adds a QTY*17
    before the QTY*`qty_qualifier` of those SKUs. `terminator` may be followed by line breaks
    (`"~\\n"`); values must not contain the delimiters (X12 has no escape character)."""
    e = element
    ctl = f"{control:09d}"
    version = "00501" if repetition is not None else "00401"
    segs = [
        e.join(["ISA", "00", " " * 10, "00", " " * 10, "ZZ", f"{sender:<15}", "ZZ",
                f"{receiver:<15}", when.strftime("%y%m%d"), when.strftime("%H%M"),
                repetition if repetition is not None else "U", version, ctl, "0", "P",
                component]),
        e.join(["GS", "IB", sender, receiver, when.strftime("%Y%m%d"), when.strftime("%H%M"),
                "1", "X", "005010"]),
    ]
    sets = max(1, sets)
    for s in range(sets):
        st_ctl = f"{s + 1:04d}"
        body = [
            e.join(["ST", "846", st_ctl]),
            e.join(["BIA", "00", "SI", f"INV{control}-{s + 1}", when.strftime("%Y%m%d"),
                    when.strftime("%H%M%S")]),
        ]
        mine = list(lines)[s::sets]
        for n, (sku, qty) in enumerate(mine, 1):
            body.append(e.join(["LIN", str(n), "VN", f"V{n}", sku_qualifier, sku]))
            if on_hand is not None and sku in on_hand:
                body.append(e.join(["QTY", "17", str(on_hand[sku]), "EA"]))
            body.append(e.join(["QTY", qty_qualifier, str(qty), "EA"]))
        body.append(e.join(["CTT", str(len(mine))]))
        body.append(e.join(["SE", str(len(body) + 1), st_ctl]))
        segs.extend(body)
    segs.append(e.join(["GE", str(sets), "1"]))
    segs.append(e.join(["IEA", "1", ctl]))
    return "".join(seg + terminator for seg in segs)


def render_invrpt(
    lines: Sequence[tuple[str, int]],
    *,
    when: datetime,
    sender: str = "5412345000013",
    receiver: str = "5412345000020",
    control: str = "INV0001",
    una: bool = True,
    newlines: bool = True,
    sku_in: str = "SA",
    qty_qualifier: str = "145",
) -> str:
    """An INVRPT interchange with one message. With `sku_in="SA"` each SKU is a PIA supplier
    article number under a LIN carrying a GTIN; with `"LIN"` the SKU is the LIN item number.
    Values are escaped with the release character, so they may contain any delimiter."""

    def esc(value: str) -> str:
        return "".join("?" + c if c in "?+:'" else c for c in value)

    body = [
        "UNH+1+INVRPT:D:96A:UN:EAN008",
        f"BGM+35+{esc(control)}+9",
        f"DTM+137:{when.strftime('%Y%m%d%H%M')}:203",
    ]
    for n, (sku, qty) in enumerate(lines, 1):
        if sku_in == "LIN":
            body.append(f"LIN+{n}++{esc(sku)}:SRV")
        else:
            body.append(f"LIN+{n}++{5412345000000 + n:013d}:EN")
            body.append(f"PIA+5+{esc(sku)}:SA::91")
        body.append(f"QTY+{qty_qualifier}:{qty}:PCE")
    body.append("UNS+S")
    body.append(f"UNT+{len(body) + 1}+1")
    segs = [
        f"UNB+UNOC:3+{esc(sender)}:14+{esc(receiver)}:14+{when.strftime('%y%m%d:%H%M')}"
        f"+{esc(control)}",
        *body,
        f"UNZ+1+{esc(control)}",
    ]
    sep = "'\n" if newlines else "'"
    head = ("UNA:+.? '" + ("\n" if newlines else "")) if una else ""
    return head + "".join(seg + sep for seg in segs)


def drop(inbox: str | os.PathLike[str], name: str, text: str | bytes) -> Path:
    """Write a file into the inbox atomically (`.part` first, then renamed into place)."""
    final = Path(inbox) / name
    part = final.with_name(final.name + ".part")
    part.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(part, final)
    return final
