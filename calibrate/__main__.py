"""Command line: ``python -m calibrate run --out DIR`` and ``python -m calibrate check DIR``."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .backends import BACKENDS
from .errors import CalibrationError
from .measurements import MeasurementsError, load_measurements
from .progress import StderrProgress
from .schema import PRECISIONS

EXAMPLES = """examples:
  python -m calibrate run --out measurements/l4 --budget-seconds 600
  python -m calibrate run --out /tmp/ci --backend numpy --quick --budget-seconds 20 --threads 1
  python -m calibrate run --out h100 --backend torch --device cuda --precisions bf16 fp8 int8
  python -m calibrate check measurements/l4
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits with 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _threads(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)


def _llm_shape(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 7 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(
            "give 7 positive integers layers,hidden,heads,kv_heads,head_dim,ffn,vocab, "
            f"not {text!r}"
        )
    return [int(p) for p in parts]


def _device(text: str) -> str:
    base, _, index = text.partition(":")
    if base == "cpu" and not index or base == "cuda" and (not index or index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"use cpu, cuda or cuda:N, not {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The ``calibrate`` argument parser."""
    parser = _Parser(
        prog="python -m calibrate",
        description="Measure kernels on this machine for capsim's hardware catalog.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"calibrate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser(
        "run",
        help="measure and write a measurements directory",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--out", required=True, help="directory to create (written atomically)")
    r.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: torch on CUDA, else cupy on CUDA, else numpy on the CPU",
    )
    r.add_argument("--device", type=_device, default=None, help="cpu, cuda or cuda:N")
    r.add_argument(
        "--budget-seconds",
        type=_budget,
        default=None,
        help="bound on the whole run (default 900, or 30 with --quick)",
    )
    r.add_argument(
        "--precisions",
        nargs="+",
        metavar="P",
        default=None,
        help=f"GEMM precisions to measure (default: all supported): {' '.join(PRECISIONS)}",
    )
    r.add_argument("--quick", action="store_true", help="a tiny sweep (CI, smoke tests)")
    r.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    r.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    r.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="N",
        help="pin BLAS/OpenMP to N threads (sets OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and "
        "MKL_NUM_THREADS before NumPy loads); 1 gives the steadiest CPU measurements on a shared "
        "machine; recorded in meta.json (device.blas_threads)",
    )
    r.add_argument(
        "--llm-shape",
        type=_llm_shape,
        default=None,
        metavar="L,H,QH,KVH,D,F,V",
        help="model of the forward_llm_step rows: layers,hidden,heads,kv_heads,head_dim,ffn,"
        "vocab (default on GPUs: Llama-3.1-8B = 32,4096,32,8,128,14336,128256)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    c = sub.add_parser("check", help="validate a measurements directory and summarise it")
    c.add_argument("dir")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.threads is not None:  # before the runner imports NumPy
        from .threads import pin_threads

        pin_threads(args.threads)
    from .runner import run, was_interrupted

    progress = None if args.no_progress else StderrProgress()
    out = run(
        args.out,
        backend=args.backend,
        device=args.device,
        budget_seconds=args.budget_seconds,
        quick=args.quick,
        precisions=args.precisions,
        progress=progress,
        overwrite=args.overwrite,
        seed=args.seed,
        threads=args.threads,
        llm_shape=args.llm_shape,
    )
    print(out)
    if was_interrupted(out):
        print(f"calibrate: interrupted: wrote what was measured to {out}", file=sys.stderr)
        return 130
    return 0


def _check(args: argparse.Namespace) -> int:
    meta, rows = load_measurements(args.dir)
    dev = meta["device"]
    print(
        f"{args.dir}: {meta['format']}, {len(rows)} rows, backend {meta['backend']} on "
        f"{dev.get('kind')} ({dev.get('name')})"
    )
    for kind in sorted({r["kind"] for r in rows}):
        sel = [r for r in rows if r["kind"] == kind]
        if kind.startswith("power"):
            watts = max(r["power_w"] for r in sel)
            print(f"  {kind:18s} {len(sel):4d} rows  {watts:8.1f} W")
            continue
        flops = max(r["gflops_per_s"] for r in sel)
        gbps = max(r["gbytes_per_s"] for r in sel)
        print(f"  {kind:18s} {len(sel):4d} rows  max {flops:10.1f} GFLOP/s  max {gbps:8.1f} GB/s")
    print(f"  skipped: {len(meta['skipped'])} points")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for usage errors, 1 for an invalid directory, 130
    when Ctrl-C ended the run -- after writing what was measured, if anything was)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args) if args.command == "run" else _check(args)
    except CalibrationError as exc:
        print(f"calibrate: error: {exc}", file=sys.stderr)
        return 2
    except MeasurementsError as exc:
        print(f"calibrate: invalid measurements: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("calibrate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
