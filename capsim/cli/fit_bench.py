"""``capsim calibrate fit-bench``: fit a catalog entry to imported serving runs."""

from __future__ import annotations

from pathlib import Path

import click

from capsim.bench import apply_settings
from capsim.bench.repeats import mark_repeats
from capsim.bench.runs import load_runs
from capsim.calibration.bench_fit import fit_bench
from capsim.calibration.bench_writer import write_bench_fit
from capsim.cli.catalog_dirs import _catalog_dir, _entry_path, _writable_dir, _write_error
from capsim.cli.options import handle_errors
from capsim.load import load_catalog
from capsim.report.bench_fit import provenance as bench_provenance
from capsim.report.bench_fit import report_lines as bench_report
from capsim.report.bench_fit import summary as bench_summary
from capsim.report.output import to_json
from capsim.spec.catalog import GPU


def _with_source(gpu: GPU, provenance: str) -> GPU:
    """``gpu`` with its ``calibration.serving`` (if any) pointing at this fit's provenance."""
    cal = gpu.calibration
    if cal is None or cal.serving is None:
        return gpu
    src = f"{provenance.split(':', 1)[0]}: see sources.bench_fit of {gpu.id}.yaml"
    serving = cal.serving.model_copy(update={"source": src})
    return gpu.model_copy(update={"calibration": cal.model_copy(update={"serving": serving})})


@click.command("fit-bench")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--gpu", "gpu_id", required=True, help="Catalog entry to fit (the runs' GPU).")
@click.option(
    "--holdout",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A run (file or directory) kept out of the fit and reported separately (repeatable).",
)
@click.option("--replications", type=click.IntRange(2, 10), default=2, show_default=True)
@click.option("--max-evaluations", type=click.IntRange(10), default=200, show_default=True)
@click.option(
    "--catalog-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Catalog directory to write to (default: capsim --catalog, else the shipped one).",
)
@click.option(
    "--loss",
    type=click.Choice(["auto", "squared", "absolute"]),
    default="auto",
    show_default=True,
    help="Log error to minimise: squared, absolute (robust to a value the model cannot "
    "follow), or auto: absolute when any run is a served run, squared for engine steps only.",
)
@click.option("--dry-run", is_flag=True, help="Fit and report; write nothing.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_context
@handle_errors
def fit_bench_cmd(
    ctx, runs, gpu_id, holdout, replications, max_evaluations, loss, catalog_dir, dry_run, fmt
):
    """Fit an entry's engine-level coefficients to imported serving runs.

    Fits the compute and bandwidth efficiency scales (on a calibrated entry: over its
    measurements), the per-kernel launch cost, the per-iteration CPU overhead, a per-request
    front-end latency and (when a run has tp > 1) the collective latency to minimise the error
    of `capsim backtest` over
    RUN... (files written by `capsim bench import --out`, or directories of them). Reports the
    untouched entry's error beside the fitted one's, and --holdout runs separately. Writes the
    entry atomically, keeping <entry>.yaml.bak, with the runs, dates and engine in
    sources.bench_fit.

    \b
    Example:
      capsim bench import benchmarks/gpu_runs/h200-2026-12-04-run2/iterations/fit.csv --gpu h200-sxm --out fit/
      capsim bench import benchmarks/gpu_runs/h200-2026-12-04-run2/iterations/holdout.csv --gpu h200-sxm --out held/
      capsim calibrate fit-bench fit/ --holdout held/ --gpu h200-sxm
    """

    def gpu_filled(paths):  # a run that names no GPU was measured on the entry's
        loaded = load_runs(paths, {})
        return [r if r.settings.gpu else apply_settings(r, {"gpu": gpu_id}) for r in loaded]

    fit_runs = gpu_filled(runs)
    hold_runs = gpu_filled(holdout) if holdout else []
    marked = mark_repeats(fit_runs + hold_runs)  # a held-out run may repeat a fitted one's prompts
    fit_runs, hold_runs = marked[: len(fit_runs)], marked[len(fit_runs) :]
    cat_dir = _writable_dir(_catalog_dir(ctx, catalog_dir), "--catalog-dir")
    path = _entry_path(cat_dir, gpu_id)
    catalog = load_catalog(cat_dir)
    fit = fit_bench(
        fit_runs, hold_runs, catalog, gpu_id,
        replications=replications, max_evaluations=max_evaluations, loss=loss,
    )  # fmt: skip
    written = []
    if not dry_run:
        try:
            prov = bench_provenance(fit, fit_runs, hold_runs)
            _, others = write_bench_fit(path, _with_source(fit.gpu_after, prov), prov)
            written = [str(path), *map(str, others)]
        except OSError as exc:
            raise _write_error(exc, cat_dir) from None
    if fmt == "json":
        click.echo(to_json({**bench_summary(fit), "written": written}), nl=False)
    else:
        click.echo("\n".join(bench_report(fit)))
    if written:
        click.echo(f"wrote {', '.join(written)}", err=True)
