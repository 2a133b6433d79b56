"""What the CLI's commands share: options, the user-error handler, catalog and progress.

Every command module (``run``, ``inspect``, ``catalog``, ``whatif``, ``calibrate``) takes these from
here, so a user error looks the same everywhere: one line on stderr, exit code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from capsim.cli.catalog_dirs import _writable_dir, _write_error
from capsim.errors import InputError
from capsim.load import load_catalog
from capsim.report.output import to_json
from capsim.service.fixed import Unsupported

FORMATS = click.Choice(["table", "json", "csv"])

jobs_option = click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Parallel processes.",
)
executor_option = click.option(
    "--executor",
    default="local",
    show_default=True,
    metavar="local|dask://HOST:PORT|dask-local:N",
    help="Where the simulations run: local processes (--jobs of them), a running Dask "
    "scheduler, or a Dask cluster of N workers started here (needs capsim[dask]).",
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
seed_option = click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=None,
    help="Random seed (overrides simulation.seed); the same seed gives the same output.",
)


def with_seed(s, seed: int | None):
    """The scenario with ``simulation.seed`` replaced by ``seed`` (unchanged when None).

    >>> from capsim.load import load_scenario
    >>> with_seed(load_scenario("scenarios/vision.yaml"), 7).simulation.seed
    7
    """
    if seed is None:
        return s
    return s.model_copy(update={"simulation": s.simulation.model_copy(update={"seed": seed})})


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit (2: bad input)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


#: library parameters whose command-line option is not ``--`` + the name with dashes
FLAGS = {"fmt": "--as", "price_usd_per_hour": "--price", "new_id": "--new-gpu", "dims": "--dim"}


def flag_of(param: str) -> str:
    """The option(s) that set a library parameter: ``"power_w"`` -> ``"--power-w"``.

    >>> flag_of("prompt/output"), flag_of("fmt")
    ('--prompt/--output', '--as')
    """
    return "/".join(FLAGS.get(p, "--" + p.replace("_", "-")) for p in param.split("/"))


def error_text(exc: Exception) -> str:
    """The one line shown for a user error: a parameter at fault is named by its option."""
    if isinstance(exc, InputError) and exc.param and not exc.where:
        return str(InputError(exc.message, file=exc.file, where=flag_of(exc.param)))
    return str(exc)


def handle_errors(fn):
    """Turn user-input errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (InputError, Unsupported) as exc:
            fail(error_text(exc))

    return wrapper


def check_out(out: Path | None) -> None:
    """Refuse an ``--out`` directory that could not be created (a file, or under one) before
    any work is done."""
    if out is not None:
        _writable_dir(out, "--out")


def write_out(write: Callable[[Path, Any], list[Path]], out: Path, result: Any) -> list[Path]:
    """``write(out, result)``; a directory or file the OS refuses is a user error naming it."""
    try:
        return write(out, result)
    except OSError as exc:
        raise _write_error(exc, out) from None


def catalog_of(ctx: click.Context):
    """The catalog the command runs against (``--catalog``, ``CAPSIM_CATALOG`` or shipped)."""
    return load_catalog(ctx.obj.get("catalog") if ctx.obj else None)


def progress_printer(quiet: bool):
    """Progress lines on stderr when it is a terminal, else None."""
    if quiet or not sys.stderr.isatty():
        return None
    return lambda msg: click.echo(f"  {msg}", err=True)


def emit(text: str) -> None:
    click.echo(text)


def show_result(
    result: Any,
    fmt: str,
    out: Path | None,
    *,
    as_dict: Callable[[Any], Any],
    as_text: Callable[[Any], str],
    as_frame: Callable[[Any], Any] | None = None,
    write: Callable[[Path, Any], list[Path]] | None = None,
) -> None:
    """Print ``result`` as JSON, CSV (``as_frame``: a DataFrame) or text, then write its files
    to ``out`` (naming them on stderr): the shape every run command ends with."""
    if fmt == "json":
        emit(to_json(as_dict(result)))
    elif fmt == "csv" and as_frame is not None:
        emit(as_frame(result).to_csv(index=False))
    else:
        emit(as_text(result))
    if out is not None and write is not None:
        paths = write_out(write, out, result)
        click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)


#: ``--prompts-cached``: whether a run began with its prompts in the server's prefix cache
prompts_cached_option = click.option(
    "--prompts-cached",
    type=click.Choice(["auto", "no", "yes"]),
    default="auto",
    show_default=True,
    help="Did the server already hold the runs' prompts in its prefix cache? auto: a run that "
    "repeats an earlier run's prompts (same settings, dataset, prompt length per request; "
    "a sweep with one seed) did; yes: every run; no: none.",
)
