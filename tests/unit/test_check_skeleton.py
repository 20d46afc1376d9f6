"""The quiesce.toml skeleton 'install azure' writes, as 'quiesce check' and a DBA read it: every
key's comment is the key's Field.doc from the schema that validates it, never the fix text
(Field.hint) of a validation error."""

from __future__ import annotations

import textwrap
import tomllib

import pytest

from quiesce.callers.azure_install import example_section, key_doc, toml_skeleton
from quiesce.engine import EngineType
from quiesce.plugins import Plugins
from quiesce.schema import Field, Table

BUILT_IN = ["mongodb", "mysql", "postgresql"]


@pytest.fixture(scope="module")
def engines() -> dict[str, EngineType]:
    manager = Plugins()
    manager.load_entry_points(only=BUILT_IN)
    return {name: manager.engines.get(name) for name in BUILT_IN}


def comments_of(section: str, key: str) -> str:
    """The documentation lines under ``# key = ...`` in an example section, joined."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"# {key} = "))
    doc = []
    for line in lines[start + 1:]:
        if not line.startswith("#       "):
            break
        doc.append(line[len("#       "):])
    return " ".join(doc)


def test_conninfo_is_documented_not_scolded(engines: dict[str, EngineType]) -> None:
    section = example_section(engines["postgresql"])
    doc = comments_of(section, "conninfo")
    assert "remove the password" not in section
    assert doc.startswith("the libpq connection string, e.g.")
    assert "passfile" in doc  # where the password goes instead


def test_mongodb_uri_is_documented_not_scolded(engines: dict[str, EngineType]) -> None:
    section = example_section(engines["mongodb"])
    assert "put the URI with its password" not in section
    assert comments_of(section, "uri").startswith("a mongodb:// URI without a password")


def test_every_key_comment_is_its_field_doc(engines: dict[str, EngineType]) -> None:
    for engine in engines.values():
        section = example_section(engine)
        for key, field in engine.schema.fields.items():
            assert field.doc, (engine.name, key)  # the bundled engines document every key
            assert comments_of(section, key) == " ".join(textwrap.wrap(field.doc, 80)), key


def _engine(hint: str, doc: str = "") -> EngineType:
    return EngineType(name="toy", schema=Table({"host": Field(str, hint=hint, doc=doc)}),
                      factory=lambda settings: None)  # type: ignore[arg-type,return-value]


def test_the_doc_is_the_comment_and_the_hint_never_is() -> None:
    engine = _engine("set host to the server's address", "  where the server listens ")
    assert key_doc(engine.schema.fields["host"]) == "where the server listens"
    assert example_section(engine).splitlines()[-2:] == [
        '# host = "..."    # optional', "#       where the server listens"]
    assert "set host" not in example_section(engine)


def test_a_key_without_doc_shows_no_comment() -> None:
    engine = _engine("set host to the server's address")
    assert key_doc(engine.schema.fields["host"]) == ""
    assert example_section(engine).splitlines()[-1] == '# host = "..."    # optional'


def test_the_skeleton_is_valid_toml_selecting_nothing(engines: dict[str, EngineType]) -> None:
    document = tomllib.loads(toml_skeleton(list(engines.values()), 300).decode())
    assert document == {"max_hold_seconds": 300}  # 'plugins' and every section commented

