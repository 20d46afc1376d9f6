"""The import rules of docs/architecture.md, checked on the source (every import, also the lazy
ones inside functions; ``if TYPE_CHECKING:`` blocks are types only and do not count).

- core never imports a bundled engine (``quiesce_*``): engines come through hooks;
- the production commands (pre, post, status, run, check, install) never reach the harness,
  directly or through anything they import;
- an engine's production modules never reach the harness or the engine's own throwaway-server,
  drill-target and fixture modules;
- the hold and freezing never import the callers or the harness; freezing imports nothing of
  the hold.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"quiesce": ROOT / "core" / "quiesce"}
SOURCES.update({p.name: p for p in (ROOT / "plugins").glob("quiesce_*") if p.is_dir()})
HARNESS_MODULES = ("server", "drill_target", "fixtures", "image")
PRODUCTION_COMMANDS = ("pre", "post", "status", "run", "check", "install", "uninstall", "prune")


def module_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top, base in SOURCES.items():
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([top, *parts])] = path
    return found


MODULES = module_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports (resolved to modules that exist)."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    resolved = set()
    for name in names:
        found = name
        while found and found not in MODULES:
            found = found.rpartition(".")[0]
        if found and found != module:
            resolved.add(found)
    return resolved


def closure(start: str) -> dict[str, str]:
    """Every module reachable from ``start``, each with the module that imported it."""
    seen = {start: ""}
    todo = [start]
    while todo:
        current = todo.pop()
        for imported in imports_of(current):
            if imported not in seen:
                seen[imported] = current
                todo.append(imported)
    return seen


def chain(seen: dict[str, str], module: str) -> str:
    steps = [module]
    while seen.get(steps[-1]):
        steps.append(seen[steps[-1]])
    return " <- ".join(steps)


def test_the_rules_see_the_tree() -> None:
    """Guard: the checks below would pass vacuously on a tree they cannot read."""
    assert "quiesce.hold.holder" in MODULES and "quiesce_postgresql.engine" in MODULES
    assert "quiesce.harness.drill.orchestrator" in imports_of("quiesce.commands.drill")


def test_core_never_imports_a_bundled_engine() -> None:
    offenders = {m: sorted(i for i in imports_of(m) if i.startswith("quiesce_"))
                 for m in MODULES if m.startswith("quiesce.") or m == "quiesce"}
    assert {m: i for m, i in offenders.items() if i} == {}


@pytest.mark.parametrize("command", PRODUCTION_COMMANDS)
def test_production_commands_never_reach_the_harness(command: str) -> None:
    seen = closure(f"quiesce.commands.{command}")
    bad = [chain(seen, m) for m in seen if m.startswith("quiesce.harness")]
    assert bad == []


@pytest.mark.parametrize("engine", sorted(t for t in SOURCES if t != "quiesce"))
def test_engine_production_modules_never_reach_throwaway_servers(engine: str) -> None:
    harness_side = {f"{engine}.{name}" for name in HARNESS_MODULES}
    for module in MODULES:
        if not module.startswith(f"{engine}.") or module in harness_side:
            continue
        seen = closure(module)
        bad = [chain(seen, m) for m in seen
               if m.startswith("quiesce.harness") or m in harness_side]
        assert bad == [], module


@pytest.mark.parametrize(("room", "forbidden"), [
    ("quiesce.hold", ("quiesce.callers", "quiesce.harness", "quiesce.commands")),
    ("quiesce.freezing", ("quiesce.callers", "quiesce.harness", "quiesce.commands",
                          "quiesce.hold")),
    ("quiesce.callers", ("quiesce.harness", "quiesce.commands")),
])
def test_rooms_import_only_downwards(room: str, forbidden: tuple[str, ...]) -> None:
    for module in MODULES:
        if module != room and not module.startswith(room + "."):
            continue
        bad = sorted(i for i in imports_of(module) if i.startswith(forbidden))
        assert bad == [], module


def test_a_harness_import_is_seen(tmp_path: Path) -> None:
    """The checker itself: a lazy import inside a function counts, a TYPE_CHECKING one not."""
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from quiesce.harness.disks import LoopDisk\n"
              "def f():\n    from quiesce.harness.drill import cycle\n")
    fake = tmp_path / "fake.py"
    fake.write_text(source)
    MODULES["quiesce.fake_for_test"] = fake
    try:
        assert imports_of("quiesce.fake_for_test") == {"quiesce.harness.drill",
                                                       "quiesce.harness.drill.cycle"}
    finally:
        del MODULES["quiesce.fake_for_test"]


MAX_FUNCTION_LINES = 80


def test_no_function_in_core_or_plugins_is_longer_than_80_lines() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert long == []
