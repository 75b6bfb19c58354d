"""The layering holds: no import cycles (lazy imports included), the core knows no scenario, and no
module reaches into another's private names."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "lethe"


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(target module, imported names, node) for every import in the file, function-level ones included."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for m, f in MODULES.items():
        for target, names, _ in _imports(m, f):
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            # `from . import options` names a module: the edge is to it, not to the package that holds it
            for cand in submodules if names and len(submodules) == len(names) else [target, *submodules]:
                if cand in MODULES and cand != m:
                    graph[m].add(cand)
    return graph


def _cycles(graph):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_even_through_lazy_imports():
    assert _cycles(_graph()) == []


def _reaches(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_core_knows_no_scenario_and_no_interface():
    graph = _graph()
    for layer in ("lethe.core", "lethe.engine.loop", "lethe.engine.tasks", "lethe.objectives", "lethe.data.prompt"):
        reached = _reaches(graph, layer)
        assert not {m for m in reached if m.startswith("lethe.scenarios") or m in ("lethe.api", "lethe.cli")}, layer


def test_no_private_name_is_used_across_modules():
    offenders = []
    for m, f in MODULES.items():
        module_aliases = set()
        for target, names, node in _imports(m, f):
            if target.startswith("lethe") or (isinstance(node, ast.ImportFrom) and node.level):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                offenders += [f"{m}: from {target} import {n}" for n in private]
                module_aliases |= {n for n in names if f"{target}.{n}" in MODULES}
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offenders.append(f"{m}: {node.value.id}.{node.attr}")
    assert offenders == []


# Bottom to top; a module may import its own layer and those listed before it, never one after it.
LAYERS = ("version", "util", "data", "ops", "model", "objectives", "evaluation", "engine", "core", "attacks",
          "reports", "scenarios", "api", "cli", "__main__", "")


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "")


def test_imports_only_go_down_the_layers():
    upward = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets if _layer(t) > _layer(m)]
    assert upward == []


def test_the_root_holds_only_the_entry_points():
    loose = sorted(f.name for f in ROOT.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "api.py", "version.py"]


def test_every_built_in_scenario_has_its_layout_for_old_results_files():
    from lethe.reports.layouts import BUILT_IN_SCENARIO_LAYOUTS, LAYOUTS
    from lethe.scenarios.catalog import SCENARIOS

    assert {name: SCENARIOS.get(name).report for name in SCENARIOS.recorded_names()} == BUILT_IN_SCENARIO_LAYOUTS
    assert set(BUILT_IN_SCENARIO_LAYOUTS.values()) <= set(LAYOUTS.names())


def test_no_package_exports_a_name_that_hides_one_of_its_modules():
    import importlib

    hidden = []
    for name in MODULES:
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        parent, _, leaf = name.rpartition(".")
        if parent and getattr(importlib.import_module(parent), leaf) is not module:
            hidden.append(name)  # e.g. a package exporting a function `unlearn` beside unlearn.py
    assert hidden == []


def test_long_functions_and_long_parameter_lists_say_why():
    """A function over 80 lines or 8 parameters carries a comment right above it (or its decorators) saying why."""
    unexplained = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            params = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) - (a.args[:1] != [] and
                                                                              a.args[0].arg in ("self", "cls"))
            if node.end_lineno - node.lineno + 1 <= 80 and params <= 8:
                continue
            above = lines[min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 2].strip()
            if not above.startswith("#"):
                unexplained.append(f"{name}.{node.name}")
    assert unexplained == []
