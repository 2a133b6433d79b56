"""Every ``capsim ...`` command that README.md, docs/ and the commands' ``--help`` show runs.

Each block (a fenced code block, or one command's ``Example:`` lines) runs in order in a fresh
working directory, through click's CliRunner, and must exit 0 and print its key words; output
that a page shows after a ``$`` prompt must appear as shown (``...`` stands for anything).

The working directory holds what a reader has after cloning: ``scenarios/`` (the shipped ones),
``benchmarks/`` (with the real H200 measurements the calibration tutorial fits),
``my_catalog/`` (a copy of the shipped catalog, as the examples name it), and ``CAPSIM_CATALOG``
points at a private copy of the catalog, so a ``calibrate fit`` never touches the repository.

Fast overrides (the only differences from the commands as written), so the test fits in about
a minute and a half of CI on 2 cores:

- ``scenarios/*_autoscaled.yaml`` and ``scenarios/spot.yaml`` are copies with ``traffic.horizon_s: 1800`` and 2
  replications: ``capsim whatif`` and ``capsim plan`` run their day in real time, which takes
  minutes (benchmarks/README.md); every other scenario is the shipped file.
- A command that writes no file (plan, simulate, whatif, estimate, validate without ``--out``)
  and was already run with the same arguments in this session is not run again: its output
  is reused (the runs are seeded, so it would print the same).
- ``capsim calibrate run`` on the CPU is measured once per test session and its directory
  reused by later identical commands; its ``--budget-seconds`` is raised to at least 60 s,
  because a machine that reports a large last-level cache (480 MiB here) spends 20 s on the
  bandwidth buffers alone and would measure no GEMM to fit. A block that reads ``meas/``
  without writing it gets that directory, and one that names ``--gpu local-cpu`` without
  creating it gets the entry fitted from it, as the calibrate examples make them. These
  blocks are marked ``slow`` (about a minute together): ``-m "not slow"`` leaves them out.

What cannot run here is marked where it is shown (``<!-- ci: skip (REASON) -->`` in Markdown,
``HELP_SKIPS`` below for help text); ``test_skips_are_exactly_the_marked_ones`` lists them.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from capsim.cli import main
from tests import doc_commands
from tests.doc_commands import (
    ROOT,
    Block,
    Command,
    help_blocks,
    markdown_blocks,
    markdown_files,
    output_matches,
    parse_command,
)

HOOK = ROOT / "docs" / "_hooks" / "schema_reference.py"
VIDUR = (
    "rewrites a shipped catalog entry's calibration (tests/test_calibration.py runs it on a copy)"
)
HELP_SKIPS = {
    "capsim calibrate import-vidur": VIDUR,
    "capsim calibrate run --out h100/ --backend torch": "needs a CUDA GPU and torch",
    "capsim calibrate fit meas/ --gpu l4": "needs measurements taken on an L4",
    "capsim calibrate fit run1/ run2/ --gpu l4": "needs measurements taken on an L4",
    "capsim model import resnet50.onnx": "needs an ONNX file (none is shipped)",
    "capsim bench import mlperf_log_summary.txt --gpu h100-sxm --model llama-2-70b --tp 8": (
        "needs your own MLPerf LoadGen log"
    ),
    "capsim bench import results/*.json --gpu h100-sxm --model llama-3.1-8b --out runs/": (
        "needs your own serving-benchmark results"
    ),
}
# commands that only read the shipped files and print (run once per session, output reused)
PURE = ("plan", "simulate", "whatif", "estimate", "validate")
FAST_SCENARIOS = (
    "embedding_autoscaled.yaml",
    "chatbot_autoscaled.yaml",
    "spot.yaml",
    "chatbot_disagg_autoscaled.yaml",
)
CPU_RUN = (
    "capsim calibrate run --out meas/ --backend numpy --quick --precisions fp32 "
    "--budget-seconds 20 --threads 1"
)
CPU_BUDGET_S = 60.0
LOCAL_CPU_FIT = "capsim calibrate fit meas/ --new-gpu local-cpu --price 0.10 --power-w 65"

# key words of each command's output (the longest matching argv prefix wins)
KEY_WORDS: dict[tuple[str, ...], list[str]] = {
    ("plan",): ["capsim plan:", "Feasible configurations", "Recommendation"],
    ("simulate",): ["SLO:", "cost:"],
    ("whatif",): ["capsim whatif:", "baseline: ", "saving $ vs ", "attain"],
    ("sweep",): ["capsim sweep:", "variants", "recommendation"],
    ("estimate",): [" on ", "bound"],
    ("validate",): ["ok: "],
    ("schema",): ['"properties"'],
    ("catalog", "list"): ["h100-sxm", "l4"],
    ("catalog", "show"): [],  # the id, checked below
    ("catalog", "validate"): ["ok: "],
    ("calibrate", "run"): ["measurements.csv"],
    ("calibrate", "fit"): ["wrote "],
    ("bench", "import"): ["wrote "],
    ("backtest",): ["measured", "predicted", "median |error|"],
    ("calibrate", "fit-bench"): ["before", "after"],
    ("calibrate", "compare"): ["measured / roofline"],
}


def _help_skip(block: Block) -> Block:
    for cmd in block.commands:
        reason = next((r for p, r in HELP_SKIPS.items() if cmd.text.startswith(p)), None)
        if reason:
            object.__setattr__(cmd, "skip", reason)
    return block


def all_blocks() -> list[Block]:
    md = [b for f in markdown_files() for b in markdown_blocks(f)]
    return md + [_help_skip(b) for b in help_blocks(main)]


BLOCKS = all_blocks()


def _fast_copy(src: Path, dst: Path) -> None:
    data = yaml.safe_load(src.read_text())
    data["traffic"]["horizon_s"] = min(data["traffic"].get("horizon_s", 1800), 1800)
    sim = data.setdefault("simulation", {})
    sim["replications"] = sim["max_replications"] = 2
    if sim.get("compress_to_s"):
        sim["compress_to_s"] = min(sim["compress_to_s"], 300)
    if (data.get("whatif") or {}).get("replications"):
        data["whatif"]["replications"] = 2
    dst.write_text(yaml.safe_dump(data, sort_keys=False))


class Workspace:
    """A fresh directory for one block, with what a reader of the docs has at hand."""

    cache: dict[str, Path] = {}  # CPU measurement runs, by command text (one per session)
    outputs: dict[tuple[str, ...], str] = {}  # what commands that write no file printed

    def __init__(self, path: Path, cache_dir: Path) -> None:
        self.path, self.cache_dir = path, cache_dir
        scen = path / "scenarios"
        scen.mkdir()
        for item in (ROOT / "scenarios").iterdir():
            if item.name in FAST_SCENARIOS:
                _fast_copy(item, scen / item.name)
            else:
                (scen / item.name).symlink_to(item)
        (path / "benchmarks").symlink_to(ROOT / "benchmarks")  # real measurement runs
        shutil.copytree(ROOT / "hardware_catalog", path / "catalog")
        shutil.copytree(ROOT / "hardware_catalog", path / "my_catalog")
        self.env = {"CAPSIM_CATALOG": str(path / "catalog")}

    def invoke(self, cmd: Command) -> str:
        """Run ``cmd`` here; its output (asserting exit 0)."""
        if cmd.argv[:2] == ("calibrate", "run") and "numpy" in cmd.argv:
            return self._cached_run(cmd)
        pure = cmd.argv[0] in PURE and "--out" not in cmd.argv and not cmd.stdout_to
        if pure and cmd.argv in self.outputs:  # seeded: the same command prints the same
            return self.outputs[cmd.argv]
        result = CliRunner().invoke(main, list(cmd.argv), env=self.env)
        if pure and result.exit_code == 0:
            self.outputs[cmd.argv] = result.output
        assert result.exit_code == 0, (
            f"{cmd.source}: `{cmd.text}` exited {result.exit_code}\n{result.output}"
            f"{result.stderr if result.stderr_bytes else ''}"
        )
        if cmd.stdout_to:
            (self.path / cmd.stdout_to).write_text(result.stdout)
            return result.stderr if result.stderr_bytes else ""
        return result.output  # stdout and stderr

    def _cached_run(self, cmd: Command) -> str:
        out = cmd.argv[cmd.argv.index("--out") + 1]
        key = " ".join(a for a in cmd.argv if a != out)
        if key not in self.cache:
            argv = [*cmd.argv, "--no-progress"]
            if "--budget-seconds" in argv:  # at least CPU_BUDGET_S (see the module docstring)
                i = argv.index("--budget-seconds") + 1
                argv[i] = str(max(float(argv[i]), CPU_BUDGET_S))
            result = CliRunner().invoke(main, argv, env=self.env)
            assert result.exit_code == 0, f"{cmd.source}: `{cmd.text}`\n{result.output}"
            self.cache[key] = self.cache_dir / f"run{len(self.cache)}"
            shutil.copytree(self.path / out, self.cache[key])
        elif not (self.path / out).exists():
            shutil.copytree(self.cache[key], self.path / out)
        return str(self.path / out / "measurements.csv")

    def prepare(self, block: Block) -> None:
        """``meas/`` and the ``local-cpu`` entry, where a block uses them without making them."""
        runs = [c for c in block.commands if not c.skip]
        texts = " ".join(c.text for c in runs)
        if "meas/" in texts and not any(c.argv[:2] == ("calibrate", "run") for c in runs):
            self.invoke(parse(CPU_RUN))
        if "--gpu local-cpu" in texts and "--new-gpu local-cpu" not in texts:
            self.invoke(parse(LOCAL_CPU_FIT))


def parse(text: str) -> Command:
    return parse_command("(setup)", text)


def subcommand(argv: tuple[str, ...]) -> tuple[str, ...]:
    """``argv`` without the group's options (``--catalog DIR``)."""
    return argv[2:] if argv[:1] == ("--catalog",) else argv


