"""Row filters such as `duration >= 600 and num_speakers = 2`: a small SQL subset, parsed here.

The language is the part of SQL's WHERE clause that duckdb, pandas (through `RowFilter.mask`)
and `datasets` (a `RowFilter` is a `filter` function) can all agree on:

  comparisons   column OP value, value OP column, column OP column; OP: = == != <> < <= > >=
  logic         and, or, not, parentheses (SQL precedence: not binds tighter than and, then or)
  nulls         column is null, column is not null
  lists         column in (value, ...), column not in (value, ...)
  values        numbers (-1, 0.8, 1e3), 'single-quoted strings' ('' is a quote), true, false

A row is kept only where the predicate is true: a comparison with a null is unknown, and unknown
rows are dropped, as in SQL. The text is parsed into a tree and evaluated with pyarrow.compute;
nothing is ever handed to Python's eval.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

MAX_LENGTH = 2000  # a filter is a line of text, not a program

_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<string>'(?:[^']|'')*')"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><=|>=|<>|!=|==|=|<|>|\(|\)|,|-))"
)
_KEYWORDS = {"and", "or", "not", "is", "null", "in", "true", "false"}
_COMPARE = {
    "=": pc.equal, "==": pc.equal, "!=": pc.not_equal, "<>": pc.not_equal,
    "<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal,
}


class FilterError(ValueError):
    """A filter that cannot be parsed, names an unknown column, or compares mismatched types."""


@dataclass(frozen=True)
class _Node:
    kind: str  # column, value, compare, and, or, not, is_null, in
    value: Any = None  # column name, literal, operator, or the value list of `in`
    children: tuple[_Node, ...] = ()


def _tokens(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise FilterError(f"cannot read the filter at {text[position:position + 20]!r}")
        kind = match.lastgroup or ""
        token = match.group(kind)
        if kind == "name" and token.lower() in _KEYWORDS:
            kind, token = "keyword", token.lower()
        found.append((kind, token))
        position = match.end()
    return found


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.position] if self.position < len(self.tokens) else ("end", "")

    def take(self, kind: str, token: str | None = None) -> str:
        found_kind, found = self.peek()
        if found_kind != kind or (token is not None and found != token):
            expected = token or kind
            raise FilterError(f"expected {expected!r}, found {found or 'the end'!r}")
        self.position += 1
        return found

    def accept(self, kind: str, token: str) -> bool:
        if self.peek() == (kind, token):
            self.position += 1
            return True
        return False

    def parse(self) -> _Node:
        node = self.disjunction()
        if self.peek()[0] != "end":
            raise FilterError(f"unexpected {self.peek()[1]!r}")
        return node

    def disjunction(self) -> _Node:
        node = self.conjunction()
        while self.accept("keyword", "or"):
            node = _Node("or", children=(node, self.conjunction()))
        return node

    def conjunction(self) -> _Node:
        node = self.negation()
        while self.accept("keyword", "and"):
            node = _Node("and", children=(node, self.negation()))
        return node

    def negation(self) -> _Node:
        if self.accept("keyword", "not"):
            return _Node("not", children=(self.negation(),))
        return self.predicate()

    def predicate(self) -> _Node:
        left = self.operand()
        kind, token = self.peek()
        if kind == "op" and token in _COMPARE:
            self.position += 1
            return _Node("compare", token, (left, self.operand()))
        if self.accept("keyword", "is"):
            negated = self.accept("keyword", "not")
            self.take("keyword", "null")
            node = _Node("is_null", children=(left,))
            return _Node("not", children=(node,)) if negated else node
        negated = self.accept("keyword", "not")
        if negated or self.peek() == ("keyword", "in"):
            self.take("keyword", "in")
            self.take("op", "(")
            values = [self.literal()]
            while self.accept("op", ","):
                values.append(self.literal())
            self.take("op", ")")
            node = _Node("in", tuple(values), (left,))
            return _Node("not", children=(node,)) if negated else node
        return left  # a boolean column or literal on its own

    def operand(self) -> _Node:
        if self.accept("op", "("):
            node = self.disjunction()
            self.take("op", ")")
            return node
        if self.peek()[0] == "name":
            return _Node("column", self.take("name"))
        return _Node("value", self.literal())

    def literal(self) -> Any:
        kind, token = self.peek()
        if kind == "op" and token == "-":
            self.position += 1
            return -self._number(self.take("number"))
        self.position += 1
        if kind == "number":
            return self._number(token)
        if kind == "string":
            return token[1:-1].replace("''", "'")
        if kind == "keyword" and token in ("true", "false"):
            return token == "true"
        raise FilterError(f"expected a value, found {token or 'the end'!r}")

    @staticmethod
    def _number(token: str) -> int | float:
        return float(token) if any(mark in token for mark in ".eE") else int(token)


def _columns(node: _Node) -> set[str]:
    found = {node.value} if node.kind == "column" else set()
    for child in node.children:
        found |= _columns(child)
    return found


def _evaluate(node: _Node, table: pa.Table) -> Any:
    if node.kind == "column":
        return table.column(node.value)
    if node.kind == "value":
        return pa.scalar(node.value)
    if node.kind == "compare":
        left, right = (_evaluate(child, table) for child in node.children)
        return _COMPARE[node.value](left, right)
    if node.kind == "and":
        return pc.and_kleene(*(_evaluate(child, table) for child in node.children))
    if node.kind == "or":
        return pc.or_kleene(*(_evaluate(child, table) for child in node.children))
    if node.kind == "not":
        return pc.invert(_evaluate(node.children[0], table))
    if node.kind == "is_null":
        return pc.is_null(_evaluate(node.children[0], table))
    if node.kind == "in":
        values = _evaluate(node.children[0], table)
        if pa.types.is_null(values.type):  # a lone row whose value is missing
            return pa.nulls(len(values), pa.bool_())
        found = pc.is_in(values, value_set=pa.array(node.value).cast(values.type))
        # SQL: a null is neither in a list nor outside it (`not in` must drop it too).
        return pc.if_else(pc.is_valid(values), found, pa.scalar(None, pa.bool_()))
    raise AssertionError(node.kind)


class RowFilter:
    """A parsed filter: `mask(table)` for Arrow and pandas, and a `datasets` `filter` function.

    `schema`: the columns it may name (checked, with the types, when it is made).
    """

    def __init__(self, text: str, schema: pa.Schema | None = None) -> None:
        if len(text) > MAX_LENGTH:
            raise FilterError(f"a filter is at most {MAX_LENGTH} characters")
        self.text = " ".join(text.split())
        if not self.text:
            raise FilterError("the filter is empty")
        self.tree = _Parser(self.text).parse()
        self.columns = sorted(_columns(self.tree))
        if schema is not None:
            unknown = [name for name in self.columns if name not in schema.names]
            if unknown:
                raise FilterError(
                    f"no column {', '.join(map(repr, unknown))}; columns: {', '.join(schema.names)}"
                )
            self.mask(schema.empty_table())  # types: comparing a string with a number fails here

    def mask(self, rows: Any) -> pa.ChunkedArray | pa.Array:
        """True for each row (of a pyarrow Table or a pandas DataFrame) the filter keeps."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(
            rows[self.columns], preserve_index=False
        )
        try:
            result = _evaluate(self.tree, table)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
            raise FilterError(f"{self.text}: {str(error).splitlines()[0]}") from None
        except KeyError as error:
            raise FilterError(f"{self.text}: no column {error}") from None
        if isinstance(result, pa.Scalar):  # no column named: the same answer for every row
            result = pa.array([result.as_py()] * table.num_rows, pa.bool_())
        if not pa.types.is_boolean(result.type):
            raise FilterError(f"{self.text}: is not a true/false condition")
        return pc.fill_null(result, False)

    def __call__(self, rows: Mapping[str, Any]) -> bool | list[bool]:
        """For `datasets`' `filter`: one row (a dict of values) or a batch (a dict of lists)."""
        values = {name: rows[name] for name in self.columns}
        batched = bool(values) and all(isinstance(value, Sequence) and not isinstance(value, str)
                                       for value in values.values())
        table = pa.table(values if batched else {name: [value] for name, value in values.items()})
        if not values:
            table = pa.table({"_": pa.nulls(1)})
        kept = self.mask(table).to_pylist()
        return kept if batched else kept[0]

    def __repr__(self) -> str:
        return f"where({self.text!r})"


def where(text: str, schema: pa.Schema | None = None) -> RowFilter:
    """A `RowFilter` for `text`; e.g. `turns.filter(where("duration >= 600"), batched=True)`."""
    return RowFilter(text, schema)
