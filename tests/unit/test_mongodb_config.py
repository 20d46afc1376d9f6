"""The [[mongodb]] section: schema, URI rules (one host, no inline password), uri_file."""

from __future__ import annotations

from pathlib import Path

import pytest

from quiesce.errors import ConfigError, PermissionProblem
from quiesce.schema import validate
from quiesce_mongodb.config import (
    SCHEMA,
    redact_uri,
    resolve_uri,
    section_problems,
    split_uri,
    uri_problems,
)


def test_defaults_are_filled_in() -> None:
    result = validate(SCHEMA, {"uri": "mongodb://127.0.0.1:27017/"})
    assert result.ok, result.problems
    assert result.data["allow_locked"] is False
    assert result.data["allow_mongos"] is False
    assert result.data["connect_timeout"] == 5
    assert result.data["lock_wait_seconds"] == 30


def test_inline_password_is_refused_and_points_to_uri_file() -> None:
    result = validate(SCHEMA, {"uri": "mongodb://backup:s3cret@db1:27017/?authSource=admin"})
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.where == "uri"
    assert "password" in problem.message
    assert "uri_file" in problem.hint


def test_user_without_password_is_accepted() -> None:
    # X.509 / AWS IAM authentication put only a user name in the URI.
    assert validate(SCHEMA, {"uri": "mongodb://CN%3Dquiesce@db1:27017/?authMechanism="
                                    "MONGODB-X509&tls=true"}).ok


@pytest.mark.parametrize("uri, word", [
    ("mongodb://a:27017,b:27017/?replicaSet=rs0", "2 hosts"),
    ("mongodb+srv://cluster0.example.net/", "mongodb+srv"),
    ("postgres://localhost/", "must start with mongodb://"),
    ("mongodb:///", "names no host"),
])
def test_uri_must_name_exactly_one_server(uri: str, word: str) -> None:
    messages = uri_problems(uri, from_file=False)
    assert any(word in m for m in messages), messages


def test_quoted_number_and_unknown_key_are_explained() -> None:
    result = validate(SCHEMA, {"uri": "mongodb://h/", "connect_timeout": "10",
                               "allow_lockd": True})
    by_where = {p.where: p for p in result.problems}
    assert "write 10 without quotes" in by_where["connect_timeout"].hint
    assert "allow_locked" in by_where["allow_lockd"].hint


def test_relative_uri_file_is_refused() -> None:
    result = validate(SCHEMA, {"uri_file": "mongodb.uri"})
    assert [p.where for p in result.problems] == ["uri_file"]


def test_exactly_one_of_uri_and_uri_file() -> None:
    assert section_problems({"uri": "mongodb://h/"}) == []
    assert "both" in section_problems({"uri": "x", "uri_file": "/y"})[0].message
    assert "neither" in section_problems({})[0].message
    with pytest.raises(ConfigError, match="neither uri nor uri_file"):
        resolve_uri({}, "mongodb[a]")


@pytest.mark.parametrize("uri, expected", [
    ("mongodb://u:p%40ss@h:1/db?x=1", ("mongodb://", "u:p%40ss", "h:1", "/db?x=1")),
    ("mongodb://h:1", ("mongodb://", "", "h:1", "")),
    ("mongodb://h:1?authSource=admin", ("mongodb://", "", "h:1", "?authSource=admin")),
])
def test_split_uri(uri: str, expected: tuple[str, str, str, str]) -> None:
    assert split_uri(uri) == expected


def test_redact_uri_hides_only_the_password() -> None:
    assert redact_uri("mongodb://backup:s3cret@db1:27017/?authSource=admin") == \
        "mongodb://backup:***@db1:27017/?authSource=admin"
    assert redact_uri("mongodb://db1:27017/") == "mongodb://db1:27017/"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_uri_file_with_password_is_read(root_dir: Path) -> None:
    secret = _write(root_dir / "mongo.uri",
                    "# the backup user\nmongodb://backup:s3cret@127.0.0.1:27017/\n")
    assert resolve_uri({"uri_file": str(secret)}) == "mongodb://backup:s3cret@127.0.0.1:27017/"


def test_group_readable_uri_file_is_refused(root_dir: Path) -> None:
    secret = _write(root_dir / "mongo.uri", "mongodb://backup:s3cret@h/\n", 0o640)
    with pytest.raises(PermissionProblem) as info:
        resolve_uri({"uri_file": str(secret)})
    assert any("chmod 600" in p.hint for p in info.value.problems)


def test_uri_file_must_hold_one_single_host_uri(root_dir: Path) -> None:
    two = _write(root_dir / "two.uri", "mongodb://a/\nmongodb://b/\n")
    with pytest.raises(ConfigError, match="exactly one URI line, found 2"):
        resolve_uri({"uri_file": str(two)})
    multi = _write(root_dir / "multi.uri", "mongodb://u:p@a:1,b:2/\n")
    with pytest.raises(ConfigError, match="2 hosts"):
        resolve_uri({"uri_file": str(multi)})