def check_output(cmd: Command, out: str, where: Path) -> None:
    """The command's key words, its files, and the output its page shows."""
    argv = subcommand(cmd.argv)
    key = max((k for k in KEY_WORDS if argv[: len(k)] == k), key=len, default=None)
    assert key is not None, f"{cmd.source}: no key words for `{cmd.text}`; add them to KEY_WORDS"
    text = (where / cmd.stdout_to).read_text() if cmd.stdout_to else out
    if cmd.argv[:2] == ("calibrate", "run"):
        assert Path(out).is_file(), f"{cmd.source}: no {out}"
    for word in KEY_WORDS[key]:
        assert word in text, f"{cmd.source}: `{cmd.text}` printed no {word!r}:\n{text[:3000]}"
    if key == ("schema",):
        json.loads(text)
    if key == ("catalog", "show"):
        assert argv[2] in text
    if "--out" in argv:
        out_dir = where / argv[argv.index("--out") + 1]
        assert out_dir.is_dir() and any(out_dir.iterdir()), f"{cmd.source}: {out_dir} is empty"
    lines = out.splitlines()
    missing = [s for s in cmd.shown_output if s.strip() != "..." and not output_matches(s, lines)]
    assert not missing, f"{cmd.source}: shown but not printed:\n" + "\n".join(missing)


