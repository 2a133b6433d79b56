"""What the vLLM and SGLang serving-benchmark results share (their JSON keys descend from the
same ``benchmark_serving.py``): load, lengths, latency statistics and per-request samples.

>>> load_from(float("inf"), 4, None, file="f").kind
'concurrency'
>>> load_from("inf", None, None, file="f").kind
'offline'
>>> load_from(2.5, None, 1.0, file="f").rate_rps
2.5
>>> precision_from("bfloat16", None), precision_from("auto", "fp8"), precision_from("auto", None)
('bf16', 'fp8', None)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capsim.bench.common import dist_from_keys, to_float, to_int, to_time
from capsim.bench.model import (
    ConcurrencyLoad,
    Dist,
    LengthDist,
    Load,
    Measured,
    OfflineLoad,
    RateLoad,
    Samples,
)
from capsim.errors import InputError

_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "half": "fp16", "fp16": "fp16"}
_DTYPES |= {"float32": "fp32", "float": "fp32", "fp32": "fp32"}
_QUANT: dict[str, str | None] = {
    "fp8": "fp8",
    "modelopt": "fp8",
    "fbgemm_fp8": "fp8",
    "awq": "int4",
    "gptq": "int4",
}
_QUANT |= {"awq_marlin": "int4", "gptq_marlin": "int4", "w8a8_int8": "int8", "int8": "int8"}
_QUANT |= {"w8a8_fp8": "fp8", "compressed-tensors": None, "bitsandbytes": "int4"}

ENGINES = {"vllm", "sglang", "tgi", "lmdeploy", "tensorrt-llm", "trt-llm", "deepspeed-mii"}


def precision_from(dtype: Any, quantization: Any) -> str | None:
    """capsim precision name from an engine's ``dtype`` and ``quantization`` (None: unknown)."""
    if isinstance(quantization, str) and quantization:
        return _QUANT.get(quantization.lower())
    if isinstance(dtype, str):
        return _DTYPES.get(dtype.lower())
    return None


def load_from(rate: Any, max_concurrency: Any, burstiness: Any, *, file: Path | str) -> Load:
    """The offered load from ``request_rate`` (``inf`` allowed) and ``max_concurrency``.

    An infinite rate with a concurrency cap is N clients sending back to back (closed loop);
    without a cap every request is sent at once (offline burst).
    """
    r = to_float(rate, file=file, where="request_rate")
    if r is None and isinstance(rate, float | str) and str(rate).strip().lower() == "nan":
        raise InputError(
            "expected a positive rate or inf (send all at once), got NaN",
            file=file,
            where="request_rate",
        )
    cap = to_int(max_concurrency, file=file, where="max_concurrency")
    if r is None or math.isinf(r):
        return ConcurrencyLoad(concurrency=cap) if cap else OfflineLoad()
    if r <= 0:
        raise InputError(f"expected a positive rate, got {rate!r}", file=file, where="request_rate")
    b = to_float(burstiness, file=file, where="burstiness")
    return RateLoad(rate_rps=r, burstiness=b, max_concurrency=cap)


def _tokens(value: Any, *, file: Path | str, where: str) -> int | None:
    """A per-request token count: a whole number, never negative."""
    n = to_int(value, file=file, where=where)
    if n is not None and n < 0:
        raise InputError(f"expected a token count >= 0, got {value!r}", file=file, where=where)
    return n


def length_from(
    d: Mapping[str, Any], per_request_key: str, total_key: str, *, file: Path | str
) -> LengthDist | None:
    """Per-request lengths when saved, else the mean from the total over completed requests."""
    values = d.get(per_request_key)
    if isinstance(values, list) and values:
        ints = [
            _tokens(v, file=file, where=f"{per_request_key}[{i}]") for i, v in enumerate(values)
        ]
        return LengthDist(kind="per_request", values=[int(v or 0) for v in ints])
    total = to_float(d.get(total_key), file=file, where=total_key)
    done = to_float(d.get("completed"), file=file, where="completed")
    if total is None or not done:
        return None
    return LengthDist(kind="stats", mean=total / done, derived=f"{total_key} / completed")


#: the per-request lists ``--save-detailed`` writes, one entry per request in each
PER_REQUEST_KEYS = ("input_lens", "output_lens", "ttfts", "itls")


def check_per_request(d: Mapping[str, Any], *, file: Path | str) -> None:
    """Refuse per-request lists of different lengths: their entries pair up by request.

    >>> check_per_request({"ttfts": [0.1, 0.2], "itls": [[0.01]]}, file="f.json")
    Traceback (most recent call last):
    ...
    capsim.errors.InputError: f.json: ttfts, itls: per-request lists of different lengths (2, 1); expected one entry per request in each
    """
    sizes = {k: len(d[k]) for k in PER_REQUEST_KEYS if isinstance(d.get(k), list) and d[k]}
    if len(set(sizes.values())) > 1:
        raise InputError(
            f"per-request lists of different lengths ({', '.join(map(str, sizes.values()))}); "
            "expected one entry per request in each",
            file=file,
            where=", ".join(sizes),
        )
    check_counts(d, sizes, file=file)


