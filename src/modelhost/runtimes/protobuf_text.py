"""A reader for protobuf's text format, enough for Triton's ``config.pbtxt``, with no protobuf dependency.

Schema-less: ``parse`` yields a tree of messages and scalars with their line numbers, and ``Fields`` reads one
message's fields as typed values, naming the field and line in every error; ``triton_config`` builds on both.
The grammar: ``name: value`` and ``name { ... }`` (or ``name: { ... }``, ``name < ... >``) fields,
``name: [a, b]`` lists standing for a repeated field, ``#`` comments, optional ``,`` or ``;`` between fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

ScalarKind = Literal["string", "int", "float", "identifier"]

_TOKEN = re.compile(
    r"""
    (?P<newline>\n)
    | (?P<space>[ \t\r\f\v]+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<float>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+(?=[fF]))[fF]?
        (?![\w.]))
    | (?P<int>[-+]?(?:0[xX][0-9a-fA-F]+|\d+)(?![\w.]))
    | (?P<identifier>-?[A-Za-z_]\w*)
    | (?P<punct>[:{}\[\]<>,;])
    """,
    re.VERBOSE,
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v"}
_CLOSING = {"{": "}", "<": ">"}


class TextFormatError(ValueError):
    """The text does not parse; the message says where (line and column) and what was expected."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column


class FieldError(ValueError):
    """A field holds something its reader does not accept; ``where`` is its path (``input[0].dims``)."""

    def __init__(self, where: str, problem: str, line: int) -> None:
        super().__init__(f"line {line}: {where}: {problem}")
        self.where = where
        self.problem = problem
        self.line = line


@dataclass(frozen=True, slots=True)
class Scalar:
    """One value: a string (unquoted, escapes resolved), a number, or an identifier (enum names, true)."""

    value: str | int | float
    kind: ScalarKind
    line: int


@dataclass(frozen=True, slots=True)
class Message:
    """A message's fields in the order written; a repeated field appears once per value."""

    fields: tuple[tuple[str, Scalar | Message], ...]
    line: int

    def values(self, name: str) -> list[Scalar | Message]:
        """Every value written for ``name``, in order (a list ``[a, b]`` counts as two)."""
        return [value for field, value in self.fields if field == name]

    def names(self) -> list[str]:
        """The field names present, each once, in first-seen order."""
        return list(dict.fromkeys(field for field, _ in self.fields))


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    line: int
    column: int


def _tokens(text: str) -> Iterator[_Token]:
    line, line_start, position = 1, 0, 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            column = position - line_start + 1
            raise TextFormatError(f"unexpected character {text[position]!r}", line, column)
        kind = match.lastgroup or ""
        if kind == "newline":
            line, line_start = line + 1, match.end()
        elif kind not in ("space", "comment"):
            yield _Token(kind, match.group(), line, position - line_start + 1)
        position = match.end()


def _unescape(quoted: str) -> str:
    def replace(match: re.Match[str]) -> str:
        escape = match.group(1)
        if escape[0] == "x":
            return chr(int(escape[1:], 16))
        if escape[0] in "01234567":
            return chr(int(escape, 8))
        # Bytes escapes come through as latin-1 characters and are decoded as UTF-8 below.
        return _SIMPLE_ESCAPES.get(escape, escape.encode()).decode("latin-1")

    raw = _ESCAPE.sub(replace, quoted[1:-1].encode("utf-8").decode("latin-1"))
    return raw.encode("latin-1").decode("utf-8", errors="replace")


