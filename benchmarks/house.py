"""The house table: module sizes, function lengths, import cycles and start-up time.

Run from the repository root: ``python benchmarks/house.py``. Sizes and cycles are read from the
source with :mod:`ast` (the rules themselves are enforced by ``tests/test_architecture.py``);
the start-up times are the best of 7 runs of ``capsim --help`` and ``python -c "import capsim"``
in fresh processes, wall and CPU (user + system of the child), so a busy machine shows up as a
wall time well above the CPU time; mypy's error count is ``mypy capsim`` with the project's
configuration (pyproject.toml: the pydantic plugin).
"""

from __future__ import annotations

import ast
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_architecture import IMPORTS, MODULES, _cycle  # noqa: E402


def sizes() -> tuple[list[int], list[int]]:
    """Lines per module and lines per function (every def, methods included)."""
    modules, functions = [], []
    for path in MODULES.values():
        text = path.read_text(encoding="utf-8")
        modules.append(len(text.splitlines()))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append(node.end_lineno - node.lineno + 1)
    return modules, functions


def best_run(cmd: list[str], runs: int = 7) -> tuple[float, float]:
    """Best wall and best CPU seconds of ``cmd`` over ``runs`` fresh processes."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return min(walls), min(cpus)


def mypy_errors() -> str:
    """``mypy capsim``'s error count (0 when it reports success), or why it did not run."""
    try:
        res = subprocess.run(
            [sys.executable, "-m", "mypy", "capsim"], capture_output=True, text=True, cwd=ROOT
        )
    except OSError as exc:
        return f"not run ({exc})"
    last = (res.stdout.strip().splitlines() or ["?"])[-1]
    if last.startswith("Success"):
        return "0"
    return last.split()[1] if last.startswith("Found") else f"not run ({last})"


def main() -> None:
    modules, functions = sizes()
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, t, _, _ in IMPORTS:
        if t != m:
            graph[m].add(t)
    inner = sum(1 for *_, in_function in IMPORTS if in_function)
    p90 = statistics.quantiles(functions, n=10)[8]
    exe = shutil.which("capsim") or "capsim"
    help_wall, help_cpu = best_run([exe, "--help"])
    imp_wall, imp_cpu = best_run([sys.executable, "-c", "import capsim"])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"modules: {len(modules)}, lines: {sum(modules)}, largest: {max(modules)}, median: "
          f"{statistics.median(modules):.0f}, p90: {statistics.quantiles(modules, n=10)[8]:.0f}, "
          f"over 500 lines: {sum(n > 500 for n in modules)}")  # fmt: skip
    print(f"functions: {len(functions)}, p50 {statistics.median(functions):.0f}, p90 {p90:.0f}, "
          f"max {max(functions)} lines")  # fmt: skip
    print(f"import cycles: {0 if _cycle(graph) is None else 'yes: ' + ' -> '.join(_cycle(graph))}; "
          f"function-level imports of capsim modules: {inner}")  # fmt: skip
    print(f"capsim --help: {help_wall:.3f} s wall, {help_cpu:.3f} s CPU (best of 7)")
    print(f"import capsim: {imp_wall:.3f} s wall, {imp_cpu:.3f} s CPU (best of 7)")
    print(f"mypy errors (capsim/, pydantic plugin): {mypy_errors()}")


if __name__ == "__main__":
    main()
