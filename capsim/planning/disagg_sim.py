"""Evaluate one disaggregated fleet: x prefill replicas, y decode replicas, the KV link.

The fleet-level series (TTFT with the transfer, TPOT with the wait for a decode slot, e2e) are
measured per replication on the same request streams as the co-located candidates (common
random numbers) and judged against the SLO like any configuration (:mod:`capsim.sim.llm_disagg`
for the model).

>>> from capsim.load import load_catalog
>>> cat = load_catalog()
>>> f = DisaggFleet(Candidate("h100-sxm", "fp8"), 2, Candidate("h100-sxm", "fp8"), 3)
>>> f.label(), f.gpus
('prefill 2 x h100-sxm fp8 + decode 3 x h100-sxm fp8', 5)
>>> resolve_placement(cat, f, "auto")       # 5 GPUs of one card type fit one 8-GPU node
'same_node'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from capsim.analysis.cost import idle_energy_j, llm_busy_energy_j, price_per_gpu_hour
from capsim.analysis.metrics import RunMetrics, Summary, series_metrics, warmup_cut
from capsim.errors import InputError
from capsim.evaluate import SLOCheck, runnable_service, stream_for
from capsim.planning.mixed_sim import judge
from capsim.planning.static import Candidate
from capsim.service.fixed import Unsupported
from capsim.service.llm_memory import kv_bytes_per_token
from capsim.sim.llm_adapter import llm_tokens
from capsim.sim.llm_disagg import DisaggRunResult, KVLink, PoolSetup, run_disagg
from capsim.sim.llm_types import LLMRunResult
from capsim.sim.overload import alarm_level
from capsim.spec.catalog import GPU, Catalog
from capsim.spec.models import TransformerModel
from capsim.spec.precision import PRECISIONS
from capsim.spec.scenario import ClosedArrivals, Scenario
from capsim.workload.arrivals import RequestStream


@dataclass(frozen=True)
class DisaggFleet:
    """x prefill replicas of one configuration and y decode replicas of another."""

    prefill: Candidate
    x: int
    decode: Candidate
    y: int

    @property
    def gpus(self) -> int:
        return self.x * self.prefill.tp + self.y * self.decode.tp

    def label(self) -> str:
        return (
            f"prefill {self.x} x {self.prefill.label()} + decode {self.y} x {self.decode.label()}"
        )


@dataclass
class DisaggEvaluation:
    """A disaggregated fleet judged on its fleet-level latencies."""

    fleet: DisaggFleet
    placement: str
    link: KVLink
    summary: Summary
    checks: tuple[SLOCheck, ...]
    feasible: bool
    verdict: str
    usd_per_hour: float
    pool_usd: dict[str, float] = field(default_factory=dict)

    def check(self, metric: str) -> SLOCheck | None:
        return next((c for c in self.checks if c.metric == metric), None)


class LinkProblem(ValueError):
    """The cards of a disaggregated fleet have no link for the KV transfer."""


def resolve_placement(cat: Catalog, f: DisaggFleet, placement: str) -> str:
    """``same_node`` or ``cross_node`` for ``placement`` (``auto``: same node when one card
    type serves both pools and the whole fleet fits one node)."""
    if placement != "auto":
        return placement
    g = cat[f.prefill.gpu]
    one_node = f.prefill.gpu == f.decode.gpu and f.gpus <= g.interconnect.max_gpus
    return "same_node" if one_node and g.interconnect.kind != "none" else "cross_node"


def kv_link(cat: Catalog, f: DisaggFleet, placement: str) -> KVLink:
    """The KV path of one prefill replica: ``min(tp_prefill, tp_decode)`` GPU links in parallel
    at the slower side's bandwidth x efficiency, after the larger fixed latency (catalog
    fields: ``interconnect`` within a node, ``interconnect.network`` across nodes)."""
    gp, gd = cat[f.prefill.gpu], cat[f.decode.gpu]
    streams = min(f.prefill.tp, f.decode.tp)
    if placement == "same_node":
        if f.prefill.gpu != f.decode.gpu:
            raise LinkProblem("same_node placement needs one card type for both pools")
        ic = gp.interconnect
        return KVLink(ic.bandwidth_gb_s * 1e9 * ic.efficiency, ic.latency_us * 1e-6, streams)
    nets = [(g.id, g.interconnect.network) for g in (gp, gd)]
    missing = [gid for gid, n in nets if n is None]
    if missing:
        raise LinkProblem(
            f"{', '.join(sorted(set(missing)))} has no interconnect.network in the catalog: a "
            "cross-node KV transfer needs its NIC bandwidth (or use placement: same_node)"
        )
    bw = min(n.bandwidth_gb_s * 1e9 * n.efficiency for _, n in nets if n is not None)
    lat = max(n.latency_us * 1e-6 for _, n in nets if n is not None)
    return KVLink(bw, lat, streams)


def _pool(s: Scenario, cat: Catalog, c: Candidate, replicas: int) -> tuple[PoolSetup, object]:
    svc = runnable_service(s, cat[c.gpu], c.precision, c.tp, c.ep)
    return PoolSetup(svc, svc.limits, replicas), svc


def prefill_chains(s: Scenario, st: RequestStream, svc, prompt, output):
    """The KV-block chains of a stream with shared prefixes, when the engine caches them."""
    if st.prefixes is None or not svc.settings.enable_prefix_caching:
        return None
    return st.prefixes.chains(prompt, output, svc.settings.block_size)


def transfer_bytes_per_token(s: Scenario, f: DisaggFleet) -> float:
    """KV bytes one prompt token sends: the whole model's cache at the prefill pool's format."""
    assert isinstance(s.model, TransformerModel)
    b = s.fleet.batching
    kv_dtype = getattr(getattr(b, "engine", None), "kv_cache_dtype", "auto")
    return kv_bytes_per_token(s.model, f.prefill.precision, 1, kv_dtype)


#: (prefill configuration, replicas, replication) -> that prefill pool's finished run
PrefillRuns = Callable[[Candidate, int, int], LLMRunResult]


def run_fleet(
    s: Scenario,
    cat: Catalog,
    f: DisaggFleet,
    link: KVLink,
    replication: int,
    prefill_runs: PrefillRuns | None = None,
) -> tuple[RunMetrics, DisaggRunResult]:
    """Simulate one replication of ``f`` and measure it (``prefill_runs``: a cache of the
    prefill pool's runs, which do not depend on the decode pool)."""
    st = stream_for(s, replication)
    assert isinstance(st, RequestStream)
    prompt, output = llm_tokens(st)
    pre, psvc = _pool(s, cat, f.prefill, f.x)
    dec, dsvc = _pool(s, cat, f.decode, f.y)
    scale = max(psvc.time_scale_s(s), dsvc.time_scale_s(s))  # type: ignore[attr-defined]
    first: PoolSetup | LLMRunResult = pre
    if prefill_runs is not None:
        first = prefill_runs(f.prefill, f.x, replication)
    res = run_disagg(
        st.arrival, prompt, output, first, dec, transfer_bytes_per_token(s, f), link,
        router=s.fleet.router, max_wait_s=alarm_level(s.simulation.max_wait_s, scale),
        max_queue_length=s.fleet.max_queue_length, horizon=st.horizon,
        chains=prefill_chains(s, st, psvc, prompt, output) if prefill_runs is None else None,
    )  # fmt: skip
    return measure_disagg(s, cat, f, res, st.horizon), res


def _energy(gpu: GPU, r: LLMRunResult, tp: int, span: float) -> float:
    pre, dec = float(r.busy_prefill_s.sum()), float(r.busy_decode_s.sum())
    idle = max(r.replicas * span - pre - dec, 0.0)
    return llm_busy_energy_j(gpu, pre, dec, tp) + idle_energy_j(gpu, idle, tp)


def measure_disagg(
    s: Scenario, cat: Catalog, f: DisaggFleet, res: DisaggRunResult, horizon: float
) -> RunMetrics:
    """RunMetrics of a disaggregated run: fleet-level ``ttft``, ``tpot``, ``e2e`` and scalars
    (per-pool busy share, KV transfer time and bytes)."""
    served = res.served
    cut = 0
    if s.stationary and not res.unstable and served.any():
        cut = warmup_cut(res.e2e[served], s.simulation.warmup, res.arrival[served])
    keep = np.flatnonzero(served)[cut:]
    t0 = float(res.arrival[keep[0]]) if len(keep) else 0.0
    end = max(res.prefill.end_time, res.decode.end_time)
    span = (end if res.unstable else max(end, horizon)) - t0
    tpot = res.tpot[keep]
    q, samples, _ = series_metrics(
        {"ttft": res.ttft[keep], "tpot": tpot[~np.isnan(tpot)], "e2e": res.e2e[keep]},
        [s.slo.percentile],
    )
    late = res.arrival >= t0
    arrived = int(late.sum())
    rejected = int(res.rejected[late].sum())
    moved = res.transfer_s[keep]
    moved = moved[~np.isnan(moved)]
    out_tok = float(res.output[keep].sum())
    sc = {
        "arrived": float(arrived),
        "served": float(len(keep)),
        "rejected": float(rejected),
        "rejection_rate": rejected / arrived if arrived else 0.0,
        "throughput_rps": len(keep) / span if span > 0 else 0.0,
        "output_tokens": out_tok,
        "output_tokens_per_s": out_tok / span if span > 0 else 0.0,
        "energy_j": _energy(cat[f.prefill.gpu], res.prefill, f.prefill.tp, span)
        + _energy(cat[f.decode.gpu], res.decode, f.decode.tp, span),
        "span_s": span,
        "prefill_busy_share": _busy(res.prefill, span),
        "decode_busy_share": _busy(res.decode, span),
        "kv_transfer_mean_s": float(moved.mean()) if len(moved) else 0.0,
        "kv_transfer_p99_s": float(np.quantile(moved, 0.99)) if len(moved) else 0.0,
        "kv_mib_per_request": float(res.kv_bytes[keep].mean()) / 2**20 if len(keep) else 0.0,
        "decode_preemptions": float(res.decode.preemptions.sum()),
    }
    return RunMetrics(q, sc, res.unstable, res.unstable_reason, samples)


def _busy(r: LLMRunResult, span: float) -> float:
    cap = r.replicas * span
    return float(r.busy_prefill_s.sum() + r.busy_decode_s.sum()) / cap if cap > 0 else 0.0


def fleet_price(s: Scenario, cat: Catalog, f: DisaggFleet) -> dict[str, float]:
    """$/hour of each pool."""
    out = {}
    for name, c, n in (("prefill", f.prefill, f.x), ("decode", f.decode, f.y)):
        p = price_per_gpu_hour(cat[c.gpu], s.candidates.price_provider).usd_per_hour
        out[name] = p * c.tp * n
    return out


def evaluate_disagg(
    s: Scenario,
    cat: Catalog,
    f: DisaggFleet,
    placement: str = "auto",
    prefill_runs: PrefillRuns | None = None,
) -> DisaggEvaluation:
    """Simulate ``f`` for the scenario's replications and judge it (raises LinkProblem)."""
    where = resolve_placement(cat, f, placement)
    link = kv_link(cat, f, where)
    runs = []
    for rep in range(s.simulation.replications):
        runs.append(run_fleet(s, cat, f, link, rep, prefill_runs)[0])
        if runs[-1].unstable:
            break
    summary, checks, feasible, verdict = judge(s, runs)
    usd = fleet_price(s, cat, f)
    return DisaggEvaluation(
        f, where, link, summary, checks, feasible, verdict, sum(usd.values()), usd
    )


def ci_ms(e: DisaggEvaluation, metric: str) -> str:
    """'812 ms [790, 840]' for the SLO percentile of ``metric`` (or 'n/a')."""
    c = e.check(metric)
    if c is None or not math.isfinite(c.ci.mean):
        return "n/a"
    return f"{c.ci.mean * 1000:.0f} ms [{c.ci.low * 1000:.0f}, {c.ci.high * 1000:.0f}]"


def simulate_disagg(
    s: Scenario,
    cat: Catalog,
    file: str,
    prefill: Candidate,
    x: int,
    y: int | None,
    decode_gpu: str | None = None,
    decode_precision: str | None = None,
    decode_tp: str | None = None,
    placement: str | None = None,
    replications: int | None = None,
) -> DisaggEvaluation:
    """``capsim simulate --decode-replicas``: one disaggregated fleet, checked and judged."""
    if y is None:
        raise InputError(
            "--decode-gpu, --decode-precision, --decode-tp and --placement describe a "
            "disaggregated fleet: give its decode pool's size too",
            where="--decode-replicas",
        )
    if not s.is_llm or isinstance(s.traffic.arrivals, ClosedArrivals):
        raise InputError(
            "disaggregated serving needs a transformer model with open-loop traffic",
            file=file,
            where="--decode-replicas",
        )
    dgpu = decode_gpu or prefill.gpu
    if dgpu not in cat.gpus:
        raise InputError(
            f"unknown GPU '{dgpu}'; the catalog has: {', '.join(cat)}", where="--decode-gpu"
        )
    dprec = decode_precision or prefill.precision
    if dprec not in PRECISIONS:
        raise InputError(
            f"unknown precision '{dprec}'; accepted: {', '.join(PRECISIONS)}",
            where="--decode-precision",
        )
    f = DisaggFleet(prefill, x, Candidate(dgpu, dprec, int(decode_tp or prefill.tp)), y)
    for name, c in (("prefill", f.prefill), ("decode", f.decode)):
        try:
            runnable_service(s, cat[c.gpu], c.precision, c.tp, c.ep)
        except Unsupported as exc:
            raise Unsupported(f"{name} pool ({c.label()}): {exc}") from None
    where = placement or (s.disaggregation.placement if s.disaggregation else "auto")
    if replications is not None:
        sim = s.simulation.model_copy(update={"replications": max(2, replications)})
        s = s.model_copy(update={"simulation": sim})
    try:
        return evaluate_disagg(s, cat, f, where)
    except LinkProblem as exc:
        raise InputError(str(exc), where="--placement") from None
