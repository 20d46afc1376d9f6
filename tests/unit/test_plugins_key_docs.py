"""Key documentation lives in the schema that validates the key (``Field.doc``): every key of
the bundled engines, of the core settings and of the example plugin has one, and it reads as
documentation, distinct from the fix text a problem shows (``Field.hint``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quiesce.plugins import Plugins
from quiesce.schema import Field, Table, TableList
from quiesce.settings import CORE_FIELDS, NAME_FIELD

BUNDLED = ["mongodb", "mysql", "postgresql"]
EXAMPLE = Path(__file__).resolve().parent.parent / "example_plugin"


def fields(table: Table, prefix: str = "") -> list[tuple[str, Field]]:
    out: list[tuple[str, Field]] = []
    for key, spec in table.fields.items():
        path = f"{prefix}{key}"
        if isinstance(spec, Field):
            out.append((path, spec))
        elif isinstance(spec, Table):
            out.extend(fields(spec, f"{path}."))
        elif isinstance(spec, TableList):
            out.extend(fields(spec.table, f"{path}[]."))
    return out


def schemas(monkeypatch: pytest.MonkeyPatch) -> dict[str, Table]:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    plugins = Plugins()
    plugins.load_entry_points(only=[*BUNDLED, "flock"])
    found = {name: plugins.engines.get(name).schema for name in [*BUNDLED, "flock"]}
    found["(core)"] = Table({**CORE_FIELDS, "name": NAME_FIELD})
    return found


def test_every_key_has_a_doc(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = [f"{engine}.{key}" for engine, table in schemas(monkeypatch).items()
               for key, field in fields(table) if not field.doc.strip()]
    assert missing == []


def test_docs_are_sentences_of_documentation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lower-case start (they follow a key in the skeleton), no trailing full stop, no line
    breaks (the skeleton wraps them), and never a fix instruction (the hint's job)."""
    for engine, table in schemas(monkeypatch).items():
        for key, field in fields(table):
            doc = field.doc
            where = f"{engine}.{key}"
            assert doc == doc.strip() and "\n" not in doc, where
            assert not doc.endswith("."), where
            assert doc[0].islower() or doc[0] == '"', where
            first = doc.split()[0].lower()
            assert first not in {"set", "remove", "put", "write", "add", "use"}, where


def test_field_doc_defaults_to_empty_and_changes_no_validation() -> None:
    documented = Field(int, minimum=1, doc="seconds to wait")
    plain = Field(int, minimum=1)
    assert plain.doc == ""
    for value in (5, 0, "5"):
        found_a: list = []
        found_b: list = []
        assert documented.validate(value, "k", found_a) == plain.validate(value, "k", found_b)
        assert found_a == found_b