@pytest.fixture(scope="session")
def run_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calibrate-runs")


def _needs_cpu_measurement(block: Block) -> bool:
    return any("meas/" in c.text or "local-cpu" in c.text for c in block.commands if not c.skip)


PARAMS = [
    pytest.param(b, id=b.source, marks=[pytest.mark.slow] if _needs_cpu_measurement(b) else [])
    for b in BLOCKS
]


@pytest.mark.parametrize("block", PARAMS)
def test_shown_commands_run(
    block: Block, tmp_path: Path, run_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path, run_cache)
    ws.prepare(block)
    ran = 0
    for cmd in block.commands:
        if cmd.skip:
            print(f"skipped {cmd.source}: {cmd.text} ({cmd.skip})")
            continue
        check_output(cmd, ws.invoke(cmd), tmp_path)
        ran += 1
    if not ran:
        pytest.skip("; ".join(f"`{c.text}`: {c.skip}" for c in block.commands))


# What cannot run in CI, and why (a command shown twice is listed twice).
EXPECTED_SKIPS = [
    "README.md: capsim calibrate run --out meas/ --budget-seconds 900",
    "README.md: capsim calibrate fit meas/ --gpu l4",
    "README.md: capsim calibrate compare meas/ --gpu l4 --out compare/",
    "README.md: capsim calibrate import-vidur benchmarks/data/vidur_profiling/mlp_a100_Llama-2-7b-hf.csv --gpu a100-80gb-sxm",
    "docs/reference/model.md: capsim model import resnet50.onnx --out models/resnet50.yaml",
    "docs/tutorials/calibrate.md: capsim calibrate run --out h200/ --budget-seconds 420",
    "capsim calibrate --help: capsim calibrate import-vidur benchmarks/data/vidur_profiling/mlp_a100_Llama-2-7b-hf.csv --gpu a100-80gb-sxm",
    "docs/tutorials/calibrate.md: capsim calibrate run --out box/ --budget-seconds 420",
    "capsim bench --help: capsim bench import mlperf_log_summary.txt --gpu h100-sxm --model llama-2-70b --tp 8",
    "capsim bench import --help: capsim bench import results/*.json --gpu h100-sxm --model llama-3.1-8b --out runs/",
    "README.md: capsim plan scenarios/chatbot_autoscaled.yaml --executor dask://head-node:8786",
    "docs/tutorials/dask.md: capsim plan scenarios/chatbot_autoscaled.yaml --executor dask://head-node:8786",
    "docs/tutorials/dask.md: capsim whatif scenarios/embedding_autoscaled.yaml --executor dask://head-node:8786",
    "capsim calibrate fit --help: capsim calibrate fit meas/ --gpu l4",
    "capsim calibrate fit --help: capsim calibrate fit run1/ run2/ --gpu l4",
    "capsim calibrate import-vidur --help: capsim calibrate import-vidur benchmarks/data/vidur_profiling/mlp_a100_Llama-2-7b-hf.csv --gpu a100-80gb-sxm",
    "capsim calibrate import-vidur --help: capsim calibrate import-vidur benchmarks/data/vidur_profiling/mlp_h100_Llama-2-7b-hf.csv --gpu h100-sxm",
    "capsim calibrate run --help: capsim calibrate run --out h100/ --backend torch --precisions bf16,fp8,int8",
    "capsim model --help: capsim model import resnet50.onnx --dim batch=1 --out models/resnet50.yaml",
    "capsim model import --help: capsim model import resnet50.onnx --out models/resnet50.yaml",
]


