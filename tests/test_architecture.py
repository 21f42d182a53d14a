"""The package's layers: each imports only its own layer and the ones below it, and no module imports itself
back through others. Every import counts, also one inside a function.

The layer order, bottom first, is written here and nowhere else; docs/architecture.md explains it.
"""

import ast
from pathlib import Path

from paths import REPO

PACKAGE = REPO / "rmask_tune"
LAYERS = (
    ("errors",),
    ("heads", "precision", "models", "resampling", "law", "law_record", "masking", "tasks", "files"),
    ("methods", "law_search", "runstore", "bench_profile"),
    ("trainer",),
    ("analysis", "validation"),
    ("sweep",),
    ("report",),
    ("bench", "gpu_check", "recommend"),
    ("commands",),
    ("cli", "__init__"),
)
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports (``from rmask_tune import x`` imports the module x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                       for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in MODULES and target != name}
    return found


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def unit(module: str) -> str:
    """The layer unit of a module: ``rmask_tune.sweep.plan`` -> ``sweep``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_layer():
    assert {unit(module) for module in MODULES} <= set(LEVEL), "give every new module or package a layer in LAYERS"


def test_no_import_runs_up_the_layers():
    upward = sorted(f"{source} imports {target} ({unit(source)} is below {unit(target)})"
                    for source, targets in GRAPH.items() for target in targets
                    if LEVEL[unit(source)] < LEVEL[unit(target)])
    assert not upward, "\n".join(upward)


def cycle_from(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its nodes in order, the first repeated at the end), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_between_modules_or_units():
    modules = cycle_from(GRAPH)
    assert modules is None, " -> ".join(modules)
    units: dict[str, set[str]] = {}
    for source, targets in GRAPH.items():
        units.setdefault(unit(source), set()).update(unit(t) for t in targets if unit(t) != unit(source))
    loop = cycle_from(units)
    assert loop is None, " -> ".join(loop)


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path):
    """The rules are not vacuous: a function-level import from masking up to sweep is read as an import of
    a higher layer, and two modules that import each other through a third are a cycle."""
    module = tmp_path / "module.py"
    module.write_text("def f():\n    from rmask_tune.sweep import plan\n")
    assert imported("rmask_tune.masking.layer", module) == {"rmask_tune.sweep.plan"}
    assert LEVEL[unit("rmask_tune.masking.layer")] < LEVEL[unit("rmask_tune.sweep.plan")]
    assert cycle_from({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None
