"""Mutated configs for the fuzz-style tests: valid files broken in the ways a hostile or careless
edit breaks them. Deterministic (a fixed seed) and bounded (a given count).

Every mutation makes the file invalid by construction (a wrong type, a non-finite or huge
number where the key has a range, nesting no config needs, a non-ASCII value where only ASCII
is allowed, truncation inside a value), so each must end as a named problem, never as a
traceback and never as a run.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable

# --- the Azure JSON ----------------------------------------------------------------------------

AZURE_NUMBERS = ("preScriptNoOfRetries", "postScriptNoOfRetries", "timeoutInSeconds",
                 "ScriptsExecutionPollTimeSeconds")
AZURE_STRINGS = ("pluginName", "preScriptLocation", "postScriptLocation")
AZURE_BOOLS = ("continueBackupOnFailure", "fsFreezeEnabled")
AZURE_LISTS = ("preScriptParams", "postScriptParams")


def azure_base(pre: str, post: str) -> dict[str, object]:
    """A valid config (fsFreezeEnabled false: a run of it would freeze nothing)."""
    return {
        "pluginName": "ScriptRunner",
        "preScriptLocation": pre,
        "postScriptLocation": post,
        "preScriptParams": ["--fast", ""],
        "postScriptParams": [],
        "preScriptNoOfRetries": 1,
        "postScriptNoOfRetries": 0,
        "timeoutInSeconds": 30,
        "continueBackupOnFailure": False,
        "fsFreezeEnabled": False,
        "appName": "fuzz",
        "ScriptsExecutionPollTimeSeconds": 2,
    }


_BIG = "10000000000000000000000000000000"
_JSON_BAD_NUMBERS = ("NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 5000,
                     _BIG, "-1", "0.5", "2.0")
# Raw JSON string literals: plain non-ASCII text, and escapes for a lone surrogate and a NUL.
_UNICODE = [json.dumps(text, ensure_ascii=False) for text in
            ("ünïcødé", "\u202eevil", "\u00a0", "日本語", "\U0001f600")] + ['"\\ud800x"',
                                                                          '"/a\\u0000b"']


def _set(doc_text: str, key: str, raw: str) -> str:
    """The JSON text with ``key``'s value replaced by the raw JSON ``raw``."""
    pattern = re.compile(rf'("{re.escape(key)}": )(\[[^\]]*\]|"[^"]*"|[^,}}\n]+)')
    return pattern.sub(lambda m: m.group(1) + raw, doc_text, count=1)


def azure_mutations(pre: str, post: str, count: int, seed: int = 12) -> list[tuple[str, bytes]]:
    """``count`` (label, file bytes) pairs, each an invalid config."""
    rng = random.Random(seed)
    base = json.dumps(azure_base(pre, post), indent=1)

    def deep(n: int) -> str:
        return "[" * n + "]" * n

    def number() -> tuple[str, str]:
        key = rng.choice(AZURE_NUMBERS)
        raw = rng.choice(_JSON_BAD_NUMBERS)
        if raw == _BIG and "Retries" in key:  # no maximum there: a huge count is valid
            key = "timeoutInSeconds"
        return f"{key}={raw[:12]}", _set(base, key, raw)

    def wrong_type() -> tuple[str, str]:
        key = rng.choice(AZURE_NUMBERS + AZURE_STRINGS + AZURE_BOOLS + AZURE_LISTS)
        if key in AZURE_NUMBERS:
            raw = rng.choice(['"30"', "true", "null", "[]", "{}", "1.5"])
        elif key in AZURE_STRINGS:
            raw = rng.choice(["30", "true", "null", "[]", "{}"])
        elif key in AZURE_BOOLS:
            raw = rng.choice(['"true"', "1", "null", "[]"])
        else:
            raw = rng.choice(['"--fast"', "30", "[1, 2]", "[null]", '[["x"]]', "{}"])
        return f"{key} as {raw}", _set(base, key, raw)

    def nesting() -> tuple[str, str]:
        key = rng.choice(AZURE_NUMBERS + AZURE_STRINGS + AZURE_LISTS + ("appName",))
        n = rng.choice([40, 1000, 5000, 200_000])
        return f"{key} nested {n}", _set(base, key, deep(n))

    def unicode() -> tuple[str, str]:
        key = rng.choice(("pluginName", "preScriptLocation", "postScriptLocation",
                          "timeoutInSeconds", "fsFreezeEnabled"))
        raw = rng.choice(_UNICODE)
        return f"{key} unicode {raw}", _set(base, key, raw)

    def truncate() -> tuple[str, str]:
        cut = rng.randrange(1, len(base) - 2)
        return f"truncated at {cut}", base[:cut]

    def unknown_or_duplicate() -> tuple[str, str]:
        key = rng.choice(AZURE_NUMBERS + AZURE_STRINGS)
        if rng.random() < 0.5:
            return f"duplicate {key}", base.replace("{", f'{{"{key}": 1,', 1)
        return "unknown key", base.replace("{", '{"preScriptLocaton": "/x",', 1)

    def top_level() -> tuple[str, str]:
        return "top level", rng.choice(["[]", "null", "30", '"x"', deep(300_000), "{"])

    kinds: list[Callable[[], tuple[str, str]]] = [number, wrong_type, nesting, unicode,
                                                   truncate, unknown_or_duplicate, top_level]
    out = []
    for i in range(count):
        label, text = kinds[i % len(kinds)]()
        out.append((label, text.encode("utf-8", "surrogatepass")))
    return out


# --- quiesce.toml -------------------------------------------------------------------------------

