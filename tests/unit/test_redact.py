"""quiesce.redact against the drivers' own parse errors: no password survives a message about a
conninfo or URI, and the message still says what is wrong."""

from __future__ import annotations

import pytest

from quiesce.redact import redact, redact_conninfo, redact_uri, secrets_of

SECRET = "Hunter2"  # every password below contains it


def leaks(text: str) -> bool:
    return SECRET in text or "Secret" in text


# (conninfo, a fragment of libpq's complaint the redacted message must keep)
PSYCOPG_BAD = [
    ("postgresql://postgres:Hunter2%Secret@127.0.0.1/postgres", "invalid percent-encoded token"),
    ("postgresql://u:Hunter2%zzSecret@host/db", "invalid percent-encoded token"),
    ("postgresql://postgres:Hunter2Secret@[::1/postgres", "IPv6 host address"),
    ("postgresql://postgres:Hunter2Secret@[::1]x/postgres", "unexpected character"),
    ("postgresql://postgres:Hunter2Secret@[]/postgres", "may not be empty"),
    ("postgresql://postgres:Hunter2Secret@[::1]:5432,[::2/postgres", "IPv6 host address"),
    ("postgresql://:Hunter2Secret@[::1/postgres", "IPv6 host address"),
    ("postgresql://postgres@host/db?password=Hunter2Secret&sslmode", "separator"),
    ("postgresql://postgres:Hunter2Secret@host/db?foo=bar", "invalid URI query parameter"),
    ("host=x password=Hunter2Secret foo=bar", "invalid connection option"),
    ("host=x password='Hunter2Secret", "unterminated quoted string"),
    ("host=x password=Hunter2Secret sslmode", 'missing "="'),
]


@pytest.mark.parametrize(("conninfo", "keep"), PSYCOPG_BAD)
def test_libpq_parse_errors_lose_the_password_and_keep_the_reason(conninfo: str,
                                                                  keep: str) -> None:
    conninfo_mod = pytest.importorskip("psycopg.conninfo",
                                       reason="psycopg is not installed (quiesce[postgresql])")
    with pytest.raises(Exception) as info:  # psycopg.ProgrammingError
        conninfo_mod.conninfo_to_dict(conninfo)
    raw = str(info.value)
    text = redact(raw, conninfo)
    assert not leaks(text), text
    assert keep in text


def test_the_raw_libpq_messages_really_carry_the_password() -> None:
    # Guards the test above: if libpq stopped echoing, it would pass without redacting.
    conninfo_mod = pytest.importorskip("psycopg.conninfo",
                                       reason="psycopg is not installed (quiesce[postgresql])")
    echoed = 0
    for conninfo, _keep in PSYCOPG_BAD:
        with pytest.raises(Exception) as info:
            conninfo_mod.conninfo_to_dict(conninfo)
        echoed += leaks(str(info.value))
    assert echoed >= 5


MONGO_BAD = [
    "mongodb://user:Hunter2Secret@[::1",
    "mongodb://user:Hunter2Secret@::1:27017/",
    "mongodb://user:Hunter2%Secret@host/",
    "mongodb://user:Hunter2Secret@host:99999/",
    "mongodb://user:Hunter2Secret@host:abc/",
    "mongodb://user:Hunter2/Secret@host/",
    "mongodb://user:Hunter2?Secret@host/",
    "mongodb://user:Hunter2@Secret@host/",
    "mongodb://user:Hunter2Secret@host/?authSource=",
    "mongodb://user:Hunter2Secret@host/d b",
]


@pytest.mark.parametrize("uri", MONGO_BAD)
def test_pymongo_uri_errors_and_the_quoted_uri_lose_the_password(uri: str) -> None:
    uri_parser = pytest.importorskip("pymongo.uri_parser",
                                     reason="pymongo is not installed (quiesce[mongodb])")
    with pytest.raises(Exception) as info:  # InvalidURI, ValueError, ConfigurationError
        uri_parser.parse_uri(uri)
    # What the MongoDB plugin prints: the URI (redacted on its own) and the driver's reason.
    text = f"cannot use the URI {redact_uri(uri)}: {redact(str(info.value), uri)}"
    assert not leaks(text), text
    assert str(info.value)[:20] in text or "***" in text


