"""A small declarative schema: describe a config once, get every problem with its key path.

Used for the Azure JSON config and for quiesce.toml (core and each plugin's instance sections).
Validation never stops at the first problem: it walks the whole document and returns the
normalised data (defaults filled in) together with a list of :class:`Problem`.

Numbers must be finite: NaN and +-infinity (which TOML spells ``nan`` and ``inf`` and a JSON
parser makes of ``1e400``) are refused for every numeric :class:`Field`, and
:func:`document_problems` finds them anywhere in a parsed document, with their key paths,
together with nesting deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import builtins
import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quiesce.errors import Problem

_MISSING: Any = object()

#: Deepest nesting a config may have (the top level is depth 0). Real files need 3 or 4 (a
#: ``[[section]]`` list, its table, a list value); anything deeper is a mistake or an attack,
#: and is refused before code that walks values recursively could hit Python's recursion limit.
MAX_DEPTH = 32
#: Longest number quoted back in a message; a longer one is described by its digit count.
_MAX_NUMBER_TEXT = 40

NONFINITE_HINT = "write a finite number: NaN and infinity are not numbers of seconds or counts"


def number_text(value: int | float) -> str:
    """A number as a message shows it: huge integers by their size, not their 4000 digits."""
    text = str(value)
    if len(text) <= _MAX_NUMBER_TEXT:
        return text
    return f"a {len(text.lstrip('-'))}-digit number"


def nonfinite_message(value: float) -> str:
    """The message for NaN or an infinity, the same wherever it is found."""
    return f"{value} is not a finite number"


def is_nonfinite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def document_problems(document: Any, *, max_depth: int = MAX_DEPTH,
                      root: str = "") -> list[Problem]:
    """Non-finite numbers anywhere in ``document`` and nesting deeper than ``max_depth``, each
    with its key path. Iterative: a deep document cannot exhaust the stack here."""
    problems: list[Problem] = []
    stack: list[tuple[Any, str, int]] = [(document, root, 0)]
    while stack:
        value, path, depth = stack.pop()
        if is_nonfinite(value):
            problems.append(Problem(path or "(top level)", nonfinite_message(value),
                                    NONFINITE_HINT))
            continue
        if isinstance(value, Mapping):
            children = [(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(value, 1)]
        else:
            continue
        if depth >= max_depth and any(isinstance(v, Mapping | list) for v, _ in children):
            problems.append(Problem(path or "(top level)",
                                    f"is nested more than {max_depth} levels deep",
                                    "a quiesce config needs only a few levels of lists and "
                                    "tables: check for an unclosed or repeated '[' or '{'"))
            children = [(v, p) for v, p in children if not isinstance(v, Mapping | list)]
        stack.extend((v, p, depth + 1) for v, p in reversed(children))
    return problems


def too_deep_problem(where: str) -> Problem:
    """For a parser that gave up on nesting (RecursionError) before any value existed."""
    return Problem(where, f"is nested too deeply to parse (more than {MAX_DEPTH} levels is "
                   "never needed)", "check for an unclosed or repeated '[' or '{'")


def huge_integer_problem(where: str, exc: ValueError) -> Problem | None:
    """A parser's refusal of an integer with thousands of digits, as a problem; None for
    another ValueError."""
    if "integer string conversion" not in str(exc):
        return None
    return Problem(where, "contains an integer with thousands of digits",
                   "write a number in the range the key allows")

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
        return f"the number {number_text(value)}"
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
    """One key: its type, whether it is required, its default and its constraints.

    ``hint`` is the *fix* shown with a problem of this key ("write a number of seconds");
    ``doc`` says what the key *is* ("seconds to wait for the lock"): it is the key's
    documentation wherever it is shown, e.g. in the quiesce.toml skeleton that ``quiesce
    install`` writes, so the text lives beside the rules that validate the key.
    """

    type: builtins.type | tuple[builtins.type, ...]
    required: bool = False
    default: Any = _MISSING
    choices: tuple[Any, ...] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    items: builtins.type | tuple[builtins.type, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    hint: str = ""
    doc: str = ""

    def validate(self, value: Any, path: str, problems: list[Problem]) -> Any:
        """The value if it can be used, else ``_MISSING`` (left out of the data, so that
        cross-key checks never compute with it) after adding every problem found.

        A type error, NaN or an infinity, or a number outside [minimum, maximum] leaves the
        value out; a failed ``choices`` or ``check`` keeps it (other checks may name it).
        """
        if is_nonfinite(value):
            problems.append(Problem(path, nonfinite_message(value), NONFINITE_HINT))
            return _MISSING
        if not _type_ok(value, self.type):
            hint = _quoted_hint(value, self.type) or self.hint
            problems.append(
                Problem(path, f"expected {describe_type(self.type)}, found {_found(value)}", hint)
            )
            return _MISSING
        if self.items is not None and isinstance(value, list):
            for i, item in enumerate(value, 1):  # key paths are one-based, as in the docs
                if is_nonfinite(item):
                    problems.append(Problem(f"{path}[{i}]", nonfinite_message(item),
                                            NONFINITE_HINT))
                elif not _type_ok(item, self.items):
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
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if self.minimum is not None and number and value < self.minimum:
            problems.append(Problem(path, f"{number_text(value)} is below the minimum "
                                    f"{self.minimum}", self.hint))
            return _MISSING
        if self.maximum is not None and number and value > self.maximum:
            problems.append(Problem(path, f"{number_text(value)} is above the maximum "
                                    f"{self.maximum}", self.hint))
            return _MISSING
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
                    kept = document_problems(item, root=sub)
                    problems.extend(kept)
                    if not kept:
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
        out = [self.table.validate(item, f"{path}[{i}]", problems)
               for i, item in enumerate(value, 1)]
        if self.unique_key:
            seen: dict[Any, int] = {}
            for i, item in enumerate(out):
                key = item.get(self.unique_key)
                if key is None:
                    continue
                if key in seen:
                    problems.append(
                        Problem(
                            f"{path}[{i + 1}].{self.unique_key}",
                            f"{key!r} is already used by {path}[{seen[key] + 1}]",
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


def unique(problems: list[Problem]) -> list[Problem]:
    """The problems in order, each once (a value found by both walks is reported once)."""
    return list(dict.fromkeys(problems))


def validate(schema: Table, document: Any) -> Validated:
    """Validate a parsed document: its shape (depth, non-finite numbers) and its schema."""
    problems = document_problems(document)
    if any(p.message.startswith("is nested more than") for p in problems):
        return Validated({}, problems)  # the schema walk would only add noise
    data = schema.validate(document, "", problems)
    return Validated(data, unique(problems))
