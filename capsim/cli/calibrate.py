"""``capsim calibrate``: run the harness, fit a catalog entry, import Vidur profiles, compare.

This is the only place where capsim calls into ``calibrate/`` (its ``run`` and
``load_measurements``), and only inside the commands: capsim itself never imports the harness.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from capsim.calibration.fit import fit_measurements
from capsim.calibration.rows import Holdout, combine_runs
from capsim.calibration.vidur import import_vidur
from capsim.calibration.writer import write_calibration, write_new_entry
from capsim.cli.catalog_dirs import _catalog_dir, _entry_path, _writable_dir, _write_error
from capsim.cli.fit_bench import fit_bench_cmd
from capsim.cli.options import fail, handle_errors
from capsim.errors import InputError
from capsim.load import load_catalog, load_gpu_file
from capsim.report.calibration import (
    format_compare,
    measurement_frame,
    plot_roofline,
    table_frame,
)
from capsim.report.output import to_json, write_csv, write_figure
from capsim.spec.catalog import GPU
from capsim.spec.precision import HARNESS_FORMATS

_PRECISIONS = ("fp64", *HARNESS_FORMATS)  # the harness also measures fp64 GEMMs


def _entry_id_pattern() -> str:
    for m in GPU.model_fields["id"].metadata:
        if getattr(m, "pattern", None):
            return str(m.pattern)
    return r"^[a-z0-9][a-z0-9._-]*$"  # pragma: no cover - the catalog always has one


def _check_new_id(new_id: str) -> None:
    if not re.fullmatch(_entry_id_pattern(), new_id):
        raise InputError(
            f"{new_id!r} is not a valid entry id: use lower-case letters, digits, '.', '_' and "
            "'-', starting with a letter or digit, e.g. local-cpu (the entry is written to "
            "<catalog>/<id>.yaml)",
            where="--new-gpu",
        )


def _load(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The measurements directory, validated by the harness's strict loader (exit 2 if bad)."""
    from calibrate import MeasurementsError, load_measurements

    try:
        return load_measurements(directory)
    except MeasurementsError as exc:
        raise InputError(f"invalid measurements: {exc}") from None


@click.group("calibrate")
def calibrate_group() -> None:
    """Measure a machine, fit its catalog entry, import profiles, compare with the roofline.

    \b
    Example:
      capsim calibrate run --out meas/ --backend numpy --quick --precisions fp32 --budget-seconds 20 --threads 1
      capsim calibrate fit meas/ --new-gpu local-cpu --price 0.10 --power-w 65 --catalog-dir my_catalog/
      capsim calibrate import-vidur benchmarks/data/vidur_profiling/mlp_a100_Llama-2-7b-hf.csv --gpu a100-80gb-sxm
      capsim calibrate compare --gpu a100-80gb-sxm --out compare/
    """


# --------------------------------------------------------------------------- run
@calibrate_group.command("run")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory to create.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "numpy", "torch", "cupy"]),
    default="auto",
    show_default=True,
    help="auto: torch on CUDA, else cupy on CUDA, else numpy on the CPU.",
)
@click.option("--device", default=None, help="cpu, cuda or cuda:N.")
@click.option(
    "--budget-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Bound on the whole run (default 900, or 30 with --quick).",
)
@click.option(
    "--precisions",
    multiple=True,
    help="GEMM precisions (repeat or comma-separate): " + " ".join(_PRECISIONS),
)
@click.option("--quick", is_flag=True, help="A tiny sweep (CI, smoke tests).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--no-progress", is_flag=True, help="No progress lines on stderr.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Pin BLAS/OpenMP to N threads (OPENBLAS/OMP/MKL_NUM_THREADS; the harness then runs in "
    "a fresh `python -m calibrate` process, as the variables only act before NumPy loads). "
    "1 gives the steadiest CPU measurements on a shared machine.",
)
@handle_errors
def run_cmd(
    out, backend, device, budget_seconds, precisions, quick, overwrite, seed, no_progress, threads
):
    """Measure this machine's kernels (the calibrate/ harness) into a measurements directory.

    Same options as `python -m calibrate run`; the directory is written atomically. Exit code
    130 when Ctrl-C ended the run (what was measured is still written).

    \b
    Example:
      capsim calibrate run --out meas/ --backend numpy --quick --precisions fp32 --budget-seconds 20 --threads 1
      capsim calibrate run --out h100/ --backend torch --precisions bf16,fp8,int8
    """
    from calibrate import CalibrationError, run
    from calibrate.progress import StderrProgress
    from calibrate.runner import was_interrupted

    if threads is not None:
        args = ["--out", str(out), "--backend", backend, "--seed", str(seed)]
        args += ["--threads", str(threads)]
        args += ["--device", device] if device else []
        args += ["--budget-seconds", repr(budget_seconds)] if budget_seconds else []
        args += ["--precisions", *precisions] if precisions else []
        args += [f for f, on in (("--quick", quick), ("--overwrite", overwrite), ("--no-progress", no_progress)) if on]  # fmt: skip
        sys.exit(_harness_subprocess(args, threads))
    try:
        path = run(
            out,
            backend=backend,
            device=device,
            budget_seconds=budget_seconds,
            quick=quick,
            precisions=list(precisions) or None,
            progress=None if no_progress else StderrProgress(),
            overwrite=overwrite,
            seed=seed,
        )
    except CalibrationError as exc:
        raise InputError(str(exc), where="calibrate run") from None
    except KeyboardInterrupt:
        fail("interrupted", 130)
    click.echo(str(path))
    if was_interrupted(path):
        click.echo(f"interrupted: wrote what was measured to {path}", err=True)
        sys.exit(130)


