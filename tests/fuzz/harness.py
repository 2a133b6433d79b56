"""What the fuzz tests share: mutation strategies, a per-example time limit, outcome checks.

Every outcome of a command on fuzzed input must be success, or exit code 2 with one
``error:`` line that names the file (and field or row) — never a traceback (exit 1 or an
exception), a hang (the per-example time limit) or a non-finite number in the output.

With ``CAPSIM_FUZZ_LOG=path`` set, findings are appended to that file as JSON lines instead of
failing the test (the long run collects them all; see benchmarks/README.md).
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from capsim.cli import main

NONFINITE = re.compile(r"(?<![\w.])[-+]?(nan|inf|infinity)(?![\w])", re.IGNORECASE)
TIME_LIMIT_S = float(os.environ.get("CAPSIM_FUZZ_TIME_LIMIT_S", "30"))


def fuzz_settings(examples: int, *, long: bool) -> settings:
    """Hypothesis settings: derandomized (reproducible) for CI, random for the long run."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=not long,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )


class Hang(Exception):
    """Raised by the per-example time limit."""


@contextmanager
def time_limit(seconds: float = TIME_LIMIT_S) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread after ``seconds`` (SIGALRM)."""

    def _raise(_sig, _frame):
        raise Hang(f"no answer within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- mutations
SPECIAL = [
    None, True, False, 0, -1, 1, 2**63, -(2**63) - 1, 10**30, 0.0, -0.0, 1e-308, 1e308,
    float("nan"), float("inf"), float("-inf"), "", " ", "0", "1e3", "-5", "nan", "inf", "null",
    "yes", "../../etc/passwd", "/etc/passwd", "x" * 300, "2023-11-16T18:15:46Z", "9999-01-01",
    [], {}, [1, 2], {"kind": "x"},
]  # fmt: skip

leaf = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.lists(st.integers(-5, 5), max_size=3),
).map(copy.deepcopy)  # SPECIAL's [] and {} are shared: a later edit must not change them


def _slots(tree: Any, parent: Any = None, key: Any = None) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) in a YAML/JSON tree, the root's container being None."""
    yield parent, key
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _slots(v, tree, k)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _slots(v, tree, i)


@st.composite
def mutated_tree(draw, base: Any, max_edits: int = 3) -> Any:
    """``base`` with 1..max_edits edits: replace, delete, scale a number, add a key, nest."""
    tree = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_edits))):
        slots = [s for s in _slots(tree) if s[0] is not None]
        if not slots:
            return draw(leaf)
        parent, key = draw(st.sampled_from(slots))
        value = parent[key]
        op = draw(st.sampled_from(["replace", "replace", "delete", "scale", "add", "nest"]))
        if op == "delete":
            del parent[key]
        elif op == "scale" and isinstance(value, int | float) and not isinstance(value, bool):
            factor = draw(st.sampled_from([-1, 0, 1e-9, 0.5, 2, 1e6, 1e300]))
            parent[key] = value * factor
        elif op == "add" and isinstance(value, dict):
            value[draw(st.sampled_from(["zz_unknown", "kind", "name", "file", "path"]))] = draw(
                leaf
            )
        elif op == "nest":
            parent[key] = [value] if draw(st.booleans()) else {"kind": value}
        else:
            parent[key] = draw(leaf)
    return tree


def dump_yaml(data: Any) -> str:
    import yaml

    try:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return "{unrepresentable: 1}\n"


@st.composite
def text_damage(draw, text: str) -> str:
    """Raw-text damage: truncation, a duplicated line, an inserted character."""
    op = draw(st.sampled_from(["none", "none", "none", "truncate", "dup_line", "insert"]))
    if op == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    lines = text.splitlines(keepends=True)
    if op == "dup_line" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        return "".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :])
    if op == "insert":
        i = draw(st.integers(0, len(text)))
        return (
            text[:i]
            + draw(st.sampled_from([":", "\t", "[", "{", "\x00", "é", "&a", "*a"]))
            + text[i:]
        )
    return text


# --------------------------------------------------------------------------- outcomes
def invoke(args: list[str]) -> Result:
    """``capsim ARGS`` in-process under the per-example time limit."""
    runner = CliRunner()
    with time_limit():
        return runner.invoke(main, args, catch_exceptions=True)


def problem(res: Result, names: list[str], sample: str = "") -> str | None:
    """What is wrong with this outcome (None: success, or exit 2 naming one of ``names``).

    A "nan"/"inf" in the output that the input holds as a string (a device named "nan") is
    echoed text, not a number.
    """
    if isinstance(res.exception, Hang):
        return f"hang: {res.exception}"
    if res.exit_code == 0:
        for m in NONFINITE.finditer(res.output):
            if "UNSTABLE" in res.output or f'"{m.group(0)}"' in sample:
                continue
            return f"non-finite number in output: ...{res.output[max(0, m.start() - 80) : m.end() + 20]!r}"
        return None
    if res.exit_code == 2:
        out = res.output.strip()
        if "Traceback" in out:
            return f"traceback with exit 2: {out[-300:]!r}"
        if not any(n in out for n in names):
            return f"exit 2 without naming {names}: {out[-300:]!r}"
        return None
    exc = res.exception
    kind = type(exc).__name__ if exc is not None and not isinstance(exc, SystemExit) else "exit"
    return f"exit {res.exit_code} ({kind}: {str(exc)[:200]!r}): {res.output.strip()[-200:]!r}"


def report(target: str, args: list[str], res: Result, names: list[str], sample: str = "") -> None:
    """Fail (or, with CAPSIM_FUZZ_LOG, log) a bad outcome."""
    why = problem(res, names, sample)
    log = os.environ.get("CAPSIM_FUZZ_LOG")
    if log:
        with open(log + ".count", "a") as f:
            f.write(f"{target}\n")
    if why is None:
        return
    if log:
        with open(log, "a") as f:
            rec = {"target": target, "args": args[:2], "problem": why, "input": sample[:2000]}
            f.write(json.dumps(rec, default=str) + "\n")
        return
    pytest.fail(f"{target}: capsim {' '.join(args)} -> {why}\ninput:\n{sample[:3000]}")


def finite_json(text: str) -> bool:
    """True when ``text`` parses as JSON without NaN or Infinity."""

    def _bad(_c):
        raise ValueError("non-finite")

    try:
        json.loads(text, parse_constant=_bad)
    except ValueError:
        return False
    return True
