"""A small declarative schema: describe a config once, get every problem with its key path.

Used for the Azure JSON config and for quiesce.toml (core and each plugin's instance sections).
Validation never stops at the first problem: it walks the whole document and returns the
normalised data (defaults filled in) together with a list of :class:`Problem`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quiesce.errors import Problem

_MISSING: Any = object()

_TYPE_NAMES = {
    bool: "a boolean (true/false)",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table/object",
}


def describe_type(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def _found(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return f"the number {value}"
    return describe_type(type(value))


def _quoted_hint(value: Any, expected: type | tuple[type, ...]) -> str:
    """A fix for the classic mistake of quoting a number or a boolean."""
    types = expected if isinstance(expected, tuple) else (expected,)
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if int in types and text.lstrip("-").isdigit():
        return f"write {text} without quotes"
    if bool in types and text.lower() in ("true", "false"):
        return f"write {text.lower()} without quotes"
    return ""


@dataclass(frozen=True)
class Field:
    """One key: its type, whether it is required, its default and its constraints."""

    type: type | tuple[type, ...]
    required: bool = False
    default: Any = _MISSING
    choices: tuple[Any, ...] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    items: type | tuple[type, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    hint: str = ""

    def validate(self, value: Any, path: str, problems: list[Problem]) -> Any:
        if not _type_ok(value, self.type):
            hint = _quoted_hint(value, self.type) or self.hint
            problems.append(
                Problem(path, f"expected {describe_type(self.type)}, found {_found(value)}", hint)
            )
            return _MISSING
        if self.items is not None and isinstance(value, list):
            for i, item in enumerate(value):
                if not _type_ok(item, self.items):
                    problems.append(
                        Problem(
                            f"{path}[{i}]",
                            f"expected {describe_type(self.items)}, found {_found(item)}",
                            _quoted_hint(item, self.items) or self.hint,
                        )
                    )
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            problems.append(Problem(path, f"{value!r} is not one of {allowed}", self.hint))
        if self.minimum is not None and isinstance(value, int | float) and value < self.minimum:
            problems.append(Problem(path, f"{value} is below the minimum {self.minimum}",
                                    self.hint))
        if self.maximum is not None and isinstance(value, int | float) and value > self.maximum:
            problems.append(Problem(path, f"{value} is above the maximum {self.maximum}",
                                    self.hint))
        if self.check is not None:
            message = self.check(value)
            if message:
                problems.append(Problem(path, message, self.hint))
        return value


@dataclass(frozen=True)
class Table:
    """A mapping with known keys. Unknown keys are errors that name the closest known key."""

    fields: Mapping[str, Field | Table | TableList]
    allow_unknown: bool = False
    required: bool = False

    def validate(self, value: Any, path: str, problems: list[Problem]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            where = path or "(top level)"
            problems.append(Problem(where, f"expected a table/object, found {_found(value)}"))
            return {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            spec = self.fields.get(key)
            if spec is None:
                if self.allow_unknown:
                    out[key] = item
                    continue
                problems.append(Problem(sub, "unknown key", closest_hint(str(key), self.fields)))
                continue
            result = spec.validate(item, sub, problems)
            if result is not _MISSING:
                out[key] = result
        for key, spec in self.fields.items():
            if key in value:
                continue
            sub = f"{path}.{key}" if path else key
            if spec.required:
                problems.append(Problem(sub, "required key is missing"))
            elif isinstance(spec, Field) and spec.default is not _MISSING:
                out[key] = spec.default
        return out


@dataclass(frozen=True)
class TableList:
    """A list of tables with the same schema (TOML ``[[name]]``)."""

    table: Table
    required: bool = False
    unique_key: str | None = "name"

    def validate(self, value: Any, path: str, problems: list[Problem]) -> list[dict[str, Any]]:
        if isinstance(value, Mapping):
            value = [value]
        if not isinstance(value, list):
            problems.append(Problem(path, f"expected a list of tables, found {_found(value)}"))
            return []
        out = [self.table.validate(item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
        if self.unique_key:
            seen: dict[Any, int] = {}
            for i, item in enumerate(out):
                key = item.get(self.unique_key)
                if key is None:
                    continue
                if key in seen:
                    problems.append(
                        Problem(
                            f"{path}[{i}].{self.unique_key}",
                            f"{key!r} is already used by {path}[{seen[key]}]",
                            f"give every {path} section its own {self.unique_key}",
                        )
                    )
                seen.setdefault(key, i)
        return out


def closest_hint(key: str, known: Mapping[str, Any] | list[str]) -> str:
    names = list(known)
    match = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if not match:
        lowered = {n.lower(): n for n in names}
        if key.lower() in lowered:
            match = [lowered[key.lower()]]
    if match:
        return f"did you mean {match[0]!r}?"
    return "valid keys: " + ", ".join(sorted(names))


@dataclass
class Validated:
    data: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(schema: Table, document: Any) -> Validated:
    problems: list[Problem] = []
    data = schema.validate(document, "", problems)
    return Validated(data, problems)
