"""The ``capsim`` command line: thin click commands, each calling one library function.

Bad input exits with code 2 and one message naming the file, the field or row, what was wrong
and what is accepted; never a traceback.

Commands live one group per module (:mod:`capsim.cli.run`, :mod:`capsim.cli.inspect`,
:mod:`capsim.cli.catalog`, :mod:`capsim.cli.whatif`, :mod:`capsim.cli.calibrate`,
:mod:`capsim.cli.bench`, :mod:`capsim.cli.model`) and are
imported only when invoked, so ``capsim --help`` loads no scipy, pandas, matplotlib or SimPy.
"""

from __future__ import annotations

import importlib
import signal
from pathlib import Path

import click

# name -> (module, attribute, one-line help shown by ``capsim --help`` without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "plan": (
        "capsim.cli.run",
        "plan",
        "Find the cheapest configuration meeting the scenario's SLO, and why the others lost.",
    ),
    "simulate": (
        "capsim.cli.run",
        "simulate",
        "Simulate one configuration and print its full metrics.",
    ),
    "estimate": (
        "capsim.cli.inspect",
        "estimate",
        "Service time and memory fit of one model on one card: the roofline breakdown.",
    ),
    "validate": (
        "capsim.cli.inspect",
        "validate",
        "Check a scenario file (and the GPUs and model it names) without running it.",
    ),
    "schema": (
        "capsim.cli.inspect",
        "schema",
        "Print the JSON Schema of scenario, catalog-entry or model-card files (for editors).",
    ),
    "catalog": (
        "capsim.cli.catalog",
        "catalog",
        "List, show and validate hardware catalog entries.",
    ),
    "whatif": (
        "capsim.cli.whatif",
        "whatif",
        "Compare autoscaling policies on the same traffic, in real time.",
    ),
    "sweep": (
        "capsim.cli.sweep",
        "sweep",
        "Plan every variant of a scenario and draw the cost/latency Pareto frontier.",
    ),
    "bench": (
        "capsim.cli.bench",
        "bench_group",
        "Serving-benchmark results (vLLM, SGLang, GenAI-Perf/AIPerf, perf_analyzer, MLPerf).",
    ),
    "model": (
        "capsim.cli.model",
        "model_group",
        "Model cards: import an ONNX graph as a layered card.",
    ),
    "backtest": (
        "capsim.cli.backtest",
        "backtest",
        "Replay each RUN in capsim and print predicted vs measured with relative errors.",
    ),
    "calibrate": (
        "capsim.cli.calibrate",
        "calibrate_group",
        "Measure a machine, fit its catalog entry, import profiles, compare with the roofline.",
    ),
}


class LazyGroup(click.Group):
    """A click group whose commands are imported on first use (fast ``--help``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--catalog",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CAPSIM_CATALOG",
    help="Hardware catalog directory (default: the shipped catalog; env CAPSIM_CATALOG).",
)
@click.version_option(package_name="capsim")
@click.pass_context
def main(ctx: click.Context, catalog: Path | None) -> None:
    """capsim: the cheapest GPU fleet that meets a p99 latency target, found by simulation.

    \b
    Example:
      capsim plan scenarios/embedding.yaml
      capsim estimate --gpu t4 --model resnet-50 --precision int8 --batch 1 8 32
    """
    ctx.ensure_object(dict)
    ctx.obj["catalog"] = catalog
    _exit_cleanly_on_sigterm()


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (``kill``, a container stop) exits through Python like Ctrl-C, so half-written
    temporary files are removed (the atomic writers clean up on any exception)."""
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (capsim embedded in another program)
        pass


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
