"""The `edi_inventory` connector: X12 846 and EANCOM INVRPT parsers, the inbox watcher, and the
connector against the real engine on SQLite.

What matters most: a file is acknowledged (moved to `processed/`) only after its counts are
committed, it is applied whole or not at all, a half-written file is never read, the same
interchange twice changes nothing, and a bad file ends in `failed/` with the reason beside it
and a dead letter — never an exception out of the parser, whatever the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import select

from connectors.base import Connector, ConnectorContext, Inbound, PermanentPushError
from connectors.edi_inventory import (
    Document,
    EdiError,
    EdiInventoryConfig,
    EdiInventoryConnector,
    parse_846,
    parse_any,
    parse_invrpt,
)
from connectors.edi_inventory.sim import drop, render_846, render_invrpt
from syncd.config import ConfigError, parse_config
from syncd.engine import Engine
from syncd.model import EventType, to_micros
from syncd.store import repository as repo
from syncd.store import sqlite_url
from syncd.store import tables as t
from tests.core import retailer, running_engine, until

FIXTURES = Path(__file__).parent / "fixtures" / "edi"
WAIT = 10.0  # upper bound for anything to happen; tests finish far sooner
EANCOM_SENDER = "5412345000013"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# ============================================================================================
# X12 846
# ============================================================================================


def test_846_standard_delimiters() -> None:
    doc = parse_846(fixture("846_standard.edi"))
    assert doc == Document(
        standard="x12-846", sender="WH001", receiver="SYNCDRETAIL", control_number="000000101",
        document_date=utc(2026, 11, 23, 9, 50),
        lines=[("SKU-1", 12), ("SKU-2", 0), ("SKU-3", 250)],
    )
    assert doc.document_date.tzinfo is UTC


def test_846_quantity_on_hand_instead_of_available() -> None:
    doc = parse_846(fixture("846_standard.edi"), qty_qualifier="17")
    assert doc.lines == [("SKU-1", 14), ("SKU-2", 3), ("SKU-3", 250)]


def test_846_sku_from_another_lin_pair() -> None:
    text = fixture("846_standard.edi").replace("LIN*3*BP*BUYER-77*SK*SKU-3",
                                               "LIN*3*BP*BUYER-77*UP*012345678929")
    doc = parse_846(text, sku_qualifier="UP")
    assert [sku for sku, _ in doc.lines] == ["012345678905", "012345678912", "012345678929"]
    with pytest.raises(EdiError) as err:
        parse_846(fixture("846_standard.edi"), sku_qualifier="UP")
    assert (err.value.segment_number, err.value.segment) == (13, "LIN")
    assert "no 'UP' product id (it has BP, SK)" in str(err.value)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_846_newline_terminator_and_other_delimiters(newline: str) -> None:
    text = fixture("846_pipe_newline.edi").replace("\n", newline)
    doc = parse_846(text)
    assert (doc.sender, doc.control_number) == ("WH001", "000000102")
    assert doc.document_date == utc(2026, 11, 24, 5, 45)
    assert doc.lines == [("SKU-1", 11), ("SKU-4", 5)]


def test_846_pipe_file_needs_its_qualifier_in_every_loop() -> None:
    # LIN|SK|SKU-1 has only QTY|33: asking for on-hand names that loop
    with pytest.raises(EdiError) as err:
        parse_846(fixture("846_pipe_newline.edi"), qty_qualifier="17")
    assert str(err.value) == "segment 5 (LIN): LIN loop has no QTY with qualifier '17'"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\n\n"])
def test_846_tilde_then_newline_several_transaction_sets(newline: str) -> None:
    text = fixture("846_tilde_newline.edi").replace("\n", newline)
    doc = parse_846(text)
    assert doc.lines == [("SKU-1", 10), ("SKU-2", 20), ("SKU-5", 30)]
    assert doc.document_date == utc(2026, 11, 25)  # BIA04 without BIA05: midnight


def test_846_unpadded_isa_and_bom() -> None:
    text = "\ufeff" + fixture("846_standard.edi").replace("WH001          ", "WH001")
    assert parse_846(text).sender == "WH001"
    assert parse_any(text).control_number == "000000101"


def test_846_date_falls_back_to_the_group_header_without_bia() -> None:
    text = (fixture("846_standard.edi")
            .replace("BIA*00*SI*INV-2026-1123*20261123*0950~", "")
            .replace("SE*15*", "SE*14*"))
    assert parse_846(text).document_date == utc(2026, 11, 23, 9, 55)  # GS04/GS05


STD = "846_standard.edi"
X12_ERRORS: list[tuple[str, Callable[[str], str], int | None, str, str]] = [
    # (fixture, mutation, segment number, tag, reason excerpt)
    ("846_truncated.edi", lambda s: s, 1, "ISA", "has no IEA trailer (file truncated?)"),
    ("846_bad_se_count.edi", lambda s: s, 17, "SE", "SE01 says 14 segments, the transaction"),
    ("846_control_mismatch.edi", lambda s: s, 19, "IEA", "IEA02 '000000999' does not match"),
    ("846_fractional_qty.edi", lambda s: s, 9, "QTY", "quantity '4.5' is not a whole number"),
    ("846_missing_qty.edi", lambda s: s, 10, "LIN", "LIN loop has no QTY with qualifier '33'"),
    (STD, lambda s: s[: s.index("GE*")], 2, "GS", "functional group 101 has no GE trailer"),
    (STD, lambda s: s[: s.index("SE*")], 3, "ST", "transaction set 0001 has no SE trailer"),
    (STD, lambda s: s.replace("SE*15*0001~", ""), 17, "GE", "GE before the SE closing"),
    (STD, lambda s: s.replace("GE*1*101~", "GE*1*102~"), 18, "GE", "GE02 '102' does not match"),
    (STD, lambda s: s.replace("GE*1*101~", "GE*2*101~"), 18, "GE", "GE01 says 2 transaction"),
    (STD, lambda s: s.replace("SE*15*0001~", "SE*15*0002~"), 17, "SE", "SE02 '0002' does not"),
    (STD, lambda s: s.replace("IEA*1*", "IEA*3*"), 19, "IEA", "IEA01 says 3 functional groups"),
    (STD, lambda s: s.replace("ST*846*", "ST*810*"), 3, "ST", "transaction set '810' is not"),
    (STD, lambda s: s.replace("QTY*33*12*", "QTY*33*-2*"), 9, "QTY", "quantity '-2' is negative"),
    (STD, lambda s: s.replace("QTY*33*12*", "QTY*33*1e3*"), 9, "QTY", "'1e3' is not a number"),
    (STD, lambda s: s.replace("SKU-3", "SKU-1"), 13, "LIN", "'SKU-1' is reported twice (first"),
    (STD, lambda s: s.replace("20261123*0950", "20261131*0950"), 4, "BIA", "does not exist"),
    (STD, lambda s: s + "GS*IB*X~", 20, "GS", "data after IEA"),
    (STD, lambda s: s.replace("PID*F****", "pid*F****"), 7, "pid", "is not a segment tag"),
    (STD, lambda s: s.replace("*>~", "*>*~", 1), 1, "ISA", "segment terminator '*' is not"),
    (STD, lambda s: s[:50], 1, "ISA", "fewer than 16 elements"),
]


@pytest.mark.parametrize(("name", "mutate", "number", "tag", "reason"), X12_ERRORS)
def test_846_errors_name_the_segment(
    name: str, mutate: Callable[[str], str], number: int | None, tag: str, reason: str
) -> None:
    with pytest.raises(EdiError) as err:
        parse_846(mutate(fixture(name)))
    assert (err.value.segment_number, err.value.segment) == (number, tag)
    assert reason in err.value.reason
    assert str(err.value).startswith(f"segment {number} ({tag}): ")


def test_846_error_message_format() -> None:
    with pytest.raises(EdiError) as err:
        parse_any(fixture("846_fractional_qty.edi"))
    assert str(err.value) == "segment 9 (QTY): quantity '4.5' is not a whole number"


def test_846_whole_decimal_quantities_are_accepted() -> None:
    doc = parse_846(fixture(STD).replace("QTY*33*12*", "QTY*33*12.000*"))
    assert doc.lines[0] == ("SKU-1", 12)


# ============================================================================================
# EANCOM INVRPT
# ============================================================================================


def test_invrpt_with_una_and_release_character() -> None:
    doc = parse_invrpt(fixture("invrpt_una.edi"))
    assert doc == Document(
        standard="eancom-invrpt", sender=EANCOM_SENDER, receiver="5412345000020",
        control_number="INV0042", document_date=utc(2026, 11, 23, 9, 55),
        # "SKU?+1" is "SKU+1"; PIA's second composite; the first QTY+145 of a loop (300, not
        # the package sub-quantity 150); "12.0" is a whole number
        lines=[("SKU+1", 300), ("SKU-2", 0), ("SKU-3", 12)],
    )


def test_invrpt_sku_from_the_lin_item_number() -> None:
    doc = parse_invrpt(fixture("invrpt_una.edi"), sku_qualifier="LIN")
    assert doc.lines == [("5412345111115", 300), ("5412345222226", 0), ("5412345333337", 12)]
    # a type code matches the LIN item number too when no PIA carries it
    assert parse_invrpt(fixture("invrpt_una.edi"), sku_qualifier="EN").lines == doc.lines


def test_invrpt_without_una_on_one_line() -> None:
    text = fixture("invrpt_no_una.edi")
    assert "\n" not in text.strip()
    doc = parse_invrpt(text, sku_qualifier="LIN")
    assert (doc.sender, doc.receiver, doc.control_number) == ("WH001", "SYNCDRETAIL", "7731")
    assert doc.document_date == utc(2026, 11, 26)  # DTM+137 format 102
    assert doc.lines == [("SKU-1", 4), ("SKU-2", 5)]
    assert parse_invrpt(text, sku_qualifier="SRV").lines == doc.lines
    with pytest.raises(EdiError) as err:
        parse_invrpt(text)  # no PIA ...:SA
    assert str(err.value) == "segment 5 (LIN): LIN loop has no 'SA' product id (PIA)"


def test_invrpt_other_delimiters_from_una() -> None:
    # component ":", element "|", decimal ",", release "!", terminator "~"
    text = ("UNA:|,! ~UNB|UNOC:3|WH001:ZZ|SYNC:ZZ|261123:1000|42~UNH|1|INVRPT:D:96A:UN:EAN008~"
            "DTM|137:202611231015:203~LIN|1||X!|Y:SRV~QTY|145:7,0~LIN|2||Z!!:SRV~"
            "QTY|145:3~UNT|7|1~UNZ|1|42~")
    doc = parse_invrpt(text, sku_qualifier="LIN")
    assert doc.lines == [("X|Y", 7), ("Z!", 3)]
    assert doc.document_date == utc(2026, 11, 23, 10, 15)


def test_invrpt_date_falls_back_to_the_interchange_header() -> None:
    text = fixture("invrpt_una.edi").replace("DTM+137:202611230955:203'\n", "").replace(
        "UNT+17+", "UNT+16+")
    assert parse_invrpt(text).document_date == utc(2026, 11, 23, 10, 0)  # UNB 261123:1000


UNA = "invrpt_una.edi"
EANCOM_ERRORS: list[tuple[str, Callable[[str], str], int | None, str, str]] = [
    ("invrpt_truncated.edi", lambda s: s, 2, "UNB", "has no UNZ trailer (file truncated?)"),
    ("invrpt_bad_unt.edi", lambda s: s, 19, "UNT", "UNT says 16 segments, the message has 17"),
    ("invrpt_ref_mismatch.edi", lambda s: s, 20, "UNZ", "UNZ reference 'INV0043' does not"),
    (UNA, lambda s: s[: s.index("UNT+")], 3, "UNH", "message ME0001 has no UNT trailer"),
    (UNA, lambda s: s.replace("UNT+17+ME0001", "UNT+17+ME0002"), 19, "UNT", "'ME0002' does not"),
    (UNA, lambda s: s.replace("UNZ+1+", "UNZ+2+"), 20, "UNZ", "UNZ says 2 messages"),
    (UNA, lambda s: s.replace("INVRPT:D", "ORDERS:D"), 3, "UNH", "'ORDERS' is not INVRPT"),
    (UNA, lambda s: s.replace("QTY+145:0'", "QTY+145:0.5'"), 13, "QTY", "'0.5' is not a whole"),
    (UNA, lambda s: s.replace("QTY+145:0'", "QTY+146:0'"), 11, "LIN", "has no QTY+145"),
    (UNA, lambda s: s.replace("SKU-3:SA", "SKU-3:IN"), 14, "LIN", "no 'SA' product id"),
    (UNA, lambda s: s.replace(":203'", ":999'"), 5, "DTM", "format '999' is not supported"),
    (UNA, lambda s: s.replace("2611230955:203", "26112309:203"), 5, "DTM", "does not match"),
    (UNA, lambda s: s.replace("UNH+ME0001+", "UNG+X'UNH+ME0001+"), 3, "UNG", "(UNG) are not"),
    (UNA, lambda s: s.rstrip("\n")[:-1] + "?", 20, "UNZ", "release character at the end"),
    (UNA, lambda s: s.replace("UNA:+.? '", "UNA:+.:?'"), 1, "UNA", "not all different"),
    (UNA, lambda s: s.replace("UNA:+.? '", "UNA:+;? '"), 1, "UNA", "decimal mark ';'"),
]


@pytest.mark.parametrize(("name", "mutate", "number", "tag", "reason"), EANCOM_ERRORS)
def test_invrpt_errors_name_the_segment(
    name: str, mutate: Callable[[str], str], number: int | None, tag: str, reason: str
) -> None:
    with pytest.raises(EdiError) as err:
        parse_invrpt(mutate(fixture(name)))
    assert (err.value.segment_number, err.value.segment) == (number, tag)
    assert reason in err.value.reason


# ============================================================================================
# parse_any
# ============================================================================================


def test_parse_any_sniffs_the_standard() -> None:
    assert parse_any(fixture("846_standard.edi")).standard == "x12-846"
    assert parse_any(fixture("invrpt_una.edi")).standard == "eancom-invrpt"
    assert parse_any("\n\n" + fixture("invrpt_no_una.edi"),
                     eancom_sku_qualifier="LIN").standard == "eancom-invrpt"
    assert parse_any(fixture("846_standard.edi"), qty_qualifier="17").lines[0] == ("SKU-1", 14)
    with pytest.raises(EdiError, match="neither an X12 interchange"):
        parse_any("<xml/>")
    with pytest.raises(EdiError) as err:
        parse_any("  \n")
    assert err.value.segment_number is None
    assert str(err.value) == "the file is empty"


# ============================================================================================
# Properties: nothing but a Document or an EdiError, and generated documents round-trip
# ============================================================================================

VALID = ["846_standard.edi", "846_tilde_newline.edi", "846_pipe_newline.edi", "invrpt_una.edi",
         "invrpt_no_una.edi"]
TERMINATORS = {"846_standard.edi": "~", "846_tilde_newline.edi": "~\n",
               "846_pipe_newline.edi": "\n", "invrpt_una.edi": "'\n",
               "invrpt_no_una.edi": "'"}
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def parses_or_rejects(text: str) -> None:
    options: list[dict[str, str]] = [{}, {"eancom_sku_qualifier": "LIN", "qty_qualifier": "17"}]
    for kw in options:
        error: EdiError | None = None
        try:
            doc = parse_any(text, **kw)
        except EdiError as err:
            error = err
        if error is not None:
            assert error.segment_number is None or error.segment_number >= 1
            assert str(error)
        else:
            assert isinstance(doc, Document)
            assert doc.document_date.tzinfo is not None
            assert all(isinstance(q, int) and q >= 0 for _, q in doc.lines)
            assert len({sku for sku, _ in doc.lines}) == len(doc.lines)


@FUZZ
@given(st.text())
def test_fuzz_arbitrary_text(text: str) -> None:
    parses_or_rejects(text)


@FUZZ
@given(st.sampled_from(["ISA*", "ISA|", "UNB+", "UNA:+.? '", "UNA", "ISA*00*"]),
       st.text(alphabet=st.sampled_from("ISAGSTEQLNUBHZ*|~'+:?>^.0123456789 \n-"), max_size=300))
def test_fuzz_envelope_like_text(head: str, tail: str) -> None:
    parses_or_rejects(head + tail)


@dataclass(frozen=True)
class Mutation:
    kind: str
    index: int
    char: str


@FUZZ
@given(st.sampled_from(VALID),
       st.lists(st.builds(Mutation, st.sampled_from(["delete", "duplicate", "flip", "cut",
                                                     "swap"]),
                          st.integers(0, 10_000), st.characters()), min_size=1, max_size=3))
def test_fuzz_mutations_of_valid_files(name: str, mutations: list[Mutation]) -> None:
    text = fixture(name)
    term = TERMINATORS[name]
    for m in mutations:
        segs = text.split(term)
        i = m.index % len(segs)
        if m.kind == "delete":
            del segs[i]
        elif m.kind == "duplicate":
            segs.insert(i, segs[i])
        elif m.kind == "swap" and len(segs) > 1:
            j = (i + 1) % len(segs)
            segs[i], segs[j] = segs[j], segs[i]
        text = term.join(segs)
        if m.kind == "flip" and text:
            k = m.index % len(text)
            text = text[:k] + m.char + text[k + 1 :]
        elif m.kind == "cut":
            text = text[: m.index % (len(text) + 1)]
    parses_or_rejects(text)


X12_SKU = st.text(alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789-_./"),
                  min_size=1, max_size=30)
ANY_SKU = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
    min_size=1, max_size=30,
).filter(lambda s: s == s.strip())
QTY = st.integers(0, 10**9)
WHEN = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31),
                    timezones=st.just(UTC))
X12_DELIMITERS = [  # (element, component, terminator, repetition)
    ("*", ">", "~", "^"),
    ("*", ">", "~\n", "^"),
    ("*", ">", "~\r\n", "^"),
    ("|", "^", "\n", None),
    ("!", ":", "'", "U"),
]


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(X12_SKU, QTY, max_size=20), WHEN, st.sampled_from(X12_DELIMITERS),
       st.integers(1, 3), st.integers(0, 999_999_999), st.booleans())
def test_round_trip_846(
    lines: dict[str, int], when: datetime, delimiters: tuple[str, str, str, str | None],
    sets: int, control: int, on_hand: bool,
) -> None:
    element, component, terminator, repetition = delimiters
    when = when.replace(microsecond=0)
    text = render_846(list(lines.items()), when=when, control=control, element=element,
                      component=component, terminator=terminator, repetition=repetition,
                      sets=sets, on_hand={k: v + 1 for k, v in lines.items()} if on_hand else None)
    doc = parse_846(text)
    assert doc.sender == "WH001"
    assert doc.control_number == f"{control:09d}"
    assert doc.document_date == when
    assert dict(doc.lines) == lines
    if on_hand:
        assert dict(parse_846(text, qty_qualifier="17").lines) == {
            k: v + 1 for k, v in lines.items()}


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(ANY_SKU, QTY, max_size=20), WHEN, st.booleans(), st.booleans(),
       st.sampled_from(["SA", "LIN"]), st.from_regex(r"[A-Z0-9]{1,14}", fullmatch=True))
def test_round_trip_invrpt(
    lines: dict[str, int], when: datetime, una: bool, newlines: bool, sku_in: str, control: str,
) -> None:
    when = when.replace(second=0, microsecond=0)
    text = render_invrpt(list(lines.items()), when=when, control=control, una=una,
                         newlines=newlines, sku_in=sku_in)
    doc = parse_invrpt(text, sku_qualifier=sku_in)
    assert (doc.control_number, doc.document_date) == (control, when)
    assert doc.lines == list(lines.items())


# ============================================================================================
# The connector, alone
# ============================================================================================

LOCATIONS = {"WH001": "lyon", EANCOM_SENDER: "lyon"}


def config(inbox: Any, **kw: Any) -> EdiInventoryConfig:
    base: dict[str, Any] = {"inbox": str(inbox), "locations": LOCATIONS,
                            "poll_every": "50ms", "settle": "200ms"}
    base.update(kw)
    return EdiInventoryConfig.model_validate(base)


def make(inbox: Path, name: str = "wms", **kw: Any) -> EdiInventoryConnector:
    ctx = ConnectorContext(locations=retailer().locations, channels={})
    return EdiInventoryConnector(name, config(inbox, **kw), ctx)


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    c = EdiInventoryConfig.model_validate({"inbox": "/srv/edi", "locations": {"WH001": "lyon"}})
    assert (c.qty_qualifier, c.sku_qualifier, c.eancom_qty_qualifier,
            c.eancom_sku_qualifier) == ("33", "SK", "145", "SA")
    assert (c.poll_every, c.settle, c.pattern) == (2.0, 1.0, "*")
    assert config(tmp_path).settle == pytest.approx(0.2)
    bad: dict[str, Any]
    for bad in ({"extra": 1}, {"locations": {}}, {"poll_every": "0s"}, {"poll_every": 2},
                {"qty_qualifier": "33 "}, {"sku_qualifier": ""}, {"pattern": "a/b"},
                {"locations": {" ": "lyon"}}, {"inbox": ""}):
        with pytest.raises(ValidationError):
            config(bad.pop("inbox", tmp_path), **bad)


def test_design_example_section_validates_through_the_config_loader(tmp_path: Path) -> None:
    toml = f"""
