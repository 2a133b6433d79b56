"""One line per imported run, for the terminal.

>>> _ms(0.0123)
'12.3 ms'
>>> _ms(2.5)
'2.50 s'
>>> _ms(None)
'-'
"""

from __future__ import annotations

from pathlib import Path

from capsim.bench.model import BenchRun, Dist


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1.0:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3g} ms"
    return f"{x * 1e6:.3g} us"


def _load(run: BenchRun) -> str:
    load = run.workload.load
    if load is None:
        return "load unknown"
    if load.kind == "rate":
        cap = f" (max {load.max_concurrency} in flight)" if load.max_concurrency else ""
        return f"rate {load.rate_rps:g}/s{cap}"
    if load.kind == "concurrency":
        return f"concurrency {load.concurrency}"
    return "offline"


def _dist(name: str, d: Dist | None) -> str | None:
    if d is None:
        return None
    mid = d.p50 if d.p50 is not None else d.mean
    label = "p50" if d.p50 is not None else "mean"
    return f"{name} {label} {_ms(mid)} p99 {_ms(d.p99)}"


def summary_line(run: BenchRun) -> str:
    """``file[index]  format  load  throughput  TTFT/TPOT/e2e  gpu model``."""
    m, s = run.measured, run.settings
    parts = [
        f"{Path(run.source.file).name}[{run.source.index}]",
        run.source.format,
        _load(run),
    ]
    if m.request_throughput_rps is not None:
        parts.append(f"{m.request_throughput_rps:.4g} req/s")
    if m.output_tokens_per_s is not None:
        parts.append(f"{m.output_tokens_per_s:.5g} tok/s")
    if m.iterations:
        parts.append(f"{len(m.iterations)} iteration timings")
    for name, d in (("TTFT", m.ttft_s), ("TPOT", m.tpot_s), ("e2e", m.e2e_s)):
        text = _dist(name, d)
        if text:
            parts.append(text)
    parts.append(f"gpu {s.gpu or '?'}" + (f" model {s.model}" if s.model else ""))
    if run.workload.prompts_cached_by:
        parts.append(f"prompts cached by {Path(run.workload.prompts_cached_by).name}")
    return "  ".join(parts)
