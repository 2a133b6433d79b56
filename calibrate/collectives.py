"""All-reduce timing in one process per rank (torch.distributed; NCCL on GPUs, gloo on CPUs).

Follows nccl-tests' ``all_reduce_perf``: fp32 sum of a buffer of ``message_bytes`` on every
rank, a few warm-up calls, then timed samples of ``inner`` back-to-back calls each; a sample's
time per call is the slowest rank's. ``algbw = message_bytes / time``, ``busbw = algbw ·
2(n-1)/n`` (what :func:`calibrate.work.allreduce` encodes as ``bytes``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from .timing import Stats, summarize

WARMUP = 5
MIN_REPEATS = 5
MAX_REPEATS = 50
TIME_PER_SIZE_S = 0.05


def inner_calls(message_bytes: int) -> int:
    """Calls per timed sample: many for tiny messages (whose call is microseconds), one for big.

    >>> inner_calls(8), inner_calls(1 << 20), inner_calls(1 << 30)
    (20, 5, 1)
    """
    if message_bytes <= 1 << 16:
        return 20
    return 5 if message_bytes <= 1 << 24 else 1


def measure_allreduce(
    sizes: Sequence[int], ranks: int, backend: str, workdir: str
) -> dict[int, Stats]:
    """Spawn ``ranks`` processes that all-reduce every size; per size, the statistics of rank 0's
    samples (each the slowest rank's time per call)."""
    import torch.multiprocessing as mp

    out = Path(workdir) / "allreduce.json"
    init = Path(workdir) / "init"
    mp.spawn(
        _worker,
        args=(ranks, backend, f"file://{init}", list(sizes), str(out)),
        nprocs=ranks,
        join=True,
    )
    data = json.loads(out.read_text())
    return {int(size): summarize(samples) for size, samples in data.items()}


def _worker(
    rank: int, ranks: int, backend: str, init: str, sizes: list[int], out: str
) -> None:  # pragma: no cover - runs in a spawned process
    import torch
    import torch.distributed as dist

    cuda = backend == "nccl"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=ranks)
    try:
        results = {size: _time_size(dist, torch, device, size, cuda) for size in sizes}
        if rank == 0:
            tmp = out + ".tmp"
            Path(tmp).write_text(json.dumps(results))
            os.replace(tmp, out)
    finally:
        dist.destroy_process_group()


def _time_size(dist, torch, device, size: int, cuda: bool) -> list[float]:  # noqa: ANN001
    buf = torch.ones(max(size // 4, 1), dtype=torch.float32, device=device)
    inner = inner_calls(size)
    for _ in range(WARMUP):
        dist.all_reduce(buf)
    samples: list[float] = []
    while len(samples) < MAX_REPEATS:
        dist.barrier()
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            dist.all_reduce(buf)
        if cuda:
            torch.cuda.synchronize(device)
        took = torch.tensor([(time.perf_counter() - t0) / inner], dtype=torch.float64)
        took = took.to(device)
        dist.all_reduce(took, op=dist.ReduceOp.MAX)  # the slowest rank's time, on every rank
        samples.append(float(took.item()))
        # the same decision on every rank: it depends on the reduced samples only
        if len(samples) >= MIN_REPEATS and sum(samples) * inner >= TIME_PER_SIZE_S:
            break
    return samples
