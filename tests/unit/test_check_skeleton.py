"""The quiesce.toml skeleton 'install azure' writes, as 'quiesce check' and a DBA read it: every
key's comment is documentation, never the fix text of a validation error."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from quiesce.azure_install import (
    _FIX_VERBS,
    BUNDLED_KEY_DOCS,
    example_section,
    key_doc,
    reads_as_fix,
    toml_skeleton,
)
from quiesce.engine import EngineType
from quiesce.plugins import Plugins
from quiesce.schema import Field, Table
from quiesce.settings import installed_engine_names

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


def test_no_comment_in_the_skeleton_is_a_fix_instruction(
        engines: dict[str, EngineType]) -> None:
    text = toml_skeleton(list(engines.values()), 300).decode()
    for line in text.splitlines():
        if line.startswith("#       "):
            assert not reads_as_fix(line[len("#       "):]), line


def test_the_hints_kept_as_documentation_are_still_shown(
        engines: dict[str, EngineType]) -> None:
    section = example_section(engines["postgresql"])
    assert comments_of(section, "mode") == engines["postgresql"].schema.fields["mode"].hint
    assert comments_of(section, "passfile") == "a libpq password file, root-owned, mode 0600"


def test_every_bundled_doc_names_a_real_key_whose_hint_is_a_fix(
        engines: dict[str, EngineType]) -> None:
    """A stale entry (renamed key, or a hint that became documentation) fails here."""
    for (engine, key), text in BUNDLED_KEY_DOCS.items():
        assert engine in installed_engine_names()
        field = engines[engine].schema.fields[key]
        assert reads_as_fix(field.hint), (engine, key)
        assert not reads_as_fix(text)


@pytest.mark.parametrize(("text", "fix"), [
    ("remove the password from conninfo", True),
    ("put the URI in a file", True),
    ('"auto" waits only when WAL archiving is on', False),
    ("a libpq password file, root-owned, mode 0600", False),
    ("seconds; libpq's minimum is 2", False),
    ("Write 30 without quotes", True),
    ("", False),
])
def test_reads_as_fix(text: str, fix: bool) -> None:
    assert reads_as_fix(text) is fix


def _engine(hint: str, extra: dict | None = None) -> EngineType:
    return EngineType(name="toy", schema=Table({"host": Field(str, hint=hint)}),
                      factory=lambda settings: None,  # type: ignore[arg-type,return-value]
                      extra=extra or {})


def test_a_plugins_own_key_docs_come_first() -> None:
    engine = _engine("a host name", {"key_docs": {"host": "where the server listens"}})
    assert key_doc(engine, "host", engine.schema.fields["host"]) == "where the server listens"
    assert "where the server listens" in example_section(engine)
    assert "a host name" not in example_section(engine)


def test_a_fix_hint_without_documentation_shows_no_comment() -> None:
    engine = _engine("set host to the server's address")
    assert key_doc(engine, "host", engine.schema.fields["host"]) == ""
    assert example_section(engine).splitlines()[-1] == '# host = "..."    # optional'
    documented = dataclasses.replace(engine, extra={"key_docs": {"host": "  "}})
    assert key_doc(documented, "host", engine.schema.fields["host"]) == ""


def test_the_skeleton_is_valid_toml_selecting_nothing(engines: dict[str, EngineType]) -> None:
    document = tomllib.loads(toml_skeleton(list(engines.values()), 300).decode())
    assert document == {"max_hold_seconds": 300}  # 'plugins' and every section commented


def test_fix_verbs_are_lower_case_words() -> None:
    assert all(verb.isalpha() and verb.islower() for verb in _FIX_VERBS)
