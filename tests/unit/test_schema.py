"""The declarative validator: every problem at once, with key paths and fixes."""

from __future__ import annotations

from quiesce.schema import Field, Table, TableList, validate

SCHEMA = Table(
    {
        "timeout": Field(int, required=True, minimum=1, maximum=1800),
        "enabled": Field(bool, default=True),
        "mode": Field(str, default="backup", choices=("backup", "checkpoint")),
        "params": Field(list, default=[], items=str),
        "ratio": Field(float),
        "inner": TableList(Table({"name": Field(str), "port": Field(int, default=5432)})),
    }
)


def test_valid_document_gets_defaults() -> None:
    result = validate(SCHEMA, {"timeout": 30})
    assert result.ok
    assert result.data == {"timeout": 30, "enabled": True, "mode": "backup", "params": []}


def test_every_problem_is_reported_with_its_key_path() -> None:
    result = validate(
        SCHEMA,
        {
            "timeout": "30",
            "enabled": "true",
            "mode": "exclusive",
            "params": ["a", 1],
            "timout": 5,
        },
    )
    where = {p.where: p for p in result.problems}
    assert set(where) == {"timeout", "enabled", "mode", "params[1]", "timout"}
    assert "write 30 without quotes" in where["timeout"].hint
    assert "write true without quotes" in where["enabled"].hint
    assert "'timeout'" in where["timout"].hint
    assert "not one of" in where["mode"].message


def test_bool_is_not_an_int_and_int_is_a_float() -> None:
    result = validate(SCHEMA, {"timeout": True, "ratio": 2})
    assert [p.where for p in result.problems] == ["timeout"]
    assert result.data["ratio"] == 2


def test_ranges_and_missing_required_key() -> None:
    assert [p.where for p in validate(SCHEMA, {"timeout": 0}).problems] == ["timeout"]
    assert "maximum 1800" in validate(SCHEMA, {"timeout": 1801}).problems[0].message
    missing = validate(SCHEMA, {})
    assert missing.problems[0].where == "timeout"
    assert "missing" in missing.problems[0].message


def test_table_lists_check_each_entry_and_unique_names() -> None:
    result = validate(
        SCHEMA,
        {"timeout": 1, "inner": [{"name": "a"}, {"name": "a", "port": "5433"}, {"nme": "c"}]},
    )
    where = sorted(p.where for p in result.problems)
    assert where == ["inner[1].name", "inner[1].port", "inner[2].nme"]
    assert result.data["inner"][0] == {"name": "a", "port": 5432}


def test_top_level_must_be_a_table() -> None:
    result = validate(SCHEMA, ["not", "a", "table"])
    assert result.problems[0].where == "(top level)"


def test_case_only_difference_is_suggested() -> None:
    result = validate(Table({"fsFreezeEnabled": Field(bool)}), {"FSFREEZEENABLED": True})
    assert "fsFreezeEnabled" in result.problems[0].hint
