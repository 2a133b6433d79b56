"""Where a plan's recommendation gets its numbers: price, efficiencies, service times.

Computed by the planner and carried on :class:`~capsim.planning.static.PlanResult` (``trace``),
so the reports print it without rebuilding a service model.
"""

from __future__ import annotations

from capsim.evaluate import make_service
from capsim.load import load_catalog
from capsim.planning.static import PlanResult
from capsim.service.calibrated import source_of


def trace_lines(result: PlanResult) -> list[str]:
    """Where the recommendation's numbers come from: price, efficiencies, service times."""
    rec = result.recommendation
    assert rec is not None and rec.best is not None
    s, e = result.scenario, rec.best
    cat = result.catalog or load_catalog()
    gpu = cat[e.config.gpu]
    svc = make_service(s, gpu, e.config.precision, e.config.tp)
    out = [
        f"price: {e.price.label} x {e.config.gpus} GPUs = ${e.usd_per_hour:.2f}/h "
        f"(catalog {gpu.id}: sources.price = {gpu.sources.get('price', '?')})",
        f"roofline: peak {gpu.peak_tflops.get(svc.math_format)} TFLOP/s {svc.math_format} x "
        f"efficiency {gpu.efficiency.compute}; bandwidth {gpu.bandwidth_gb_s:g} GB/s x "
        f"efficiency {gpu.efficiency.memory}; kernel overhead {gpu.kernel_overhead_us:g} us "
        f"(sources.efficiency = {gpu.sources.get('efficiency', '?')})",
    ]
    if gpu.calibration is not None:  # measured tables / fitted curves replace the roofline
        out.append(f"{source_of(gpu)}; used for service times, the roofline only where it has none")
    out.extend(svc.trace_lines(mean_batch=e.summary.scalars["mean_batch"].mean))
    sc = e.summary.scalars
    out.append(
        f"simulated: {e.summary.replications} replications, busy "
        f"{sc['utilisation'].mean:.0%} of the time"
        + (
            f" (compute {sc['compute_utilisation'].mean:.0%} of peak FLOP/s, memory bandwidth "
            f"{sc['memory_bw_utilisation'].mean:.0%} of peak)"
            if "compute_utilisation" in sc
            else ""
        )
        + f", throughput {sc['throughput_rps'].mean:.1f} req/s, "
        f"energy {sc['energy_j'].mean / 3.6e6:.3f} kWh per run"
    )
    return out