class _Parser:
    def __init__(self, text: str) -> None:
        self._tokens = list(_tokens(text))
        self._index = 0
        last_line = text.rsplit("\n", 1)[-1]
        self._end = _Token("end", "end of file", text.count("\n") + 1, len(last_line) + 1)

    def _peek(self) -> _Token:
        return self._tokens[self._index] if self._index < len(self._tokens) else self._end

    def _next(self) -> _Token:
        token = self._peek()
        self._index += 1
        return token

    def _fail(self, message: str, token: _Token) -> TextFormatError:
        found = token.text if token.kind == "end" else repr(token.text)
        return TextFormatError(f"{message}, found {found}", token.line, token.column)

    def message(self, closing: str | None, line: int) -> Message:
        fields: list[tuple[str, Scalar | Message]] = []
        while True:
            token = self._peek()
            if closing is None and token.kind == "end":
                return Message(tuple(fields), line)
            if closing is not None and token.text == closing:
                self._next()
                return Message(tuple(fields), line)
            if token.kind != "identifier" or token.text.startswith("-"):
                expected = f"a field name or {closing!r}" if closing else "a field name"
                raise self._fail(f"expected {expected}", token)
            self._next()
            self._field(token.text, fields)
            if self._peek().text in (",", ";"):
                self._next()

    def _field(self, name: str, fields: list[tuple[str, Scalar | Message]]) -> None:
        colon = self._peek().text == ":"
        if colon:
            self._next()
        token = self._peek()
        if token.text in _CLOSING:
            self._next()
            fields.append((name, self.message(_CLOSING[token.text], token.line)))
        elif token.text == "[":  # the colon is optional before a list of messages; accepted before any list
            self._next()
            fields.extend((name, value) for value in self._list())
        elif colon:
            fields.append((name, self._scalar()))
        else:
            raise self._fail(f"expected ':', '{{' or '[' after field name {name!r}", token)

    def _list(self) -> list[Scalar | Message]:
        values: list[Scalar | Message] = []
        if self._peek().text == "]":
            self._next()
            return values
        while True:
            token = self._peek()
            if token.text in _CLOSING:
                self._next()
                values.append(self.message(_CLOSING[token.text], token.line))
            else:
                values.append(self._scalar())
            separator = self._next()
            if separator.text == "]":
                return values
            if separator.text != ",":
                raise self._fail("expected ',' or ']' in a list", separator)

    def _scalar(self) -> Scalar:
        token = self._next()
        if token.kind == "string":
            parts = [_unescape(token.text)]
            while self._peek().kind == "string":  # adjacent strings concatenate, as in C
                parts.append(_unescape(self._next().text))
            return Scalar("".join(parts), "string", token.line)
        if token.kind == "int":
            return Scalar(
                int(token.text, 0) if "x" in token.text.lower() else int(token.text), "int", token.line
            )
        if token.kind == "float":
            return Scalar(float(token.text.rstrip("fF")), "float", token.line)
        if token.kind == "identifier":
            lowered = token.text.lower().lstrip("-")
            if lowered in ("inf", "infinity", "nan"):
                return Scalar(float(token.text), "float", token.line)
            return Scalar(token.text, "identifier", token.line)
        raise self._fail("expected a value (a number, a quoted string or a name)", token)


def parse(text: str) -> Message:
    """The top-level message of ``text``; ``TextFormatError`` naming the line and column otherwise."""
    return _Parser(text).message(None, 1)


