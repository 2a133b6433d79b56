"""What-if for a disaggregated fleet: autoscaling policies on a prefill pool and a decode pool.

Each pool is a scalable LLM fleet under its own controller (the what-if policy applied to each
pool, or a ``split`` policy's per-pool specs), with its own cold starts. The pools do not feed
back into each other, so a run is exact as two autoscaled runs in sequence, as for a fixed
disaggregated fleet (:mod:`capsim.sim.llm_disagg`): the prefill pool on the arrival stream,
then the KV transfers, then the decode pool on the KV arrivals. The prefill pool sees the
same arrivals and cold-start draws as the co-located fleet of the same replication (common
random numbers), so their costs compare as paired differences.

``replicas: peak`` (a fixed policy) takes the disaggregated planner's pool sizes for the
configured pair of pools: :func:`peak_pools`.

>>> from capsim.spec.autoscaling import HPASpec, SplitSpec
>>> hpa = HPASpec(kind="hpa", metric="inflight", target=30)
>>> pool_spec(hpa, "decode") is hpa
True
>>> split = SplitSpec(kind="split", prefill=hpa, decode=hpa.model_copy(update={"target": 60}))
>>> pool_spec(split, "decode").target
60
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from capsim.analysis.whatif_disagg import PoolRun, measure_disagg_autoscaled
from capsim.analysis.whatif_metrics import AutoscaledRun
from capsim.errors import InputError
from capsim.evaluate import runnable_service, slo_targets, stream_for
from capsim.planning.disagg import plan_disagg
from capsim.planning.disagg_sim import (
    DisaggFleet,
    LinkProblem,
    _pool,
    kv_link,
    prefill_chains,
    resolve_placement,
    transfer_bytes_per_token,
)
from capsim.planning.static import Candidate
from capsim.planning.whatif_run import (
    _prior,
    cold_start_of,
    initial_replicas,
    rate_at_start,
    weight_bytes,
)
from capsim.service.fixed import Unsupported
from capsim.sim.lifecycle import ColdStartSampler, cold_start_seed, run_lifecycle
from capsim.sim.llm_adapter import llm_tokens
from capsim.sim.llm_disagg import combine, handoff
from capsim.sim.llm_fleet import ScalableLLMFleet
from capsim.sim.overload import alarm_level
from capsim.sim.policies import make_policy
from capsim.spec.autoscaling import FixedSpec, PredictiveSpec, SplitSpec
from capsim.spec.catalog import Catalog
from capsim.spec.disagg import Disaggregation, PoolChoices
from capsim.spec.scenario import Scenario
from capsim.workload.arrivals import RequestStream
from capsim.workload.streams import real_time

POOLS = ("prefill", "decode")


@dataclass(frozen=True)
class DisaggSetup:
    """The pools' configurations, the KV path and, for ``replicas: peak``, the pool sizes."""

    prefill: Candidate
    decode: Candidate
    placement: str  # same_node | cross_node (resolved)
    peak: tuple[int, int] | None = None


def pool_spec(spec, pool: str):
    """The policy one pool runs: a ``split`` policy's own spec for it, else ``spec``."""
    return getattr(spec, pool) if isinstance(spec, SplitSpec) else spec


def needs_peak(spec) -> bool:
    """Whether a policy (either pool's) is a fixed fleet sized for the peak."""
    return any(
        isinstance(p, FixedSpec) and p.replicas == "peak"
        for p in (pool_spec(spec, q) for q in POOLS)
    )


def peak_pools(s: Scenario, cat: Catalog, prefill: Candidate, decode: Candidate, placement: str):
    """(x, y): the disaggregated planner's pool sizes for this pair of configurations at the
    scenario's peak (its static plan on the compressed day, as for a co-located fixed fleet)."""

    def choices(c: Candidate) -> PoolChoices:
        return PoolChoices.model_validate(
            {
                "gpus": [c.gpu],
                "precisions": [c.precision],
                "tensor_parallel": [c.tp],
                "max_replicas": s.candidates.max_replicas,
            }
        )

    only = Disaggregation.model_validate(
        {"placement": placement, "prefill": choices(prefill), "decode": choices(decode), "pairs": 1}
    )
    plan = plan_disagg(s.model_copy(update={"disaggregation": only}), cat, None)
    if plan.best is None:
        why = next(
            (r.reason for r in plan.prefill + plan.decode if r.status != "sized"),
            "no pair of pool sizes meets the SLO",
        )
        raise InputError(
            f"cannot size a fixed disaggregated fleet (prefill {prefill.label()}, decode "
            f"{decode.label()}) for the peak: {why}",
            where="whatif (fixed, replicas: peak)",
        )
    return plan.best.fleet.x, plan.best.fleet.y


def disagg_setup(
    s: Scenario,
    cat: Catalog,
    prefill: Candidate,
    decode: Candidate,
    placement: str,
    specs: Sequence,
) -> DisaggSetup:
    """Size the pools for the peak when a policy (``specs``: those run disaggregated) needs it,
    and resolve the placement for the largest fleet any policy may reach (``auto``: one node
    only if every pool size fits), refusing a KV path the catalog cannot give."""
    for name, c in (("prefill", prefill), ("decode", decode)):
        try:
            runnable_service(s, cat[c.gpu], c.precision, c.tp, c.ep)
        except Unsupported as exc:
            raise Unsupported(f"{name} pool ({c.label()}): {exc}") from None
    sized = any(needs_peak(sp) for sp in specs)
    peak = peak_pools(s, cat, prefill, decode, placement) if sized else None
    x, y = largest_pools(s, specs, peak)
    f = DisaggFleet(prefill, x, decode, y)
    where = resolve_placement(cat, f, placement)
    try:
        kv_link(cat, f, where)
    except LinkProblem as exc:
        raise InputError(str(exc), where="--placement") from None
    return DisaggSetup(prefill, decode, where, peak)