[daemon]
state_dir = "{tmp_path}"

[locations.lyon-dc]
kind = "warehouse"
authority = "wms"

[connectors.wms]
type = "edi_inventory"
inbox = "{tmp_path}/edi/inbox"
locations = {{ "WH001" = "lyon-dc" }}
settle = "1500ms"
"""
    registry = {"edi_inventory": EdiInventoryConnector}
    cfg = parse_config(toml, registry=registry, environ={})
    settings_ = cfg.connectors["wms"].settings
    assert isinstance(settings_, EdiInventoryConfig)
    assert (settings_.locations, settings_.settle) == ({"WH001": "lyon-dc"}, 1.5)
    with pytest.raises(ConfigError) as err:
        parse_config(toml.replace('settle = "1500ms"', 'settle = 2\nqty_qualifer = "17"'),
                     registry=registry, environ={})
    assert "connectors.wms.settle" in str(err.value)
    assert "connectors.wms.qty_qualifer" in str(err.value)


def test_relative_inbox_is_under_the_state_dir(tmp_path: Path) -> None:
    ctx = ConnectorContext(locations=retailer().locations, channels={}, state_dir=str(tmp_path))
    conn = EdiInventoryConnector("wms", config(Path("edi/in")), ctx)
    assert conn.inbox.root == tmp_path / "edi" / "in"


def is_up(conn: Connector) -> bool:
    return conn.connected


async def test_no_channel_side(tmp_path: Path) -> None:
    conn = make(tmp_path / "in")
    assert isinstance(conn, Connector)
    assert (conn.max_batch, conn.per_location, conn.basis) == (1, False, "available")
    assert not is_up(conn)
    await conn.start()
    assert is_up(conn)
    assert all((tmp_path / "in" / d).is_dir() for d in ("processed", "failed"))
    with pytest.raises(PermanentPushError, match="edi_inventory serves no channel"):
        await conn.push("web", [])
    with pytest.raises(NotImplementedError):
        await conn.read_levels("web", [("SKU-1", "")])
    assert (await conn.webhook({}, b"{}")).status == 404
    conn.on_reservation(None)  # type: ignore[arg-type]
    await conn.close()


def test_misconfigured_location_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "syncd.connectors.edi_inventory"):
        make(tmp_path, locations={"WH001": "nowhere", "WH002": "paris"})
    assert "maps to location 'nowhere', which is not configured" in caplog.text
    assert "not the authority of location 'paris'" in caplog.text


async def call(fn: Callable[..., Any] | None, *args: Any) -> None:
    """Run an `Inbound` callback the way the engine does."""
    assert fn is not None
    result = fn(*args)
    if inspect.isawaitable(result):
        await result


async def collect(conn: EdiInventoryConnector, n: int) -> list[Inbound]:
    """The first `n` deliveries of `events()`, without an engine."""
    out: list[Inbound] = []

    async def take() -> None:
        async for inbound in conn.events():
            out.append(inbound)
            if len(out) == n:
                return

    await asyncio.wait_for(take(), WAIT)
    return out


async def test_files_in_name_order_and_ignored_names(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    conn = make(inbox, pattern="*.edi")
    await conn.start()
    when = utc(2026, 11, 23, 10)
    for i, name in enumerate(["c.edi", "a.edi", "b.edi"]):
        drop(inbox, name, render_846([(f"SKU-{i}", i)], when=when, control=i + 1))
    for name in (".hidden.edi", "x.edi.tmp", "y.edi.part", "notes.txt"):
        (inbox / name).write_text(render_846([("X", 1)], when=when, control=99))
    (inbox / "subdir.edi").mkdir()
    got = await collect(conn, 3)
    assert [inb.events[0].event_id for inb in got] == [
        "WH001:000000002:SKU-1", "WH001:000000003:SKU-2", "WH001:000000001:SKU-0"]
    ev = got[0].events[0]
    assert (ev.connector, ev.type, ev.location, ev.qty) == ("wms", EventType.COUNT, "lyon", 1)
    assert ev.occurred_at == to_micros(when)
    # nothing else is ready; nothing moves before a commit
    assert set(conn.inbox.in_flight) == {"a.edi", "b.edi", "c.edi"}
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == []
    await conn.close()


async def test_failed_commit_leaves_the_file_for_retry(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    conn = make(inbox)
    await conn.start()
    drop(inbox, "f.edi", fixture("846_standard.edi"))
    [first] = await collect(conn, 1)
    await call(first.on_failure, RuntimeError("database is locked"))
    assert (inbox / "f.edi").exists()
    [again] = await collect(conn, 1)  # read again once settled again
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events]
    await call(again.on_commit)
    assert (inbox / "processed" / "f.edi").exists() and not (inbox / "f.edi").exists()
    await conn.close()


async def test_a_restarted_intake_delivers_what_was_in_flight_again(tmp_path: Path) -> None:
    # the intake task restarts events() after an error: a delivery it never handed to the
    # engine must not stay "in flight" for ever
    inbox = tmp_path / "in"
    conn = make(inbox)
    await conn.start()
    drop(inbox, "f.edi", fixture("846_standard.edi"))
    [lost] = await collect(conn, 1)
    [again] = await collect(conn, 1)
    assert [e.event_id for e in again.events] == [e.event_id for e in lost.events]
    await call(again.on_commit)
    await call(lost.on_commit)  # late and stale: the file is already gone, nothing happens
    assert [p.name for p in (inbox / "processed").iterdir()] == ["f.edi"]
    await conn.close()


async def test_file_replaced_after_reading_is_not_moved(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    conn = make(inbox)
    await conn.start()
    drop(inbox, "f.edi", fixture("846_standard.edi"))
    [first] = await collect(conn, 1)
    drop(inbox, "f.edi", fixture("846_tilde_newline.edi"))  # a new version under the same name
    await call(first.on_commit)
    assert (inbox / "f.edi").read_text() == fixture("846_tilde_newline.edi")
    [second] = await collect(conn, 1)
    assert second.events[0].event_id == "WH001:000000103:SKU-1"
    await conn.close()


# ============================================================================================
# The connector with the real engine on SQLite
# ============================================================================================


@dataclass
class Rig:
    engine: Engine
    conn: EdiInventoryConnector
    inbox: Path

    @property
    def processed(self) -> Path:
        return self.inbox / "processed"

    @property
    def failed(self) -> Path:
        return self.inbox / "failed"

    def on_hand(self, sku: str, location: str = "lyon") -> int | None:
        lvl = self.engine.ledger.levels.get((sku, location))
        return None if lvl is None else lvl.on_hand

    async def rows(self, table: Any) -> list[Any]:
        async with self.engine.db.connect() as c:
            return list((await c.execute(select(table))).all())

    def metric(self, name: str, **labels: str) -> float:
        return self.engine.metrics.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def rig(tmp_path: Path, **kw: Any) -> AsyncIterator[Rig]:
    inbox = tmp_path / "inbox"
    async with running_engine(sqlite_url(tmp_path), retailer()) as engine:
        conn = make(inbox, **kw)
        await conn.start()

        async def feed() -> None:
            async for inbound in conn.events():
                await engine.submit(inbound)

        task = asyncio.create_task(feed())
        try:
            yield Rig(engine, conn, inbox)
        finally:
            await conn.close()
            await asyncio.wait_for(task, WAIT)


async def test_file_becomes_counts_then_moves_to_processed(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        drop(r.inbox, "inv-101.edi", fixture("846_standard.edi"))
        await until(lambda: (r.processed / "inv-101.edi").exists())
        assert not (r.inbox / "inv-101.edi").exists()
        # on_commit ran after the commit: everything is already in the database (the ledger,
        # and the levels it gives; the level rows themselves are a lazy checkpoint)
        async with r.engine.db.connect() as c:
            stored = await repo.load_levels(c)
        levels = {key: lvl.on_hand for key, lvl in stored.items()}
        assert levels == {("SKU-1", "lyon"): 12, ("SKU-2", "lyon"): 0, ("SKU-3", "lyon"): 250}
        events = {row.event_id: row for row in await r.rows(t.events)}
        row = events["WH001:000000101:SKU-1"]
        assert (row.connector, row.type, row.outcome, row.qty) == ("wms", "count", "applied", 12)
        assert row.occurred_at == to_micros(utc(2026, 11, 23, 9, 50))
        assert r.engine.stock("SKU-3")["locations"]["lyon"]["on_hand"] == 250

        drop(r.inbox, "inv-42.edi", fixture("invrpt_una.edi"))
        await until(lambda: (r.processed / "inv-42.edi").exists())
        assert (r.on_hand("SKU+1"), r.on_hand("SKU-2"), r.on_hand("SKU-3")) == (300, 0, 12)
        assert r.metric("syncd_events_total", connector="wms", type="count",
                        outcome="applied") == 6
        assert list(r.failed.iterdir()) == []


async def test_duplicate_interchange_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "syncd.connectors.edi_inventory")
    original = fixture("846_standard.edi")
    async with rig(tmp_path) as r:
        drop(r.inbox, "a.edi", original)
        await until(lambda: (r.processed / "a.edi").exists())
        # same sender and ISA13, other figures, other file name
        drop(r.inbox, "b.edi", original.replace("QTY*33*12*", "QTY*33*99*"))
        await until(lambda: (r.processed / "b.edi").exists())
        assert r.on_hand("SKU-1") == 12
        assert "duplicate interchange: b.edi repeats interchange 000000101 from WH001" in (
            caplog.text)
        # the very same file name again: kept beside the first under a timestamped name
        drop(r.inbox, "a.edi", original)
        await until(lambda: len(list(r.processed.iterdir())) == 3)
        assert (r.processed / "a.edi").read_text() == original
        assert len(await r.rows(t.events)) == 3
        assert r.metric("syncd_events_total", connector="wms", type="count",
                        outcome="duplicate") == 6
        assert not list(r.inbox.glob("*.edi"))


async def test_bad_file_goes_to_failed_with_the_reason(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        bad = fixture("846_fractional_qty.edi")
        drop(r.inbox, "bad.edi", bad)
        await until(lambda: (r.failed / "bad.edi.error").exists())
        assert (r.failed / "bad.edi").read_text() == bad
        note = (r.failed / "bad.edi.error").read_text()
        assert note == "segment 9 (QTY): quantity '4.5' is not a whole number\n"
        [dead] = await r.rows(t.dead_letters)
        assert (dead.connector, dead.origin) == ("wms", "bad.edi")
        assert dead.reason == note.strip()
        assert dead.payload == bad.encode()
        assert r.metric("syncd_dead_letters_total", connector="wms") == 1
        assert await r.rows(t.events) == [] and r.on_hand("SKU-1") is None
        assert not (r.inbox / "bad.edi").exists()

        drop(r.inbox, "stranger.edi", fixture("846_standard.edi").replace(
            "WH001          ", "WH999          "))
        await until(lambda: (r.failed / "stranger.edi.error").exists())
        assert "unknown sender 'WH999'" in (r.failed / "stranger.edi.error").read_text()
        assert r.on_hand("SKU-1") is None


async def test_half_written_file_is_not_read_early(tmp_path: Path) -> None:
    text = fixture("846_standard.edi").encode()
    chunks = [text[i : i + 200] for i in range(0, len(text), 200)]
    assert len(chunks) >= 3
    async with rig(tmp_path, settle="500ms") as r:
        with open(r.inbox / "slow.edi", "wb") as f:  # noqa: ASYNC230 - a test writer
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                await asyncio.sleep(0.2)  # well inside the settle time...
                # ...so nothing is read, although writing takes longer than `settle` in total
                assert not (r.processed / "slow.edi").exists()
                assert not list(r.failed.iterdir())
        await until(lambda: (r.processed / "slow.edi").exists())
        assert r.on_hand("SKU-3") == 250
        assert not list(r.failed.iterdir())


async def test_a_file_is_applied_whole_or_not_at_all(tmp_path: Path) -> None:
    when = utc(2026, 11, 24, 8)
    async with rig(tmp_path) as r:
        drop(r.inbox, "1.edi", render_846([("SKU-1", 5), ("SKU-2", 6)], when=when, control=1))
        await until(lambda: (r.processed / "1.edi").exists())
        # a later file: its first LIN loop is fine, its second is not
        later = render_846([("SKU-1", 50), ("SKU-2", 60)], when=utc(2026, 11, 25, 8),
                           control=2).replace("QTY*33*60*", "QTY*33*60.5*")
        drop(r.inbox, "2.edi", later)
        await until(lambda: (r.failed / "2.edi.error").exists())
        assert (r.on_hand("SKU-1"), r.on_hand("SKU-2")) == (5, 6)
        assert "segment" in (r.failed / "2.edi.error").read_text()
        assert {row.event_id for row in await r.rows(t.events)} == {
            "WH001:000000001:SKU-1", "WH001:000000001:SKU-2"}


async def test_unreadable_inbox_is_reported_not_connected(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    conn = make(blocker / "inbox")
    with pytest.raises(NotADirectoryError):
        await conn.start()
    assert not is_up(conn)
    task = asyncio.create_task(collect(conn, 1))
    await asyncio.sleep(0.2)
    assert not is_up(conn) and not task.done()
    await conn.close()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(task, WAIT)