def toml_base(state_dir: str) -> str:
    """A valid quiesce.toml whose servers are unreachable (port 1): even a valid file could
    hold nothing."""
    return f"""max_hold_seconds = 120
pre_timeout_seconds = 30
state_dir = "{state_dir}"

[[postgresql]]
name = "pg"
conninfo = "host=127.0.0.1 port=1 user=postgres dbname=postgres"
connect_timeout = 5
archive_wait_seconds = 20

[[mysql]]
name = "my"
host = "127.0.0.1"
port = 1
lock_wait_seconds = 10.5
kill_blockers_after = 5

[[mongodb]]
name = "mongo"
uri = "mongodb://127.0.0.1:1/"
connect_timeout = 2.5
"""


# (section or "" for the top level, key, kind of value)
TOML_NUMBERS = [("", "max_hold_seconds"), ("", "pre_timeout_seconds"),
                ("postgresql", "connect_timeout"), ("postgresql", "archive_wait_seconds"),
                ("mysql", "port"), ("mysql", "lock_wait_seconds"),
                ("mysql", "kill_blockers_after"), ("mongodb", "connect_timeout")]
TOML_STRINGS = [("", "state_dir"), ("postgresql", "name"), ("postgresql", "conninfo"),
                ("mysql", "host"), ("mongodb", "uri"), ("mysql", "name")]
_TOML_BAD_NUMBERS = ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "1e400", "-1e999",
                     "1" + "0" * 5000, "100000000000000000000000000000000", "-5", "-0.5",
                     "1_000_000")
_TOML_WRONG_TYPES = ('"30"', "true", "[]", "{}", '["x"]', "{ a = 1 }", "1979-05-27T07:32:00Z")


def _toml_set(text: str, section: str, key: str, raw: str) -> str:
    """``text`` with ``key``'s value (in ``[[section]]``, or top level) replaced by ``raw``."""
    start = 0 if not section else text.index(f"[[{section}]]")
    line = re.compile(rf"^{re.escape(key)} = .*$", re.MULTILINE)
    match = line.search(text, start)
    assert match is not None, (section, key)
    return text[:match.start()] + f"{key} = {raw}" + text[match.end():]


def toml_mutations(state_dir: str, count: int, seed: int = 12) -> list[tuple[str, bytes]]:
    """``count`` (label, file bytes) pairs, each an invalid quiesce.toml."""
    rng = random.Random(seed)
    base = toml_base(state_dir)

    def number() -> tuple[str, str]:
        section, key = rng.choice(TOML_NUMBERS)
        raw = rng.choice(_TOML_BAD_NUMBERS)
        return f"{section}.{key}={raw[:12]}", _toml_set(base, section, key, raw)

    def wrong_type() -> tuple[str, str]:
        section, key = rng.choice(TOML_NUMBERS + TOML_STRINGS)
        choices = list(_TOML_WRONG_TYPES)
        if (section, key) in TOML_STRINGS:
            choices = ["30", "true", "[]", "{}", "nan", "1979-05-27"]
        raw = rng.choice(choices)
        return f"{section}.{key} as {raw}", _toml_set(base, section, key, raw)

    def nesting() -> tuple[str, str]:
        section, key = rng.choice(TOML_NUMBERS + TOML_STRINGS)
        n = rng.choice([40, 500, 5000, 100_000])
        opener, closer = rng.choice([("[", "]"), ("{ a = ", " }")])
        return f"{section}.{key} nested {n}", \
            _toml_set(base, section, key, opener * n + "1" + closer * n)

    def unicode() -> tuple[str, str]:
        section, key = rng.choice([("postgresql", "name"), ("mysql", "name"),
                                   ("", "state_dir"), ("postgresql", "label")])
        value = rng.choice(["ünïcødé", "\u202eevil", "名前", "\U0001f600", "a\\u0000b"])
        if key == "label":
            return "postgresql.label unicode", base.replace(
                'name = "pg"', f'name = "pg"\nlabel = "{value}"', 1)
        if key == "state_dir":
            value = "relative/" + value
        return f"{section}.{key} unicode", _toml_set(base, section, key, f'"{value}"')

    def truncate() -> tuple[str, str]:
        # Inside a quoted value: an unterminated string, never a shorter valid file.
        quotes = [m.start() for m in re.finditer(r'= "', base)]
        at = rng.choice(quotes) + 3
        return f"truncated at {at}", base[:at + rng.randrange(0, 3)]

    def unknown() -> tuple[str, str]:
        return "unknown key", rng.choice([
            base.replace("max_hold_seconds", "max_hold_secs", 1),
            base.replace('name = "my"', 'name = "my"\nlock_wait = 5', 1),
            base + "\n[[postgersql]]\nconninfo = \"\"\n",
            base.replace('name = "mongo"', 'name = "mongo"\nuri_file = "/nonexistent"', 1)])

    def password() -> tuple[str, str]:
        return "password in conninfo", _toml_set(
            base, "postgresql", "conninfo",
            rng.choice(['"postgresql://postgres:Hunter2%Secret@127.0.0.1:1/postgres"',
                        '"postgresql://postgres:Hunter2Secret@[::1:1/postgres"',
                        '"host=127.0.0.1 port=1 password=Hunter2Secret"']))

    kinds: list[Callable[[], tuple[str, str]]] = [number, wrong_type, nesting, unicode,
                                                   truncate, unknown, password]
    out = []
    for i in range(count):
        label, text = kinds[i % len(kinds)]()
        out.append((label, text.encode("utf-8")))
    return out
