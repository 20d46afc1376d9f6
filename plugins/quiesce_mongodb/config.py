"""The ``[[mongodb]]`` section of quiesce.toml: its schema and how the connection URI is found.

Exactly one of ``uri`` (in the TOML, without a password) or ``uri_file`` (a root-owned 0600
file holding the URI, password included) names the server. quiesce locks ONE process: the URI
must name a single host (the mongod whose disks are snapshotted, or one mongos when
``allow_mongos`` is set), so lock and unlock always reach the same server.

Nothing here imports pymongo: this module is loaded while validating configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from quiesce.errors import ConfigError, Problem
from quiesce.schema import Field, Table

SCHEMES = ("mongodb://", "mongodb+srv://")

URI_HINT = ("put the URI with its password in a root-owned file (chmod 600) and point "
            "uri_file at it; keep uri for password-less URIs")


def split_uri(uri: str) -> tuple[str, str, str, str]:
    """(scheme, userinfo, hosts, rest) of a MongoDB connection string; '' for absent parts.

    The authority ends at the first '/' or '?' after the scheme (the connection-string spec
    requires '/', '?', '@' and ':' inside user names and passwords to be percent-encoded), and
    the userinfo is everything before the last '@' of the authority.
    """
    scheme = next((s for s in SCHEMES if uri.startswith(s)), "")
    body = uri[len(scheme):]
    cut = len(body)
    for sep in ("/", "?"):
        at = body.find(sep)
        if at != -1:
            cut = min(cut, at)
    authority, rest = body[:cut], body[cut:]
    userinfo, sep, hosts = authority.rpartition("@")
    if not sep:
        userinfo, hosts = "", authority
    return scheme, userinfo, hosts, rest


def uri_problems(uri: str, *, from_file: bool) -> list[str]:
    """What is wrong with ``uri``, as messages (empty when it is usable)."""
    problems: list[str] = []
    scheme, _userinfo, hosts, _rest = split_uri(uri)
    if not scheme:
        problems.append("must start with mongodb:// (a standard connection string)")
        return problems
    if scheme == "mongodb+srv://":
        problems.append("mongodb+srv:// resolves to several hosts; quiesce locks exactly one "
                        "server: write mongodb://HOST:PORT/ for the member (or mongos) to lock")
    host_list = [h for h in hosts.split(",") if h]
    if not host_list:
        problems.append("names no host")
    elif len(host_list) > 1:
        from quiesce.redact import redact

        problems.append(f"names {len(host_list)} hosts ({redact(hosts, uri)}); quiesce locks "
                        "exactly one server: name only the member whose disks are snapshotted "
                        "(or one mongos)")
    if not from_file:
        from quiesce.redact import secrets_of

        # Also finds a password whose unescaped '/', '?' or '#' ends the authority early.
        if secrets_of(uri):
            problems.append("contains a password; passwords never go in quiesce.toml")
    return problems


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ``***`` (safe to log and to record), also when
    the URI is malformed: see :mod:`quiesce.redact`."""
    from quiesce.redact import redact_uri as redact_any_uri

    return redact_any_uri(uri)


def uri_user(uri: str) -> str:
    _scheme, userinfo, _hosts, _rest = split_uri(uri)
    return unquote(userinfo.partition(":")[0])


def uri_host(uri: str) -> str:
    return split_uri(uri)[2]


def _check_inline_uri(value: Any) -> str | None:
    problems = uri_problems(value, from_file=False)
    return "; ".join(problems) if problems else None


def _check_path(value: Any) -> str | None:
    if not value.startswith("/"):
        return "must be an absolute path"
    return None


SCHEMA = Table({
    "uri": Field(str, check=_check_inline_uri, hint=URI_HINT,
                 doc='a mongodb:// URI without a password, e.g. "mongodb://127.0.0.1:27017/", '
                     "naming the one server to lock; a URI with a password goes in a "
                     "root-owned file named by uri_file instead. Set exactly one of uri and "
                     "uri_file"),
    "uri_file": Field(str, check=_check_path,
                      hint="a root-owned file (chmod 600) holding one mongodb:// URI",
                      doc="a root-owned file (mode 600) holding one mongodb:// URI, password "
                          "included; set exactly one of uri and uri_file"),
    "allow_locked": Field(bool, default=False,
                          hint="true lets quiesce add its lock to a server that is already "
                               "fsync-locked by someone else",
                          doc="true lets quiesce add its lock to a server that is already "
                              "fsync-locked by someone else"),
    "allow_mongos": Field(bool, default=False,
                          hint="true locks a whole sharded cluster through mongos "
                               "(MongoDB 7.1, 7.0.2, 6.0.11, 5.0.22 or newer)",
                          doc="true lets the URI name a mongos, which locks the whole sharded "
                              "cluster (MongoDB 7.1, 7.0.2, 6.0.11, 5.0.22 or newer)"),
    "connect_timeout": Field((int, float), default=5, minimum=0.1, maximum=300,
                             hint="seconds to wait for the server to answer",
                             doc="seconds to wait for the server to answer"),
    "lock_wait_seconds": Field((int, float), default=30, minimum=0.1, maximum=3600,
                               hint="seconds fsync may wait to take its lock behind running "
                                    "operations",
                               doc="seconds fsync may wait to take its lock behind running "
                                   "operations"),
    "balancer_stop_seconds": Field((int, float), default=60, minimum=1, maximum=3600,
                                   hint="seconds to wait for a running balancer round to end "
                                        "(mongos only)",
                                   doc="seconds to wait for a running balancer round to end "
                                       "(mongos only)"),
})


def section_problems(options: Mapping[str, Any], where: str = "mongodb") -> list[Problem]:
    """Cross-key rules the per-key schema cannot express."""
    has_uri, has_file = "uri" in options, "uri_file" in options
    if has_uri and has_file:
        return [Problem(where, "both uri and uri_file are set", "keep exactly one of them")]
    if not has_uri and not has_file:
        return [Problem(where, "neither uri nor uri_file is set",
                        "add uri = \"mongodb://127.0.0.1:27017/\" or uri_file = "
                        "\"/etc/quiesce/mongodb.uri\"")]
    return []


def resolve_uri(options: Mapping[str, Any], where: str = "mongodb") -> str:
    """The URI to connect with: ``uri``, or the content of the trusted ``uri_file``."""
    problems = section_problems(options, where)
    if problems:
        raise ConfigError(where, problems)
    if "uri" in options:
        uri = str(options["uri"])
        messages = uri_problems(uri, from_file=False)
        if messages:
            raise ConfigError(where, [Problem(f"{where}.uri", m, URI_HINT) for m in messages])
        return uri
    from quiesce.security import open_trusted

    path = str(options["uri_file"])
    with open_trusted(path, "secret") as trusted:
        raw = trusted.read_bytes(max_bytes=64 * 1024)
    try:
        lines = [ln.strip() for ln in raw.decode("utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise ConfigError(where, [Problem(path, "is not UTF-8 text",
                                          "write the URI as plain text")]) from exc
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) != 1:
        raise ConfigError(where, [Problem(
            path, f"must hold exactly one URI line, found {len(lines)}",
            "write one mongodb://user:password@host:port/?authSource=admin line")])
    uri = lines[0]
    messages = uri_problems(uri, from_file=True)
    if messages:
        raise ConfigError(where, [Problem(path, f"the URI {m}", "") for m in messages])
    return uri