def _harness_subprocess(args: list[str], threads: int) -> int:
    """``python -m calibrate run ARGS`` with the thread variables set; its output passed on."""
    import calibrate
    from calibrate.threads import THREAD_VARS

    env = {**os.environ, **{v: str(threads) for v in THREAD_VARS}}
    root = str(Path(calibrate.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "calibrate", "run", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:  # progress, live
            click.echo(line.rstrip("\n").replace("calibrate: error: ", "error: "), err=True)
        out = proc.stdout.read()
        rc = proc.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C: let it write and finish
        rc = proc.wait()
        out = proc.stdout.read() if proc.stdout else ""
    if out:
        click.echo(out, nl=False)
    return rc


# --------------------------------------------------------------------------- fit
def _power(text: str | None) -> tuple[float, float | None] | None:
    if text is None:
        return None
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise InputError(f"expected MAX[,IDLE] in watts, got {text!r}", where="--power-w") from None
    if not 1 <= len(parts) <= 2 or any(p <= 0 for p in parts) or (len(parts) == 2 and parts[1] > parts[0]):  # fmt: skip
        raise InputError(
            f"expected MAX[,IDLE] in watts, positive, IDLE <= MAX, got {text!r}", where="--power-w"
        )
    return parts[0], parts[1] if len(parts) == 2 else None


@calibrate_group.command("fit")
@click.argument("directories", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--gpu", "gpu_id", help="Calibrate this existing catalog entry.")
@click.option("--new-gpu", "new_id", help="Create an entry with this id from the measured peaks.")
@click.option(
    "--holdout",
    multiple=True,
    help="Keep rows out of the fit and report their error: KIND[:key=value,...], e.g. "
    "gemm:n=2752,k=1024 (repeatable). Composite rows (forward_block, forward_resnet50) are "
    "never fitted and always reported.",
)
@click.option("--price", type=click.FloatRange(min=0, min_open=True), help="USD per device-hour (--new-gpu).")  # fmt: skip
@click.option("--power-w", "power_w", help="MAX[,IDLE] board power in W when not measured (--new-gpu).")  # fmt: skip
@click.option(
    "--catalog-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Catalog directory to write to (default: capsim --catalog, else the shipped one).",
)
@click.option("--dry-run", is_flag=True, help="Fit and report; write nothing.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_context
@handle_errors
def fit_cmd(ctx, directories, gpu_id, new_id, holdout, price, power_w, catalog_dir, dry_run, fmt):
    """Fit efficiency curves and measured tables into a catalog entry's calibration sidecar.

    Reports the fit's error on measurements it did not use. The calibration is written to
    <entry>.calibration.yaml beside the entry (the previous one kept as .bak); writes are
    atomic, and a bad measurements directory changes nothing.
    Several directories (repeated runs on one machine) are combined point by point, keeping
    the fastest median (on a shared machine the slower runs are the disturbed ones).

    \b
    Example:
      capsim calibrate fit meas/ --gpu l4
      capsim calibrate fit run1/ run2/ --gpu l4
      capsim calibrate fit meas/ --new-gpu local-cpu --price 0.10 --power-w 65 --holdout gemm:n=2752
    """
    from calibrate.schema import KINDS

    if (gpu_id is None) == (new_id is None):
        raise InputError("give exactly one of --gpu ID (existing entry) or --new-gpu ID")
    if new_id is not None:
        _check_new_id(new_id)
    specs = [Holdout.parse(h, KINDS) for h in holdout]
    power = _power(power_w)
    if gpu_id is not None and (price is not None or power is not None):
        raise InputError("--price and --power-w apply to --new-gpu only")
    runs = [_load(d) for d in directories]
    meta, rows = combine_runs(runs, [str(d) for d in directories])
    data = " + ".join(str(d) for d in directories)
    cat_dir = _writable_dir(_catalog_dir(ctx, catalog_dir), "--catalog-dir")
    gpu = None
    path = None
    if gpu_id is not None:
        path = _entry_path(cat_dir, gpu_id, " (or create one with --new-gpu)")
        gpu = load_gpu_file(path)
        kind = (meta.get("device") or {}).get("kind")
        if kind == "cpu" and gpu.vendor != "cpu":
            raise InputError(
                f"these measurements are from a CPU ({(meta.get('device') or {}).get('name')}), "
                f"not from {gpu.name}; use --new-gpu to make a CPU entry",
                where="--gpu",
            )
        if kind == "cuda" and gpu.vendor == "cpu":
            raise InputError(
                f"these measurements are from a GPU ({(meta.get('device') or {}).get('name')}), "
                f"not from the CPU entry {gpu.id}; use --gpu with that card's entry, or --new-gpu",
                where="--gpu",
            )
    elif (cat_dir / f"{new_id}.yaml").exists():
        raise InputError(
            f"{cat_dir / (new_id + '.yaml')} exists: use --gpu {new_id} to recalibrate it",
            where="--new-gpu",
        )
    result = fit_measurements(
        meta, rows, data=data, gpu=gpu, new_id=new_id, holdout=specs,
        price_usd_per_hour=price, power_w=power,
    )  # fmt: skip
    written = []
    if not dry_run:
        try:
            if path is not None:
                _, side, backup = write_calibration(path, result.calibration)
                written = [str(side)] + ([str(backup)] if backup else [])
            else:
                written = [str(p) for p in write_new_entry(cat_dir, result.gpu)]
        except OSError as exc:
            raise _write_error(exc, cat_dir) from None
    if fmt == "json":
        data = {
            "gpu": result.gpu.id,
            "written": written,
            "calibration": result.calibration.model_dump(mode="json", exclude={"tables"}),
            "predictions": result.predictions,
            "notes": result.notes,
        }
        click.echo(to_json(data), nl=False)
    else:
        click.echo(result.to_text())
    if written:
        click.echo(f"wrote {', '.join(written)}", err=True)


# --------------------------------------------------------------------------- import-vidur
@calibrate_group.command("import-vidur")
@click.argument("csv_path", type=click.Path(path_type=Path))
@click.option("--gpu", "gpu_id", required=True, help="Catalog entry to calibrate, e.g. a100-80gb-sxm.")  # fmt: skip
@click.option(
    "--card",
    default=None,
    help="Vidur's name of the card (a100, h100); default: from the file name.",
)
@click.option(
    "--commit", default="7d47513", show_default=True, help="microsoft/vidur commit of the data."
)
@click.option(
    "--tolerance",
    type=float,
    default=0.05,
    show_default=True,
    help="Keep the table points needed to reproduce every measured point within this.",
)
@click.option(
    "--catalog-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Catalog directory (default: capsim --catalog, else the shipped one).",
)
@click.option("--dry-run", is_flag=True, help="Import and report; write nothing.")
@click.option(
    "--force",
    is_flag=True,
    help="Import even when the file name (or --card) names another card than --gpu, e.g. "
    "mlp_a100_... into h100-sxm. A profile faster than the card's spec peak is refused anyway.",
)
@click.pass_context
@handle_errors
def import_vidur_cmd(ctx, csv_path, gpu_id, card, commit, tolerance, catalog_dir, dry_run, force):
    """Import a Vidur operator profile (mlp.csv) as a catalog entry's calibration.

    Maps Vidur's Llama-2-7B operators onto capsim's (attn_pre_proj -> qkv_proj, attn_post_proj ->
    o_proj, mlp_up_proj -> mlp_up, mlp_down_proj -> mlp_down, mlp_act, emb -> embed, attn_rope ->
    rope, layernorms + add -> norm), with attribution (Vidur, Microsoft, MIT licence).
    Refused when the file name names another card than --gpu (unless --force), or when the
    profile's GEMMs beat the card's fp16 spec peak (the wrong --gpu).

    \b
    Example:
      capsim calibrate import-vidur benchmarks/data/vidur_profiling/mlp_a100_Llama-2-7b-hf.csv --gpu a100-80gb-sxm
      capsim calibrate import-vidur benchmarks/data/vidur_profiling/mlp_h100_Llama-2-7b-hf.csv --gpu h100-sxm
    """
    path = _entry_path(_writable_dir(_catalog_dir(ctx, catalog_dir), "--catalog-dir"), gpu_id)
    result = import_vidur(
        csv_path, load_gpu_file(path), card=card, commit=commit, tolerance=tolerance, force=force
    )
    cal = result.calibration
    click.echo(f"{gpu_id}: {cal.summary()}")
    for n in result.notes:
        click.echo(f"  {n}")
    for e in cal.provenance.fit_errors:
        click.echo(
            f"  {e.held_out}: {e.points} points, median {e.median_abs_error:.1%}, worst "
            f"{e.worst_error:+.1%} ({e.worst_point})"
        )
    if not dry_run:
        try:
            _, side, backup = write_calibration(path, cal)
        except OSError as exc:
            raise _write_error(exc, path) from None
        click.echo(f"wrote {side}" + (f" (previous file: {backup})" if backup else ""), err=True)


# --------------------------------------------------------------------------- compare
@calibrate_group.command("compare")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option("--gpu", "gpu_id", help="Catalog entry: its spec roofline (and stored tables).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write compare.csv and roofline.png here.",  # fmt: skip
)
@click.option("--all", "all_rows", is_flag=True, help="Every stored point in the table.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,  # fmt: skip
)
@click.pass_context
@handle_errors
def compare_cmd(ctx, directory, gpu_id, out, all_rows, fmt):
    """Measured times against the spec-sheet roofline: a table and a roofline plot.

    DIR: a measurements directory (with --gpu: against that entry's spec roofline and, if it
    is calibrated, its predictions). --gpu alone: the entry's stored calibration tables.

    \b
    Example:
      capsim calibrate compare --gpu a100-80gb-sxm --out compare/
      capsim calibrate compare meas/ --gpu local-cpu
    """
    if directory is None and gpu_id is None:
        raise InputError("give a measurements DIRECTORY, --gpu ID, or both")
    if out is not None:
        _writable_dir(out, "--out")
    gpu = None
    if gpu_id is not None:
        cat = load_catalog(_catalog_dir(ctx, None))
        if gpu_id not in cat.gpus:
            raise InputError(
                f"unknown GPU '{gpu_id}'; the catalog has: {', '.join(cat)}", where="--gpu"
            )
        gpu = cat[gpu_id]
    if directory is not None:
        meta, rows = _load(directory)
        frame = measurement_frame(rows, gpu)
        dev = (meta.get("device") or {}).get("name")
        title = f"{directory} ({dev}) vs " + (f"{gpu.id} spec roofline" if gpu else "no roofline (give --gpu)")  # fmt: skip
        thin = False
        plot_title = f"{dev}: measured" + (f" vs {gpu.id} spec roofline" if gpu else "")
    else:
        assert gpu is not None
        if gpu.calibration is None:
            raise InputError(
                f"{gpu.id} has no calibration: give a measurements directory, or run "
                "capsim calibrate fit / import-vidur first",
                where="--gpu",
            )
        frame = table_frame(gpu)
        title = f"{gpu.id}: stored calibration tables vs spec roofline ({gpu.calibration.provenance.source})"  # fmt: skip
        thin = not all_rows
        plot_title = f"{gpu.id}: calibration tables vs spec roofline"
    if fmt == "json":
        click.echo(frame.to_json(orient="records", indent=2))
    elif fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    else:
        click.echo(format_compare(frame, title, thin=thin))
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            paths = [
                write_csv(out / "compare.csv", frame),
                write_figure(
                    out / "roofline.png",
                    lambda ax: plot_roofline(ax, frame, gpu, title=plot_title),
                    size=(8, 5.5),
                ),
            ]
        except OSError as exc:
            raise _write_error(exc, out) from None
        click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)


calibrate_group.add_command(fit_bench_cmd)
