"""docs/engines.md says what the loader does about `name`: optional for a single section,
required (and unique) only when an engine has several (issue 14 item 7). The loader's side is
tests/unit/test_settings.py (single instance named after its engine; several need names)."""

from __future__ import annotations

from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "engines.md"


def name_rows() -> dict[str, str]:
    rows, section = {}, ""
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if "Configuration keys" in line and "(`[[" in line:
            section = line.split("[[", 1)[1].split("]]", 1)[0]
        elif line.startswith("| `name` |") and section:
            rows[section] = line
    return rows


def test_every_engine_documents_name_as_optional_for_one_section() -> None:
    rows = name_rows()
    assert set(rows) == {"postgresql", "mysql", "mongodb"}
    for engine, row in rows.items():
        assert "(required)" not in row, row
        assert f'`"{engine}"` (the engine\'s name)' in row
        assert f"only when there are several `[[{engine}]]` sections" in row

