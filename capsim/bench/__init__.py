"""Import serving-benchmark results into one normalised run format (:class:`BenchRun`).

``capsim bench import FILE... --gpu ID`` reads, detecting the format of each file:

* ``vllm bench serve`` / ``benchmarks/benchmark_serving.py`` result JSON (with per-request
  ``ttfts``/``itls``/``input_lens``/``output_lens`` when saved with ``--save-detailed``);
* SGLang ``bench_serving`` JSONL;
* GenAI-Perf and AIPerf ``profile_export_*.json`` / ``.csv``;
* Triton ``perf_analyzer -f`` CSV (concurrency or request-rate sweeps);
* MLPerf LoadGen ``mlperf_log_summary.txt`` (merging ``mlperf_log_detail.txt`` next to it) or a
  detail log alone;
* capsim's plain CSV, below, for anything else.

Plain CSV
---------
Comma-separated, one header line; lines starting with ``#`` are comments. Two layouts.

**Runs** - one served run per row. Exactly one of ``rate_rps`` (open loop, Poisson) and
``concurrency`` (closed loop) per row; every other column is optional:

=====================================  ====================================================
``rate_rps`` / ``concurrency``         offered load: requests/s, or clients in a closed loop
``num_requests``, ``duration_s``       requests sent; run length in seconds
``input_len``, ``output_len``          fixed prompt / output lengths (tokens)
``input_len_mean``, ``input_len_std``  or their mean and standard deviation (same for output)
``throughput_rps``                     measured completed requests per second
``output_tokens_per_s``                measured output tokens per second
``{m}_{s}_ms``                         measured latency in ms, ``m`` in ttft, tpot, itl, e2e
                                       and ``s`` in mean, p50, p90, p95, p99
``model``, ``gpu``, ``precision``,     settings (``--gpu`` etc. on the command line fill in
``tp``, ``engine``,                    or override these)
``engine_version``, ``max_num_seqs``
=====================================  ====================================================

**Iterations** - measured engine steps; the file is one run. Columns ``phase`` (``prefill`` or
``decode``), ``batch_size`` (sequences in the step), ``seq_len`` (prompt tokens per sequence for
prefill, context tokens per sequence for decode) and ``time_ms`` (the step's wall time), plus
the optional setting columns above.

Every imported run records its source file, format and SHA-256, the tool and version, the date
when the file has one, the settings and where each came from (``origins``: ``file`` or ``cli``;
``overridden`` keeps a file value the command line replaced), the workload and the measured
results in seconds.
"""

from capsim.bench.detect import PARSERS, apply_settings, detect, read_files, read_runs
from capsim.bench.model import FORMATS, BenchRun

__all__ = [
    "FORMATS",
    "PARSERS",
    "BenchRun",
    "apply_settings",
    "detect",
    "read_files",
    "read_runs",
]
