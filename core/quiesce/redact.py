"""One place that keeps passwords out of messages about connection strings.

Every message that quotes a libpq conninfo (``host=... password=...`` or a
``postgresql://user:password@host/db`` URI), a MongoDB URI or a driver's complaint about one
goes through :func:`redact` before it reaches stderr, ``--json``, a log or a record. Drivers
echo what they could not parse: libpq says ``invalid percent-encoded token: "Hunter2%Secret"``
or quotes a whole malformed IPv6 URI; what they echo is exactly the malformed part, so the
redaction must also work on strings no parser accepts.

What counts as a password:

- in a URI, everything between the first ``:`` of the userinfo and the ``@`` that ends it; when
  the authority is malformed (a password with an unescaped ``/``, ``?`` or ``#``), the userinfo
  is taken to run to the *last* ``@`` of the string, so a password is never mistaken for a
  host (this may hide more than the password; never less);
- the value of any key whose name contains ``password`` (``password=``, ``sslpassword=``,
  ``tlsCertificateKeyFilePassword=``), as a conninfo keyword or a URI query parameter.

Nothing here imports a driver.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

REDACTED = "***"

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# A key whose name contains "password", then "=", then a value: libpq's single-quoted value
# (backslash escapes, possibly unterminated), a double-quoted one, or a bare one up to a
# separator. Used for conninfo keywords and URI query parameters alike.
_KEYWORD_RE = re.compile(
    r"""(?P<key>[A-Za-z0-9_.-]*password[A-Za-z0-9_.-]*\s*=\s*)"""
    r"""(?P<value>'(?:\\.|[^'\\])*(?:'|$)|"(?:\\.|[^"\\])*(?:"|$)|[^\s&;#'"]*)""",
    re.IGNORECASE)
# A URI inside a longer message: scheme, user, ':', password, '@'. The password may hold any
# character but whitespace, quotes and '@' (a driver quotes the URI it rejects).
_URI_IN_TEXT_RE = re.compile(
    r"""(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:@/?#"']*:)(?P<password>[^\s@"']+)(?=@)""")
_QUOTED_RE = re.compile(r""""([^"\n]*)"|'([^'\n]*)'""")
# A secret shorter than this is replaced only where it stands alone, not inside other words.
_SHORT_SECRET = 4


def _split_uri(uri: str) -> tuple[str, str, str] | None:
    """(scheme + '//', userinfo, rest after the '@') of a URI with a userinfo; None without."""
    match = _SCHEME_RE.match(uri)
    if match is None:
        return None
    scheme, body = match.group(0), uri[match.end():]
    end = len(body)
    for sep in ("/", "?", "#"):
        at = body.find(sep)
        if at != -1:
            end = min(end, at)
    authority = body[:end]
    if "@" in authority:
        userinfo, _, hosts = authority.rpartition("@")
        return scheme, userinfo, hosts + body[end:]
    if "@" in body:  # a reserved character in the password ended the authority too early
        userinfo, _, rest = body.rpartition("@")
        return scheme, userinfo, rest
    return None


def _unquote_keyword_value(value: str) -> str:
    if value[:1] in ("'", '"'):
        inner = value[1:-1] if len(value) > 1 and value[-1] == value[0] else value[1:]
        return re.sub(r"\\(.)", r"\1", inner)
    return value


def secrets_of(source: str) -> list[str]:
    """The passwords in a conninfo or URI, as written and decoded; longest first."""
    found: set[str] = set()
    parts = _split_uri(source)
    if parts is not None:
        _scheme, userinfo, _rest = parts
        _user, colon, password = userinfo.partition(":")
        if colon and password:
            found.update({password, unquote(password)})
    for match in _KEYWORD_RE.finditer(source):
        value = match.group("value")
        if value:
            found.update({value, _unquote_keyword_value(value), unquote(value)})
    return sorted((s for s in found if s), key=len, reverse=True)


def _redact_keywords(text: str) -> str:
    return _KEYWORD_RE.sub(lambda m: m.group("key") + (REDACTED if m.group("value") else ""),
                           text)


def redact_uri(uri: str) -> str:
    """The URI with its password (and any ``*password*=`` query value) replaced by ``***``;
    the user, hosts, database and other options are kept."""
    parts = _split_uri(uri)
    if parts is not None:
        scheme, userinfo, rest = parts
        user, colon, password = userinfo.partition(":")
        if colon and password:
            uri = f"{scheme}{user}:{REDACTED}@{rest}"
    return _redact_keywords(uri)


def redact_conninfo(text: str) -> str:
    """A conninfo (URI or ``key=value`` form) with every password replaced by ``***``."""
    if _SCHEME_RE.match(text.strip()):
        return redact_uri(text.strip()) if text == text.strip() else \
            text.replace(text.strip(), redact_uri(text.strip()))
    return _redact_keywords(text)


def _replace_secret(text: str, secret: str) -> str:
    if len(secret) >= _SHORT_SECRET:
        return text.replace(secret, REDACTED)
    return re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", REDACTED, text)


def redact(message: str, *sources: str) -> str:
    """``message`` (typically a driver's error about ``sources``) without their passwords.

    In order: each source quoted whole is replaced by its redacted form; a quoted fragment
    ("..." or '...') that is part of a password, or holds one, becomes ``***``; any remaining
    occurrence of a password goes; and URIs and ``password=`` keywords written in the message
    itself are redacted even when no source names them.
    """
    text = message
    secrets: list[str] = []
    for source in sources:
        if not source:
            continue
        if source in text:
            text = text.replace(source, redact_conninfo(source))
        secrets.extend(secrets_of(source))
    secrets = sorted(set(secrets), key=len, reverse=True)

    def quoted(match: re.Match[str]) -> str:
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        if inner and any(inner in s or (s in inner and len(s) >= _SHORT_SECRET)
                         for s in secrets):
            quote = match.group(0)[0]
            return f"{quote}{REDACTED}{quote}"
        return match.group(0)

    if secrets:
        text = _QUOTED_RE.sub(quoted, text)
        for secret in secrets:
            text = _replace_secret(text, secret)
    text = _URI_IN_TEXT_RE.sub(lambda m: m.group("head") + REDACTED, text)
    return _redact_keywords(text)