def check_counts(d: Mapping[str, Any], sizes: Mapping[str, int], *, file: Path | str) -> None:
    """Refuse request counts that contradict each other: more ``completed`` than
    ``num_prompts``, or per-request lists (one entry per prompt sent, failed ones included)
    of another length than ``num_prompts``.

    >>> check_counts({"num_prompts": 200, "completed": 201}, {}, file="f.json")
    Traceback (most recent call last):
    ...
    capsim.errors.InputError: f.json: completed: 201 requests completed of 200 sent (num_prompts); expected completed <= num_prompts
    """
    n = to_int(d.get("num_prompts"), file=file, where="num_prompts")
    done = to_int(d.get("completed"), file=file, where="completed")
    if n is None:
        return
    if done is not None and done > n:
        raise InputError(
            f"{done} requests completed of {n} sent (num_prompts); expected completed <= num_prompts",
            file=file,
            where="completed",
        )
    wrong = {k: v for k, v in sizes.items() if v != n}
    if wrong:
        raise InputError(
            f"{', '.join(f'{v} entries' for v in wrong.values())} for num_prompts {n}; expected "
            "one entry per prompt sent",
            file=file,
            where=", ".join(wrong),
        )


def samples_from(d: Mapping[str, Any], *, file: Path | str) -> Samples | None:
    """Per-request TTFT (s), ITLs (s) and lengths saved by ``--save-detailed``/``--output-details``
    (the importers have run :func:`check_per_request` on ``d`` before reading any of them)."""
    out: dict[str, Any] = {}
    ttfts = d.get("ttfts")
    if isinstance(ttfts, list) and ttfts:
        out["ttft_s"] = [to_time(x, file=file, where=f"ttfts[{i}]") for i, x in enumerate(ttfts)]
    itls = d.get("itls")
    if isinstance(itls, list) and itls:
        if not all(isinstance(row, list) for row in itls):
            raise InputError("expected a list of lists of seconds", file=file, where="itls")
        out["itl_s"] = [
            [to_time(x, file=file, where=f"itls[{i}]") for x in row] for i, row in enumerate(itls)
        ]
    for key, field in (("input_lens", "input_len"), ("output_lens", "output_len")):
        vals = d.get(key)
        if isinstance(vals, list) and vals:
            out[field] = [_tokens(x, file=file, where=f"{key}[{i}]") for i, x in enumerate(vals)]
    return Samples(**out) if out else None


def measured_from(d: Mapping[str, Any], e2e_metric: str, *, file: Path | str) -> Measured:
    """Throughputs and TTFT/TPOT/ITL/e2e statistics (ms in the file, seconds here)."""

    def num(key: str) -> float | None:
        return to_float(d.get(key), file=file, where=key)

    total = num("total_token_throughput")
    if total is None:
        total = num("total_throughput")
    out_tps = num("output_throughput")
    in_tps = num("input_throughput")
    if in_tps is None and total is not None and out_tps is not None:
        in_tps = total - out_tps
    samples = samples_from(d, file=file)
    e2e = dist_from_keys(d, e2e_metric, 1e-3, file=file)
    if e2e is None and samples is not None:
        samples = e2e_samples(samples)
        e2e = dist_of(samples.e2e_s) if samples.e2e_s else None
    return Measured(
        request_throughput_rps=num("request_throughput"),
        output_tokens_per_s=out_tps,
        input_tokens_per_s=in_tps,
        total_tokens_per_s=total,
        ttft_s=dist_from_keys(d, "ttft", 1e-3, file=file),
        tpot_s=dist_from_keys(d, "tpot", 1e-3, file=file),
        itl_s=dist_from_keys(d, "itl", 1e-3, file=file),
        e2e_s=e2e,
        samples=samples,
    )


#: how :func:`e2e_samples` derives a request's end-to-end latency (recorded in a run's notes)
E2E_FROM_SAMPLES = (
    "e2e derived per request as ttft + sum(itls) (the time of the last streamed chunk), "
    "percentiles by linear interpolation as numpy.percentile (the file has no e2el statistics)"
)


def e2e_samples(s: Samples) -> Samples:
    """``s`` with ``e2e_s`` filled in as each request's TTFT plus its inter-token gaps.

    ``benchmark_serving.py`` takes the ITLs as the gaps between streamed chunks after the first,
    so TTFT + sum(ITLs) is the arrival of the last chunk: the request's latency, up to the
    end-of-stream message. Requests without a TTFT (failed) are skipped.

    >>> e2e_samples(Samples(ttft_s=[0.05, 0.0], itl_s=[[0.02, 0.03], []])).e2e_s
    [0.1]
    """
    if s.e2e_s or not s.ttft_s or s.itl_s is None or len(s.itl_s) != len(s.ttft_s):
        return s
    e2e = [t + sum(gaps) for t, gaps in zip(s.ttft_s, s.itl_s, strict=True) if t > 0]
    return s.model_copy(update={"e2e_s": e2e}) if e2e else s


def percentile(values: list[float], p: float) -> float:
    """``numpy.percentile(values, p)`` (linear interpolation), as the benchmark client computes.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50.0), percentile([1.0, 2.0, 3.0, 4.0], 99.0)
    (2.5, 3.97)
    """
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (k - lo), 12)


def dist_of(values: list[float]) -> Dist:
    """Mean, p50, p90 and p99 of per-request samples (seconds)."""
    return Dist(
        mean=sum(values) / len(values),
        p50=percentile(values, 50.0),
        p90=percentile(values, 90.0),
        p99=percentile(values, 99.0),
    )