def largest_pools(s: Scenario, specs: Sequence, peak: tuple[int, int] | None) -> tuple[int, int]:
    """The most replicas each pool may have under any of ``specs`` (a fixed count, the peak
    sizes, or an autoscaler's ``max_replicas``, default ``candidates.max_replicas``).

    >>> from capsim.load import load_scenario
    >>> s = load_scenario("scenarios/chatbot_disagg_autoscaled.yaml")
    >>> largest_pools(s, s.whatif.policies[:1], (4, 6)), largest_pools(s, s.whatif.policies, (4, 6))
    ((4, 6), (24, 24))
    """
    out = [1, 1]
    for sp in specs:
        for i, pool in enumerate(POOLS):
            p = pool_spec(sp, pool)
            if isinstance(p, FixedSpec):
                n = p.replicas if isinstance(p.replicas, int) else (peak[i] if peak else 1)
            else:
                n = p.max_replicas or s.candidates.max_replicas
            out[i] = max(out[i], n)
    return out[0], out[1]


def _run_pool(
    s: Scenario,
    svc,
    spec,
    fixed: int | None,
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    *,
    horizon: float,
    seed: np.random.SeedSequence,
    capacity_rps: float,
    chains=None,
    prefilled: np.ndarray | None = None,
):
    """One pool (service ``svc``) under its controller over the run: (fleet, lifecycle,
    engine result)."""
    cs = cold_start_of(s, spec)
    wb = weight_bytes(s, svc)
    policy = make_policy(
        spec,
        max_replicas=s.candidates.max_replicas,
        fixed_replicas=fixed,
        lead_s=cs.mean_s(wb),
        prior=_prior(s, spec.season_s) if isinstance(spec, PredictiveSpec) else None,
    )
    fleet = ScalableLLMFleet(
        arrival, prompt, output, svc, svc.limits,
        router=s.fleet.router, max_queue_length=s.fleet.max_queue_length, chains=chains,
        prefilled=prefilled,
    )  # fmt: skip
    lc = run_lifecycle(
        fleet,
        policy,
        ColdStartSampler(cs, seed, wb),
        horizon=horizon,
        initial=initial_replicas(spec, policy, rate_at_start(s, arrival), capacity_rps),
        max_wait_s=alarm_level(s.simulation.max_wait_s, svc.time_scale_s(s)),
    )
    return fleet, lc, fleet.result(horizon)


def run_disagg_policy(
    s: Scenario,
    cat: Catalog,
    setup: DisaggSetup,
    spec,
    replication: int,
    *,
    label: str,
    window_s: float = 300.0,
) -> AutoscaledRun:
    """One policy (each pool's controller) over one replication of the real-time horizon."""
    sr = real_time(s)
    st = stream_for(sr, replication)
    assert isinstance(st, RequestStream), "closed-loop scenarios are refused at load"
    horizon = st.horizon
    prompt, output = llm_tokens(st)
    p_spec, d_spec = pool_spec(spec, "prefill"), pool_spec(spec, "decode")
    peak = setup.peak or (None, None)
    seed = cold_start_seed(s.simulation.seed, replication)
    _, psvc = _pool(sr, cat, setup.prefill, 1)
    _, dsvc = _pool(sr, cat, setup.decode, 1)
    mp = float(np.mean(prompt)) if len(prompt) else 1.0
    mo = float(np.mean(output)) if len(output) else 1.0
    p_fleet, p_lc, pre = _run_pool(
        sr, psvc, p_spec, peak[0], st.arrival, prompt,
        np.ones(len(prompt), dtype=np.int64), horizon=horizon,
        seed=seed, capacity_rps=psvc.throughput_for(mp, 1.0),  # type: ignore[attr-defined]
        chains=prefill_chains(sr, st, psvc, prompt, output),
    )  # fmt: skip
    f = DisaggFleet(setup.prefill, 1, setup.decode, 1)
    link = kv_link(cat, f, setup.placement)
    hand = handoff(
        pre, output, transfer_bytes_per_token(s, f), link, alarm_level(s.simulation.max_wait_s, 1.0)
    )
    t_kv, idx = hand.kv_arrival, hand.idx
    d_fleet, d_lc, dec = _run_pool(
        sr, dsvc, d_spec, peak[1], t_kv, prompt[idx], output[idx],
        horizon=max(horizon, float(t_kv[-1]) if len(t_kv) else 0.0),
        seed=seed.spawn(1)[0], capacity_rps=dsvc.throughput_for(mp, mo, 0.0),  # type: ignore[attr-defined]
        prefilled=np.ones(len(idx), dtype=bool),
    )  # fmt: skip
    res = combine(pre, dec, hand, st.arrival, prompt, output)
    pools = [
        PoolRun("prefill", cat[setup.prefill.gpu], setup.prefill.tp, p_fleet, p_lc),
        PoolRun("decode", cat[setup.decode.gpu], setup.decode.tp, d_fleet, d_lc),
    ]
    return measure_disagg_autoscaled(
        s, pools, res, horizon, dict(slo_targets(s)), label=label, replication=replication,
        window_s=window_s,
    )  # fmt: skip


def pool_sizes_note(setup: DisaggSetup) -> str:
    """What the disaggregated rows run, for the what-if notes."""
    size = (
        f" (replicas: peak = {setup.peak[0]} prefill + {setup.peak[1]} decode)"
        if setup.peak
        else ""
    )
    return (
        f"disaggregated [P/D]: prefill {setup.prefill.label()}, decode {setup.decode.label()}, "
        f"KV {'within one node' if setup.placement == 'same_node' else 'across nodes'}{size}; a "
        "policy that is not split runs on each pool"
    )
