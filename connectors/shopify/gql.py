"""A small GraphQL executable-document parser, for the Shopify simulator.

It reads the subset of GraphQL (October 2021 spec) that API clients send: one or more operations
with variable definitions, fields with aliases, arguments and directives, inline fragments, every
literal kind (including block strings) and variables. Named fragments are parsed too, and spread
into their selection sets. It never executes anything; `sim.py` walks the tree it returns.

Parse errors raise `GraphQLSyntaxError` with the line and column, like a real server reports them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

__all__ = [
    "Document",
    "EnumValue",
    "Field",
    "FragmentSpread",
    "GraphQLSyntaxError",
    "InlineFragment",
    "Operation",
    "Selection",
    "Variable",
    "parse",
    "value_of",
]


class GraphQLSyntaxError(ValueError):
    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{message} (line {line}, column {column})")
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class Variable:
    name: str


@dataclass(frozen=True, slots=True)
class EnumValue:
    name: str


@dataclass(slots=True)
class Directive:
    name: str
    args: dict[str, Any]


@dataclass(slots=True)
class Field:
    name: str
    alias: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    directives: list[Directive] = field(default_factory=list)
    selections: list[Selection] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.alias or self.name


@dataclass(slots=True)
class InlineFragment:
    type_condition: str | None
    directives: list[Directive] = field(default_factory=list)
    selections: list[Selection] = field(default_factory=list)


@dataclass(slots=True)
class FragmentSpread:
    name: str
    directives: list[Directive] = field(default_factory=list)


Selection = Field | InlineFragment | FragmentSpread


@dataclass(slots=True)
class Operation:
    kind: str  # "query" | "mutation" | "subscription"
    name: str | None
    variables: dict[str, tuple[str, Any]]  # name -> (type, default literal)
    directives: list[Directive]
    selections: list[Selection]


@dataclass(slots=True)
class Fragment:
    name: str
    type_condition: str
    selections: list[Selection]


@dataclass(slots=True)
class Document:
    operations: list[Operation]
    fragments: dict[str, Fragment]

    def operation(self, name: str | None) -> Operation:
        """The operation to run: the named one, or the only one (GraphQL spec 6.1)."""
        if name:
            for op in self.operations:
                if op.name == name:
                    return op
            raise ValueError(f"Unknown operation named '{name}'.")
        if len(self.operations) != 1:
            raise ValueError("An operation name is required when the document has several.")
        return self.operations[0]


_TOKEN = re.compile(
    r"""
    (?P<ignored>[\s,\ufeff]+|\#[^\n\r]*)
  | (?P<spread>\.\.\.)
  | (?P<punct>[!$&()\:=@\[\]{|}])
  | (?P<block>\"\"\"(?:\\\"\"\"|[^"]|"(?!""))*\"\"\")
  | (?P<string>"(?:\\.|[^"\\\n\r])*")
  | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?![A-Za-z_.0-9]))
  | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
    """,
    re.VERBOSE,
)
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t"}


@dataclass(slots=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _unescape(raw: str, pos: int, where: _Parser) -> str:
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = raw[i + 1] if i + 1 < len(raw) else ""
        if nxt == "u":
            hexa = raw[i + 2 : i + 6]
            if len(hexa) != 4 or not all(c in "0123456789abcdefABCDEF" for c in hexa):
                where.fail("Invalid Unicode escape sequence", pos + i)
            out.append(chr(int(hexa, 16)))
            i += 6
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            where.fail(f"Invalid character escape sequence: \\{nxt}", pos + i)
    return "".join(out)


def _block_value(raw: str) -> str:
    """Block string value (spec 2.9.4: common indentation and blank edge lines removed)."""
    lines = raw.replace('\\"""', '"""').splitlines()
    indent: int | None = None
    for line in lines[1:]:
        stripped = line.lstrip(" \t")
        if stripped:
            n = len(line) - len(stripped)
            indent = n if indent is None else min(indent, n)
    if indent:
        lines = lines[:1] + [line[indent:] for line in lines[1:]]
    while lines and not lines[0].strip(" \t"):
        lines.pop(0)
    while lines and not lines[-1].strip(" \t"):
        lines.pop()
    return "\n".join(lines)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.toks: list[_Tok] = []
        pos = 0
        while pos < len(source):
            m = _TOKEN.match(source, pos)
            if m is None:
                self.fail(f"Unexpected character {source[pos]!r}", pos)
            kind = m.lastgroup or ""
            if kind != "ignored":
                self.toks.append(_Tok(kind, m.group(), pos))
            pos = m.end()
        self.i = 0

    def fail(self, message: str, pos: int | None = None) -> NoReturn:
        if pos is None:
            pos = self.toks[self.i].pos if self.i < len(self.toks) else len(self.source)
        line = self.source.count("\n", 0, pos) + 1
        column = pos - (self.source.rfind("\n", 0, pos) + 1) + 1
        raise GraphQLSyntaxError(message, line, column)

    # -- token helpers ----------------------------------------------------------------------

    def peek(self, text: str | None = None, kind: str | None = None) -> bool:
        if self.i >= len(self.toks):
            return False
        tok = self.toks[self.i]
        if kind is not None and tok.kind != kind:
            return False
        return text is None or tok.text == text

    def take(self) -> _Tok:
        if self.i >= len(self.toks):
            self.fail("Unexpected end of document")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> _Tok:
        if not self.peek(text):
            found = self.toks[self.i].text if self.i < len(self.toks) else "end of document"
            self.fail(f"Expected {text!r}, found {found!r}")
        return self.take()

    def name(self) -> str:
        if not self.peek(kind="name"):
            found = self.toks[self.i].text if self.i < len(self.toks) else "end of document"
            self.fail(f"Expected a name, found {found!r}")
        return self.take().text

    # -- grammar ----------------------------------------------------------------------------

    def document(self) -> Document:
        ops: list[Operation] = []
        frags: dict[str, Fragment] = {}
        if not self.toks:
            self.fail("Unexpected end of document")
        while self.i < len(self.toks):
            if self.peek("{"):
                ops.append(Operation("query", None, {}, [], self.selection_set()))
            elif self.peek("fragment", "name"):
                self.take()
                fname = self.name()
                if fname == "on":
                    self.fail("Unexpected name 'on'")
                self.expect("on")
                cond = self.name()
                self.directives(const=True)
                frags[fname] = Fragment(fname, cond, self.selection_set())
            elif self.peek(kind="name") and self.toks[self.i].text in (
                "query", "mutation", "subscription"
            ):
                kind = self.take().text
                op_name = self.name() if self.peek(kind="name") else None
                variables = self.variable_definitions() if self.peek("(") else {}
                directives = self.directives(const=False)
                ops.append(Operation(kind, op_name, variables, directives, self.selection_set()))
            else:
                self.fail(f"Unexpected {self.toks[self.i].text!r}")
        if not ops:
            self.fail("The document has no operation")
        return Document(ops, frags)

    def variable_definitions(self) -> dict[str, tuple[str, Any]]:
        self.expect("(")
        out: dict[str, tuple[str, Any]] = {}
        while not self.peek(")"):
            self.expect("$")
            vname = self.name()
            self.expect(":")
            typ = self.type_ref()
            default = None
            if self.peek("="):
                self.take()
                default = self.value(const=True)
            self.directives(const=True)
            out[vname] = (typ, default)
        self.expect(")")
        if not out:
            self.fail("Expected a variable definition")
        return out

    def type_ref(self) -> str:
        if self.peek("["):
            self.take()
            inner = self.type_ref()
            self.expect("]")
            typ = f"[{inner}]"
        else:
            typ = self.name()
        if self.peek("!"):
            self.take()
            typ += "!"
        return typ

    def directives(self, const: bool) -> list[Directive]:
        out: list[Directive] = []
        while self.peek("@"):
            self.take()
            dname = self.name()
            args = self.arguments(const) if self.peek("(") else {}
            out.append(Directive(dname, args))
        return out

    def arguments(self, const: bool) -> dict[str, Any]:
        self.expect("(")
        args: dict[str, Any] = {}
        while not self.peek(")"):
            aname = self.name()
            self.expect(":")
            args[aname] = self.value(const)
        self.expect(")")
        if not args:
            self.fail("Expected an argument")
        return args

    def selection_set(self) -> list[Selection]:
        self.expect("{")
        out: list[Selection] = []
        while not self.peek("}"):
            out.append(self.selection())
        self.expect("}")
        if not out:
            self.fail("Expected a selection")
        return out

    def selection(self) -> Selection:
        if self.peek("..."):
            self.take()
            if self.peek("on", "name"):
                self.take()
                cond: str | None = self.name()
            elif self.peek(kind="name"):
                spread = self.name()
                return FragmentSpread(spread, self.directives(const=False))
            else:
                cond = None
            directives = self.directives(const=False)
            return InlineFragment(cond, directives, self.selection_set())
        first = self.name()
        alias: str | None = None
        fname = first
        if self.peek(":"):
            self.take()
            alias, fname = first, self.name()
        args = self.arguments(const=False) if self.peek("(") else {}
        directives = self.directives(const=False)
        sels = self.selection_set() if self.peek("{") else []
        return Field(fname, alias, args, directives, sels)

    def value(self, const: bool) -> Any:
        tok = self.take()
        if tok.text == "$" and tok.kind == "punct":
            if const:
                self.fail("Unexpected variable in a constant value", tok.pos)
            return Variable(self.name())
        if tok.kind == "number":
            if any(c in tok.text for c in ".eE"):
                return float(tok.text)
            return int(tok.text)
        if tok.kind == "string":
            return _unescape(tok.text[1:-1], tok.pos + 1, self)
        if tok.kind == "block":
            return _block_value(tok.text[3:-3])
        if tok.kind == "name":
            if tok.text == "true":
                return True
            if tok.text == "false":
                return False
            if tok.text == "null":
                return None
            return EnumValue(tok.text)
        if tok.text == "[":
            items = []
            while not self.peek("]"):
                items.append(self.value(const))
            self.expect("]")
            return items
        if tok.text == "{":
            obj: dict[str, Any] = {}
            while not self.peek("}"):
                key = self.name()
                self.expect(":")
                obj[key] = self.value(const)
            self.expect("}")
            return obj
        self.fail(f"Unexpected {tok.text!r}", tok.pos)


def parse(source: str) -> Document:
    """Parse an executable document; raises `GraphQLSyntaxError`."""
    if not isinstance(source, str):
        raise GraphQLSyntaxError("The query must be a string", 1, 1)
    return _Parser(source).document()


def value_of(node: Any, variables: Mapping[str, Any]) -> Any:
    """A literal with its variables substituted (an unset variable is null)."""
    if isinstance(node, Variable):
        return variables.get(node.name)
    if isinstance(node, EnumValue):
        return node.name
    if isinstance(node, list):
        return [value_of(v, variables) for v in node]
    if isinstance(node, dict):
        return {k: value_of(v, variables) for k, v in node.items()}
    return node
