"""Checks a decoded awsJson 1.1 request body against the botocore input shape of its operation.

The SageMaker and Application Auto Scaling handlers call ``validate_request`` before any service code runs.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import reprlib
from datetime import datetime
from typing import Any

from botocore.model import OperationModel, Shape

from modelhost.errors import ValidationError

MAX_SHOWN_VIOLATIONS = 10
MAX_SHOWN_CHARS = 100

# AWS's deserializer rejects numbers that overflow Java's int and long, so an unbounded model member still
# has these limits.
_TYPE_BOUNDS: dict[str, tuple[int, int]] = {
    "integer": (-(2**31), 2**31 - 1),
    "long": (-(2**63), 2**63 - 1),
}

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = MAX_SHOWN_CHARS
_repr.maxlevel = 2


def validate_request(operation: OperationModel, params: object) -> None:
    """Raise ValidationError naming every violated constraint (SageMaker's wording) of ``params``."""
    validate_shape(operation.input_shape, params)


def validate_shape(shape: Shape | None, params: object) -> None:
    """Check ``params`` against a structure shape; tests also use it on our responses' output shapes."""
    if not isinstance(params, dict):
        raise ValidationError("Request body must be a JSON object")
    violations = _Violations()
    if shape is None:
        for name in params:
            violations.add(f"Unknown member '{_clip(str(name))}' (this operation takes no input)")
    else:
        _check_structure(shape, params, "", violations)
    if violations.count:
        raise ValidationError(violations.message())


class _Violations:
    """Counts every violation but keeps the text of only the first few, so a huge bad body stays cheap."""

    def __init__(self) -> None:
        self.count = 0
        self.shown: list[str] = []

    @property
    def has_room(self) -> bool:
        return len(self.shown) < MAX_SHOWN_VIOLATIONS

    def add(self, text: str) -> None:
        self.count += 1
        if self.has_room:
            self.shown.append(text)

    def constraint(self, value: object, path: str, rule: str) -> None:
        self.count += 1
        if self.has_room:
            self.shown.append(f"Value {_show(value)} at '{path}' failed to satisfy constraint: {rule}")

    def message(self) -> str:
        noun = "error" if self.count == 1 else "errors"
        text = f"{self.count} validation {noun} detected: " + "; ".join(self.shown)
        if self.count > len(self.shown):
            text += f"; and {self.count - len(self.shown)} more"
        return text


def _check(shape: Shape, value: object, path: str, violations: _Violations) -> None:
    if value is None:
        violations.constraint(None, path, "Member must not be null")
        return
    kind: str = shape.type_name
    if kind == "structure":
        _check_structure(shape, value, path, violations)
    elif kind == "list":
        _check_list(shape, value, path, violations)
    elif kind == "map":
        _check_map(shape, value, path, violations)
    else:
        for rule in _scalar_problems(shape, value):
            violations.constraint(value, path, rule)


def _check_structure(shape: Shape, value: object, path: str, violations: _Violations) -> None:
    if not isinstance(value, dict):
        violations.constraint(value, path, "Member must be a JSON object")
        return
    members: dict[str, Shape] = shape.members
    for name, member_value in value.items():
        member = members.get(name)
        if member is None:
            _unknown_member(name, list(members), path, violations)
        elif member_value is not None:  # an explicit null for an optional member means "absent", as in AWS
            _check(member, member_value, _join(path, _camel(name)), violations)
    for name in shape.required_members:
        if value.get(name) is None:
            violations.constraint(None, _join(path, _camel(name)), "Member must not be null")


def _check_list(shape: Shape, value: object, path: str, violations: _Violations) -> None:
    if not isinstance(value, list):
        violations.constraint(value, path, "Member must be a list")
        return
    for rule in _length_problems(len(value), shape.metadata):
        violations.constraint(value, path, rule)
    for index, item in enumerate(value, start=1):
        _check(shape.member, item, f"{path}.{index}.member", violations)


def _check_map(shape: Shape, value: object, path: str, violations: _Violations) -> None:
    if not isinstance(value, dict):
        violations.constraint(value, path, "Member must be a JSON object")
        return
    for rule in _length_problems(len(value), shape.metadata):
        violations.constraint(value, path, rule)
    for key, item in value.items():
        key_rules = _scalar_problems(shape.key, key)
        if key_rules:
            violations.constraint(key, path, f"Map keys must satisfy constraint: [{', '.join(key_rules)}]")
        _check(shape.value, item, f"{path}.{_clip(str(key))}", violations)


def _scalar_problems(shape: Shape, value: object) -> list[str]:
    """The rules ``value`` breaks, each worded as AWS words it; empty when it is fine."""
    kind: str = shape.type_name
    metadata: dict[str, Any] = shape.metadata
    if kind == "string":
        if not isinstance(value, str):
            return ["Member must be a string"]
        problems = _length_problems(len(value), metadata)
        enum: list[str] | None = metadata.get("enum")
        if enum and value not in enum:
            problems.append(f"Member must satisfy enum value set: [{', '.join(enum)}]")
        pattern: str | None = metadata.get("pattern")
        # A value already too long is rejected anyway; running a regex over megabytes of it is wasted work.
        if pattern is not None and not problems:
            compiled = _compile(pattern)
            if compiled is not None and compiled.fullmatch(value) is None:
                problems.append(f"Member must satisfy regular expression pattern: {pattern}")
        return problems
    if kind in _TYPE_BOUNDS:
        if not isinstance(value, int) or isinstance(value, bool):
            return ["Member must be an integer"]
        low, high = _TYPE_BOUNDS[kind]
        return _range_problems(value, metadata.get("min", low), metadata.get("max", high))
    if kind in ("float", "double"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return ["Member must be a number"]
        if not math.isfinite(value):
            return ["Member must be a finite number"]
        return _range_problems(value, metadata.get("min"), metadata.get("max"))
    if kind == "boolean":
        return [] if isinstance(value, bool) else ["Member must be a boolean"]
    if kind == "timestamp":
        return [] if _is_timestamp(value) else ["Member must be a timestamp (epoch seconds or ISO 8601)"]
    if kind == "blob":
        return [] if isinstance(value, str) else ["Member must be a base64-encoded string"]
    return []  # a type the JSON protocols do not use here (e.g. document): nothing we know how to check


def _length_problems(length: int, metadata: dict[str, Any]) -> list[str]:
    problems = []
    if "min" in metadata and length < metadata["min"]:
        problems.append(f"Member must have length greater than or equal to {metadata['min']}")
    if "max" in metadata and length > metadata["max"]:
        problems.append(f"Member must have length less than or equal to {metadata['max']}")
    return problems


def _range_problems(value: float, low: float | None, high: float | None) -> list[str]:
    if low is not None and value < low:
        return [f"Member must have value greater than or equal to {low}"]
    if high is not None and value > high:
        return [f"Member must have value less than or equal to {high}"]
    return []


def _is_timestamp(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return math.isfinite(value)
    if isinstance(value, str) and len(value) <= 64:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    return False


@functools.cache
def _compile(pattern: str) -> re.Pattern[str] | None:
    # Model patterns are Java regexes; a few (\p{L}, surrogate ranges) have no Python spelling. Skipping
    # those checks is safer than rejecting valid requests or crashing on every call.
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _unknown_member(name: object, valid: list[str], path: str, violations: _Violations) -> None:
    if not violations.has_room:  # the hint costs a fuzzy match; don't pay it for text nobody sees
        violations.add("")
        return
    shown = _clip(str(name))
    where = f" at '{path}'" if path else ""
    close = difflib.get_close_matches(shown, valid, n=1) if isinstance(name, str) else []
    hint = f"did you mean '{close[0]}'?" if close else f"valid members: {', '.join(valid)}"
    violations.add(f"Unknown member '{shown}'{where} ({hint})")


def _camel(name: str) -> str:
    """AWS names paths after the wire member in lowerCamelCase: EndpointConfigName -> endpointConfigName."""
    return name[:1].lower() + name[1:]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _clip(text: str) -> str:
    return text if len(text) <= MAX_SHOWN_CHARS else f"{text[:MAX_SHOWN_CHARS]}...({len(text)} chars)"


def _show(value: object) -> str:
    """Render a value the way AWS quotes it, clipped so a multi-megabyte blob never lands in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{_clip(value)}'"
    if isinstance(value, int | float):
        return _clip(str(value))
    return f"'{_repr.repr(value)}'"
