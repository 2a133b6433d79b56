"""The package's shape: layers import only downward, no import cycles, no hidden imports, small
modules.

Read from the source with :mod:`ast` (nothing is imported), so a violation names the file and line.
A module may import its own layer and the layers below it (listed lowest first); imports of capsim
modules sit at module level (inside functions only optional heavy packages such as torch may be
imported); no module exceeds ``MAX_LINES`` lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "capsim"
MAX_LINES = 500

# Lowest first. A module belongs to the first entry that is its name or a package above it.
LAYERS: list[tuple[str, ...]] = [
    ("capsim.errors", "capsim.strict", "capsim.paths"),  # base utilities, no capsim imports
    ("capsim.spec",),  # pure pydantic schemas
    ("capsim.workload",),  # arrivals, traces, token lengths, seed streams
    ("capsim.service",),  # service-time models
    ("capsim.load", "capsim.onnx_import"),  # reading spec files (+ ONNX graphs) + cross-checks
    ("capsim.analysis",),  # stats, metrics, cost, queueing theory
    ("capsim.sim",),  # engines, fleets, lifecycle, controllers
    ("capsim.evaluate",),  # one configuration
    ("capsim.planning",),  # static / autoscaled plans, what-if, parallel runs
    ("capsim.bench",),  # imported benchmark runs, their replay
    ("capsim.calibration",),  # fitting catalog entries from measurements
    ("capsim.report",),  # formatting and files
    ("capsim.cli",),  # click commands
    ("capsim",),  # the lazy public API
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names if n != "capsim"):
            return i
    assert module == "capsim", f"{module} is in no layer: add it to LAYERS"
    return len(LAYERS) - 1


def _target(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    """The capsim modules an import statement loads (a submodule where it names one)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")[: len(module.split(".")) - (0 if is_pkg else 1)]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for n in names:
        if n == "capsim" or n.startswith("capsim."):
            while n not in MODULES and "." in n:
                n = n.rsplit(".", 1)[0]
            out.append(n)
    return out


def _imports() -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, inside a function) for every capsim import."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))

        is_pkg = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool, module: str = module, is_pkg: bool = is_pkg):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    for t in _target(child, module, is_pkg):
                        found.append((module, t, child.lineno, in_function))
                nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                visit(child, nested)

        visit(tree, False)
    return found


IMPORTS = _imports()


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_function_level_imports_of_capsim_modules():
    bad = [f"{m} line {line}: imports {t}" for m, t, line, inner in IMPORTS if inner]
    assert not bad, "import capsim modules at module level:\n" + "\n".join(bad)


def test_layers_import_only_downward():
    bad = [
        f"{m} (layer {_layer(m)}) line {line}: imports {t} (layer {_layer(t)})"
        for m, t, line, _ in IMPORTS
        if _layer(t) > _layer(m)
    ]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return [*stack[stack.index(w) :], w]
            if w not in state and (found := dfs(w)):
                return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := dfs(v)):
            return found
    return None


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, t, _, _ in IMPORTS:
        if t != m:
            graph[m].add(t)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_the_line_limit():
    long = {
        m: n
        for m, p in MODULES.items()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
