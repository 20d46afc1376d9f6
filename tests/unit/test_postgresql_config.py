"""The [[postgresql]] instance schema: defaults, refusals, and the plugin's registration."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quiesce.schema import validate
from quiesce_postgresql.config import SCHEMA


def problems(doc: dict) -> list[str]:
    return [str(p) for p in validate(SCHEMA, doc).problems]


def test_defaults_filled_in() -> None:
    result = validate(SCHEMA, {"conninfo": "host=/run/postgresql user=quiesce dbname=postgres"})
    assert result.ok, result.problems
    assert "mode" not in result.data  # left out means backup, but not set explicitly
    assert result.data["level"] == "full"
    assert result.data["fast_checkpoint"] is True
    assert result.data["connect_timeout"] == 10
    assert result.data["wait_for_archive"] == "auto"
    assert result.data["label"] == "quiesce"
    assert "passfile" not in result.data


@pytest.mark.parametrize("conninfo", [
    "host=db user=quiesce password=hunter2",
    "postgresql://quiesce:hunter2@db/postgres",
    "postgresql://db/postgres?password=hunter2",
])
def test_password_in_conninfo_refused(conninfo: str) -> None:
    found = problems({"conninfo": conninfo})
    assert len(found) == 1
    assert found[0].startswith("conninfo: contains a password")
    assert "passfile" in found[0]
    assert "hunter2" not in found[0]


def test_unparsable_conninfo_names_the_problem() -> None:
    found = problems({"conninfo": "host='unterminated"})
    assert len(found) == 1 and "not a valid libpq connection string" in found[0]


def test_relative_passfile_refused_in_both_places() -> None:
    assert any("absolute" in p for p in problems({"passfile": "pgpass"}))
    assert any("absolute" in p for p in problems({"conninfo": "host=db passfile=pgpass"}))
    assert problems({"conninfo": "host=db passfile=/etc/quiesce/pgpass"}) == []


def test_every_problem_reported_at_once_with_fixes() -> None:
    found = problems({"mode": "freeze", "connect_timeout": "30", "fast_checkpoint": "true",
                      "wait_for_archive": "sometimes", "label": "caf\u00e9\nx", "conn_info": ""})
    text = "\n".join(found)
    assert "mode: 'freeze' is not one of 'backup', 'checkpoint'" in text
    assert "write 30 without quotes" in text
    assert "write true without quotes" in text
    assert "wait_for_archive: must be true, false or \"auto\"" in text
    assert "label: must be printable ASCII" in text
    assert "conn_info: unknown key (did you mean 'conninfo'?)" in text
    assert len(found) == 6


def test_connect_timeout_range() -> None:
    assert any("below the minimum 2" in p for p in problems({"connect_timeout": 1}))
    assert problems({"connect_timeout": 2}) == []


def test_plugin_registers_without_importing_the_driver() -> None:
    code = (
        "import sys\n"
        "from quiesce.plugins import Plugins\n"
        "p = Plugins(); p.load_entry_points(only=['postgresql'])\n"
        "engine = p.engines.get('postgresql')\n"
        "assert engine.secret_file_keys == ('passfile',), engine.secret_file_keys\n"
        "assert 'psycopg' not in sys.modules, 'psycopg imported at registration'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