def test_the_mongodb_plugin_message_for_a_malformed_uri() -> None:
    pytest.importorskip("pymongo", reason="pymongo is not installed (quiesce[mongodb])")
    from quiesce.errors import EngineError
    from quiesce_mongodb.session import MongoSession

    for uri in MONGO_BAD:
        try:
            MongoSession(uri, connect_timeout=1).client.close()
        except EngineError as exc:
            assert not leaks(str(exc)), str(exc)
            assert "cannot use the URI" in str(exc)


def test_redact_uri_keeps_everything_but_the_password() -> None:
    assert redact_uri("mongodb://backup:s3cret@db1:27017/?authSource=admin") == \
        "mongodb://backup:***@db1:27017/?authSource=admin"
    assert redact_uri("postgresql://u:p%40ss@[::1]:5432/db?sslmode=require") == \
        "postgresql://u:***@[::1]:5432/db?sslmode=require"
    assert redact_uri("mongodb://db1:27017/") == "mongodb://db1:27017/"
    assert redact_uri("postgresql://u@h/db?sslpassword=x&application_name=a") == \
        "postgresql://u@h/db?sslpassword=***&application_name=a"
    # A password with an unescaped '/' would otherwise read as the host.
    assert redact_uri("mongodb://user:Hunter2/Secret@host/") == "mongodb://user:***@host/"


def test_keyword_conninfo() -> None:
    assert redact_conninfo("host=db password=Hunter2 user=x") == "host=db password=*** user=x"
    assert redact_conninfo("password = 'Hunter2 with \\' quote' host=db") == \
        "password = *** host=db"
    assert redact_conninfo("host=db sslpassword=Hunter2") == "host=db sslpassword=***"
    assert "a b'c" in secrets_of("password='a b\\'c'")


def test_fragments_and_passwords_quoted_anywhere_go() -> None:
    conninfo = "postgresql://u:ab%zzcdef@h/db"
    assert redact('invalid percent-encoded token: "%zz"', conninfo) == \
        'invalid percent-encoded token: "***"'
    assert redact("the password ab%zzcdef was refused", conninfo) == \
        "the password *** was refused"
    # No source given: a URI or keyword in the message itself is still redacted.
    assert redact('bad URI "postgresql://u:Hunter2@[::1/db"') == \
        'bad URI "postgresql://u:***@[::1/db"'
    assert redact("bad conninfo: password=Hunter2 port=x") == "bad conninfo: password=*** port=x"


def test_a_message_without_secrets_is_unchanged() -> None:
    message = 'invalid connection option "foo" (connect_timeout must be at least 2)'
    assert redact(message, "host=db foo=1") == message
    assert redact("password authentication failed for user \"x\"") == \
        "password authentication failed for user \"x\""


def test_the_postgresql_conninfo_check_reports_without_the_password() -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed (quiesce[postgresql])")
    from quiesce_postgresql.config import conninfo_problem

    for conninfo, keep in PSYCOPG_BAD:
        message = conninfo_problem(conninfo)
        assert message is not None and not leaks(message), message
        if "password=" not in conninfo:
            assert keep in message


def test_the_mongodb_inline_uri_check_finds_a_password_a_slash_cut_short() -> None:
    from quiesce_mongodb.config import uri_problems

    found = uri_problems("mongodb://user:Hunter2/Secret@host/", from_file=False)
    assert any("contains a password" in m for m in found)
    assert not any(leaks(m) for m in found)
    two_hosts = uri_problems("mongodb://user:Hunter2Secret@h1,h2/", from_file=True)
    assert any("2 hosts" in m for m in two_hosts) and not any(leaks(m) for m in two_hosts)


def test_a_uri_password_libpq_would_read_as_a_port_is_refused_without_echo() -> None:
    conninfo_mod = pytest.importorskip("psycopg.conninfo",
                                       reason="psycopg is not installed (quiesce[postgresql])")
    from quiesce_postgresql.config import conninfo_problem

    uri = "postgresql://postgres:Hunter2/Secret@localhost/postgres"
    # libpq parses it: the password lands in port and dbname, and connecting would echo it.
    assert conninfo_mod.conninfo_to_dict(uri)["port"] == "Hunter2"
    message = conninfo_problem(uri)
    assert message is not None and "contains a password" in message and not leaks(message)
    assert conninfo_problem("postgresql://quiesce@localhost:5432/postgres") is None
    assert conninfo_problem("host=/run/postgresql user=quiesce dbname=postgres") is None
