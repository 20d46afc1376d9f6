"""The declarative validator: every problem at once, with key paths and fixes."""

from __future__ import annotations

from quiesce.errors import Problem
from quiesce.schema import MAX_DEPTH, Field, Table, TableList, document_problems, validate

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
    assert set(where) == {"timeout", "enabled", "mode", "params[2]", "timout"}
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
    assert where == ["inner[2].name", "inner[2].port", "inner[3].nme"]  # one-based
    assert result.data["inner"][0] == {"name": "a", "port": 5432}


def test_top_level_must_be_a_table() -> None:
    result = validate(SCHEMA, ["not", "a", "table"])
    assert result.problems[0].where == "(top level)"


def test_case_only_difference_is_suggested() -> None:
    result = validate(Table({"fsFreezeEnabled": Field(bool)}), {"FSFREEZEENABLED": True})
    assert "fsFreezeEnabled" in result.problems[0].hint


# --- numbers must be finite; nesting is bounded --------------------------------------------------

def _numeric_fields() -> list[tuple[str, str, Field]]:
    """(schema name, key, field) for every numeric Field of the core and the bundled engines."""
    import importlib

    from quiesce import settings
    from quiesce.callers import azure_config

    schemas: dict[str, dict[str, object]] = {
        "azure": dict(azure_config.SCHEMA.fields),
        "quiesce.toml": dict(settings.CORE_FIELDS),
    }
    for engine in ("postgresql", "mysql", "mongodb"):
        module = importlib.import_module(f"quiesce_{engine}.config")
        schemas[engine] = dict(module.SCHEMA.fields)
    out = []
    for name, fields in schemas.items():
        for key, spec in fields.items():
            if isinstance(spec, Field):
                types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
                if int in types or float in types:
                    out.append((name, key, spec))
    return out


def test_every_numeric_field_of_core_and_engines_refuses_nan_and_infinities() -> None:
    fields = _numeric_fields()
    assert len(fields) >= 15  # the discovery found the schemas
    for name, key, spec in fields:
        for bad in (float("nan"), float("inf"), float("-inf")):
            problems: list[Problem] = []
            kept = Table({key: spec}).validate({key: bad}, "sec", problems)
            assert key not in kept, (name, key, bad)
            assert [(p.where, p.message) for p in problems] == \
                [(f"sec.{key}", f"{bad} is not a finite number")], (name, key, bad)


def test_nonfinite_items_of_a_number_list_are_refused() -> None:
    problems: list[Problem] = []
    Field(list, items=float).validate([1.0, float("nan"), 2], "xs", problems)
    assert [p.where for p in problems] == ["xs[2]"]


def test_out_of_range_numbers_are_left_out_so_cross_checks_never_compute_with_them() -> None:
    result = validate(SCHEMA, {"timeout": 10**400})
    assert "timeout" not in result.data
    assert [p.message for p in result.problems] == ["a 401-digit number is above the maximum 1800"]


def test_document_problems_find_nan_anywhere_and_bound_depth_without_recursion() -> None:
    doc = {"a": [1, {"b": float("nan")}], "c": {"d": [float("-inf")]}}
    found = {(p.where, p.message) for p in document_problems(doc)}
    assert found == {("a[2].b", "nan is not a finite number"),
                     ("c.d[1]", "-inf is not a finite number")}
    deep: list[object] = []
    inner = deep
    for _ in range(100_000):  # far past Python's recursion limit
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    problems = document_problems({"x": deep})
    assert len(problems) == 1 and f"nested more than {MAX_DEPTH} levels" in problems[0].message
    assert problems[0].where.startswith("x[1]")
    assert document_problems({"x": [[[1]]]}) == []


def test_validate_reports_a_too_deep_document_once() -> None:
    nested: object = 1
    for _ in range(MAX_DEPTH + 5):
        nested = [nested]
    result = validate(SCHEMA, {"timeout": 30, "params": nested})
    assert len(result.problems) == 1 and "nested more than" in result.problems[0].message


def test_allow_unknown_tables_keep_no_nonfinite_value() -> None:
    problems: list[Problem] = []
    out = Table({}, allow_unknown=True).validate({"x": [float("inf")], "y": 1}, "t", problems)
    assert out == {"y": 1} and [p.where for p in problems] == ["t.x[1]"]
