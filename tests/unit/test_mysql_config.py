"""The [[mysql]] section: defaults, strict types, cross-key rules, and the plugin's footprint."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quiesce.errors import ConfigError
from quiesce.schema import validate
from quiesce_mysql.config import SCHEMA, MySQLOptions, section_problems


def test_defaults() -> None:
    options = MySQLOptions.from_mapping({})
    assert options.host == "127.0.0.1"
    assert options.port == 3306
    assert options.unix_socket is None
    assert options.user == "root"
    assert options.lock == "auto"
    assert options.lock_wait_seconds == 10
    assert options.kill_blockers_after is None
    assert options.address == "root@127.0.0.1:3306"


def test_all_keys() -> None:
    options = MySQLOptions.from_mapping({
        "name": "main", "unix_socket": "/run/mysqld/mysqld.sock", "user": "quiesce",
        "password_file": "/etc/quiesce/mysql.pw", "lock": "backup-stage",
        "lock_wait_seconds": 20, "kill_blockers_after": 5, "connect_timeout": 2.5,
    })
    assert options.lock == "backup-stage"
    assert options.kill_blockers_after == 5.0
    assert options.address == "quiesce@unix:/run/mysqld/mysqld.sock"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        MySQLOptions.from_mapping({
            "port": "3306", "lock": "global", "password_file": "relative.pw",
            "lock_wait_secs": 3, "connect_timeout": 0,
        })
    text = str(info.value)
    assert "write 3306 without quotes" in text
    assert "'global' is not one of" in text
    assert "not an absolute path" in text
    assert "did you mean 'lock_wait_seconds'" in text
    assert "below the minimum" in text
    assert len(info.value.problems) == 5


def test_kill_blockers_after_must_be_below_lock_wait_seconds() -> None:
    problems = section_problems({"lock_wait_seconds": 5, "kill_blockers_after": 5})
    assert len(problems) == 1 and "could never act" in problems[0].message
    assert section_problems({"lock_wait_seconds": 5, "kill_blockers_after": 4}) == []
    assert section_problems({"kill_blockers_after": 20}) != []  # default wait is 10
    with pytest.raises(ConfigError, match="kill_blockers_after"):
        MySQLOptions.from_mapping({"lock_wait_seconds": 3, "kill_blockers_after": 9})


def test_schema_has_no_name_key_and_no_password_key() -> None:
    assert "name" not in SCHEMA.fields
    assert "password" not in SCHEMA.fields
    result = validate(SCHEMA, {"password": "secret"})
    assert result.problems and result.problems[0].message == "unknown key"


def test_plugin_registers_without_importing_the_driver() -> None:
    code = ("import sys\n"
            "from quiesce.plugins import Plugins\n"
            "p = Plugins(); p.load_entry_points(only=['mysql'])\n"
            "engine = p.engines.get('mysql')\n"
            "assert engine.secret_file_keys == ('password_file',)\n"
            "assert 'pymysql' not in sys.modules, 'driver imported at registration'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_tls_defaults_to_none_over_a_socket_and_opportunistic_over_tcp() -> None:
    import ssl

    from quiesce_mysql.session import tls_arguments

    socket = MySQLOptions.from_mapping({"unix_socket": "/run/mysqld/mysqld.sock"})
    assert tls_arguments(socket) == {"ssl_disabled": True}
    assert tls_arguments(MySQLOptions.from_mapping({"host": "db1"})) == {}
    required = tls_arguments(MySQLOptions.from_mapping({"host": "db1", "tls": "required"}))
    context = required["ssl"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    forced = MySQLOptions.from_mapping({"unix_socket": "/s", "tls": "preferred"})
    assert tls_arguments(forced) == {}


def test_tls_ca_without_required_is_refused() -> None:
    with pytest.raises(ConfigError, match="tls_ca"):
        MySQLOptions.from_mapping({"tls_ca": "/etc/quiesce/ca.pem"})
    with pytest.raises(ConfigError, match="tls"):
        MySQLOptions.from_mapping({"tls": "on"})