class Fields:
    """Typed access to one message's fields; every ``FieldError`` names the field by its path and line."""

    def __init__(self, message: Message, path: str = "") -> None:
        self.message = message
        self.path = path  # input[0].reshape

    def error(self, name: str, problem: str, line: int | None = None) -> FieldError:
        """An error about field ``name`` (empty: the message itself), at the line it is written on."""
        where = ".".join(part for part in (self.path, name) if part) or "the top level"
        if line is None:
            values = self.message.values(name) if name else []
            line = values[0].line if values else self.message.line
        return FieldError(where, problem, line)

    def check_fields(self, allowed: frozenset[str]) -> None:
        for name in self.message.names():
            if name not in allowed:
                line = next(value.line for field, value in self.message.fields if field == name)
                raise self.error(
                    name, f"unknown field; known fields here are {', '.join(sorted(allowed))}", line
                )

    def _one(self, name: str) -> Scalar | Message | None:
        values = self.message.values(name)
        if len(values) > 1:
            raise self.error(name, "written more than once but holds a single value", values[1].line)
        return values[0] if values else None

    def scalar(self, name: str) -> Scalar | None:
        value = self._one(name)
        if isinstance(value, Message):
            raise self.error(name, "expected a value, found a message { ... }", value.line)
        return value

    def string(self, name: str, default: str = "") -> str:
        value = self.scalar(name)
        if value is None:
            return default
        if value.kind != "string":
            raise self.error(name, f"expected a quoted string, found {value.value!r}", value.line)
        return str(value.value)

    def integer(self, name: str, default: int = 0, minimum: int | None = None) -> int:
        value = self.scalar(name)
        if value is None:
            return default
        return self._int(name, value, minimum)

    def _int(self, name: str, value: Scalar, minimum: int | None) -> int:
        if value.kind != "int" or not isinstance(value.value, int):
            raise self.error(name, f"expected a whole number, found {value.value!r}", value.line)
        if minimum is not None and value.value < minimum:
            raise self.error(name, f"must be at least {minimum}, found {value.value}", value.line)
        return value.value

    def integers(self, name: str, minimum: int | None = None) -> tuple[int, ...]:
        values = self.message.values(name)
        result = []
        for value in values:
            if isinstance(value, Message):
                raise self.error(name, "expected numbers, found a message { ... }", value.line)
            result.append(self._int(name, value, minimum))
        return tuple(result)

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.scalar(name)
        if value is None:
            return default
        text = str(value.value).lower()
        if text in ("true", "t", "1"):
            return True
        if text in ("false", "f", "0"):
            return False
        raise self.error(name, f"expected true or false, found {value.value!r}", value.line)

    def enum(self, name: str, allowed: tuple[str, ...] | Mapping[str, object], default: str) -> str:
        value = self.scalar(name)
        if value is None:
            return default
        if value.kind != "identifier" or value.value not in allowed:
            raise self.error(name, f"expected one of {', '.join(allowed)}, found {value.value!r}", value.line)
        return str(value.value)

    def child(self, name: str) -> Fields | None:
        value = self._one(name)
        if value is None:
            return None
        if not isinstance(value, Message):
            raise self.error(name, f"expected a message {{ ... }}, found {value.value!r}", value.line)
        return Fields(value, f"{self.path}.{name}" if self.path else name)

    def children(self, name: str) -> list[Fields]:
        readers = []
        for index, value in enumerate(self.message.values(name)):
            if not isinstance(value, Message):
                raise self.error(name, f"expected messages {{ ... }}, found {value.value!r}", value.line)
            prefix = f"{self.path}." if self.path else ""
            readers.append(Fields(value, f"{prefix}{name}[{index}]"))
        return readers

    def string_map(self, name: str) -> dict[str, Fields]:
        """A protobuf map field: repeated ``{ key: "k" value: { ... } }`` entries."""
        entries: dict[str, Fields] = {}
        for entry in self.children(name):
            entry.check_fields(frozenset(("key", "value")))
            key = entry.string("key")
            value = entry.child("value")
            if value is None:
                raise entry.error("value", "missing: each entry needs a key and a value { ... }")
            prefix = f"{self.path}." if self.path else ""
            entries[key] = Fields(value.message, f"{prefix}{name}[{key!r}]")
        return entries


def from_json(
    value: Mapping[str, object], enum_fields: frozenset[str], map_fields: frozenset[str], line: int = 0
) -> Message:
    """The message a protobuf JSON object stands for (as Triton hands configs to Python models).

    JSON cannot tell enum names from strings or a map from a message, so the fields holding enums and maps
    are named by the caller.
    """
    fields: list[tuple[str, Scalar | Message]] = []

    def convert(name: str, item: object) -> Scalar | Message:
        if isinstance(item, Mapping):
            return from_json(item, enum_fields, map_fields, line)
        if isinstance(item, bool):
            return Scalar("true" if item else "false", "identifier", line)
        if isinstance(item, int):
            return Scalar(item, "int", line)
        if isinstance(item, float):
            return Scalar(item, "float", line)
        if isinstance(item, str):
            return Scalar(item, "identifier" if name in enum_fields else "string", line)
        raise ValueError(f"{name}: {type(item).__name__} values have no text format")

    for name, item in value.items():
        if name in map_fields and isinstance(item, Mapping):
            for key, entry in item.items():
                pair = Message(
                    (("key", Scalar(str(key), "string", line)), ("value", convert(name, entry))), line
                )
                fields.append((name, pair))
        elif isinstance(item, list):
            fields.extend((name, convert(name, entry)) for entry in item)
        else:
            fields.append((name, convert(name, item)))
    return Message(tuple(fields), line)
