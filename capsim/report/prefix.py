"""Text and JSON of what prefix caching saved (``capsim plan --compare-prefix-caching``).

>>> _pct(0.1234), _pct(None)
('12.3%', '-')
"""

from __future__ import annotations

from typing import Any

from capsim.evaluate import Evaluation
from capsim.planning.prefix import CachingComparison
from capsim.planning.static import PlanResult
from capsim.report.tables import MS, _table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _rec(p: PlanResult) -> Evaluation | None:
    r = p.recommendation
    return r.best if r is not None else None


def _sc(e: Evaluation | None, key: str) -> float | None:
    if e is None or key not in e.summary.scalars:
        return None
    return e.summary.scalars[key].mean


def _ttft_p(e: Evaluation | None, p: float) -> float | None:
    if e is None or "ttft" not in e.summary.quantiles:
        return None
    return e.summary.quantiles["ttft"][p].mean


def caching_dict(c: CachingComparison) -> dict[str, Any]:
    """The comparison as JSON-ready numbers (None where a plan found no configuration)."""
    p = c.on.scenario.slo.percentile
    on, off = _rec(c.on), _rec(c.off)

    def fleet(e: Evaluation | None) -> dict[str, Any] | None:
        if e is None:
            return None
        return {"config": e.config.label(), "gpus": e.config.gpus, "usd_per_hour": e.usd_per_hour}

    same = c.rec_on
    return {
        "with_caching": fleet(on),
        "without_caching": fleet(off),
        "usd_per_hour_saved": (off.usd_per_hour - on.usd_per_hour) if on and off else None,
        "same_config": same.config.label() if same else None,
        f"ttft_p{p:g}_ms_with": (_ttft_p(c.rec_on, p) or 0) * MS if c.rec_on else None,
        f"ttft_p{p:g}_ms_without": (_ttft_p(c.rec_off, p) or 0) * MS if c.rec_off else None,
        "prefix_hit_rate_tokens": _sc(c.rec_on, "prefix_hit_rate_tokens"),
        "prefix_hit_rate_requests": _sc(c.rec_on, "prefix_hit_rate_requests"),
        "prefill_tokens_saved": _sc(c.rec_on, "prefill_tokens_saved"),
        "prefill_tokens_computed": _sc(c.rec_on, "prefill_tokens_computed"),
    }


def format_caching(c: CachingComparison) -> str:
    """What caching saved: the two recommendations, and the on-plan's recommendation with and
    without caching (TTFT, hit rates, prefill tokens)."""
    d = caching_dict(c)
    p = c.on.scenario.slo.percentile
    lines = ["Prefix caching (enable_prefix_caching on vs off, same traffic):"]
    rows = []
    for name, key in (("with caching", "with_caching"), ("without caching", "without_caching")):
        f = d[key]
        rows.append([name, *(
            [f["config"], str(f["gpus"]), f"${f['usd_per_hour']:.2f}"] if f else
            ["no configuration meets the SLO", "-", "-"]
        )])  # fmt: skip
    lines.append(_table(rows, ["plan", "recommendation", "GPUs", "$/hour"]))
    if d["usd_per_hour_saved"] is not None:
        saved = d["usd_per_hour_saved"]
        base = d["without_caching"]["usd_per_hour"]
        lines.append(
            f"  caching saves ${saved:.2f}/h ({saved / base:.0%} of the fleet cost)"
            if saved > 0
            else f"  caching does not change the cheapest fleet here (${-saved:.2f}/h more)"
            if saved < 0
            else "  caching does not change the cheapest fleet here"
        )
    if c.rec_on is not None and c.rec_off is not None:
        on_ms, off_ms = d[f"ttft_p{p:g}_ms_with"], d[f"ttft_p{p:g}_ms_without"]
        saved_tok = d["prefill_tokens_saved"] or 0.0
        comp = d["prefill_tokens_computed"] or 0.0
        share = saved_tok / (saved_tok + comp) if saved_tok + comp > 0 else 0.0
        lines.append(
            f"  on {d['same_config']}: p{p:g} TTFT {on_ms:,.0f} ms with caching vs "
            f"{off_ms:,.0f} ms without; hit rate {_pct(d['prefix_hit_rate_tokens'])} of "
            f"prompt tokens, {_pct(d['prefix_hit_rate_requests'])} of requests; prefill "
            f"tokens saved {saved_tok:,.0f} per replication ({share:.0%} of the prompt tokens)"
        )
    return "\n".join(lines)