def test_skips_are_exactly_the_marked_ones() -> None:
    skipped = [(c.source, c.text, c.skip) for b in BLOCKS for c in b.commands if c.skip]
    for source, text, reason in skipped:
        print(f"skipped {source}: {text}  ({reason})")
    got = [
        f"{s.split(':')[0] if s.endswith(tuple('0123456789')) else s}: {t}" for s, t, _ in skipped
    ]
    assert sorted(got) == sorted(EXPECTED_SKIPS)


def test_every_page_and_command_is_covered() -> None:
    """The extraction finds the commands (a broken parser would silently test nothing)."""
    sources = {c.source.split(":")[0] for b in BLOCKS for c in b.commands}
    assert "README.md" in sources
    helped = {b.source for b in BLOCKS}
    for name in ("plan", "simulate", "whatif", "estimate", "validate", "schema"):
        assert f"capsim {name} --help" in helped
    commands = [c for b in BLOCKS for c in b.commands]
    assert sum(not c.skip for c in commands) >= 25
    pages = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    for page in ("docs/tutorials/plan.md", "docs/tutorials/whatif.md", "docs/service-time.md"):
        assert page in pages and page in sources
    assert any(c.shown_output for c in commands)  # outputs shown after a `$` are checked


def test_extraction_examples() -> None:
    """The examples in the extractor's docstrings (how prompts, comments, `>` are read)."""
    result = doctest.testmod(doc_commands, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


def _hook():
    spec = importlib.util.spec_from_file_location("schema_reference", HOOK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["scenario", "catalog", "model"])
def test_generated_reference_has_every_object_and_field(kind: str) -> None:
    """The docs' reference pages (generated at build time) list everything the schema has."""
    hook = _hook()
    schema = hook.schema_of(kind)
    page = hook.on_page_markdown(f"# x\n\n<!-- capsim-schema: {kind} -->\n")
    for name, obj in [(schema.get("title", ""), schema), *schema.get("$defs", {}).items()]:
        assert f"### {name} {{#def-{name.lower()}}}" in page
        for field in obj.get("properties", {}):
            assert f"| `{field}` |" in page, (name, field)


def test_generated_commands_page_has_every_command() -> None:
    page = _hook().on_page_markdown("<!-- capsim-help -->")
    helped = {b.source.removesuffix(" --help") for b in BLOCKS if b.source.endswith("--help")}
    for name in helped | {"capsim calibrate fit", "capsim catalog show"}:
        assert f"## {name}\n" in page
