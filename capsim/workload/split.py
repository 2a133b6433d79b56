"""Routing by request size: split one request stream into per-pool sub-streams.

Size thresholds are exact splits (each request goes to one bucket by its prompt + output
tokens, as Mélange routes, Griggs et al. 2024, arXiv:2404.14527), so each pool can be
simulated alone on its sub-stream and the per-request latencies merged afterwards.

>>> import numpy as np
>>> from capsim.workload.arrivals import RequestStream
>>> st = RequestStream(np.array([0.0, 1.0, 2.0]), 3.0, np.array([10, 900, 50]), np.array([5, 200, 10]))
>>> buckets(st, [100]).tolist()
[0, 1, 0]
>>> sub = substream(st, buckets(st, [100]) == 0)
>>> sub.arrival.tolist(), sub.prompt_tokens.tolist()
([0.0, 2.0], [10, 50])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from capsim.workload.arrivals import RequestStream


def buckets(stream: RequestStream, thresholds: Sequence[int]) -> np.ndarray:
    """Bucket index of each request: how many thresholds its prompt + output reaches.

    >>> import numpy as np
    >>> st = RequestStream(np.zeros(3), 1.0, np.array([99, 100, 5]), np.array([0, 0, 500]))
    >>> buckets(st, [100, 400]).tolist()
    [0, 1, 2]
    """
    assert stream.prompt_tokens is not None and stream.output_tokens is not None
    size = np.asarray(stream.prompt_tokens) + np.asarray(stream.output_tokens)
    return np.searchsorted(np.asarray(thresholds), size, side="right")


def substream(stream: RequestStream, mask: np.ndarray) -> RequestStream:
    """The requests selected by ``mask``, in arrival order, with the same horizon (shared
    prefixes are not split: a scenario with ``mix`` refuses shared-prefix traffic).

    >>> import numpy as np
    >>> st = RequestStream(np.array([0.0, 1.0]), 2.0, np.array([1, 2]), np.array([3, 4]))
    >>> len(substream(st, np.array([False, True])))
    1
    """
    p, o = stream.prompt_tokens, stream.output_tokens
    return replace(
        stream,
        arrival=stream.arrival[mask],
        prompt_tokens=None if p is None else p[mask],
        output_tokens=None if o is None else o[mask],
        prefixes=None,
    )


def least_work(
    arrival: np.ndarray, size: np.ndarray, seconds_per_token: Sequence[float]
) -> np.ndarray:
    """Pool index of each request under least-outstanding-work routing normalised by speed.

    Pool ``p`` takes ``size * seconds_per_token[p]`` seconds of its time per request (its
    speed: the inverse of the pool's token throughput) and works off its backlog at one second
    per second; each request goes to the pool whose backlog plus the request's own work is
    smallest (the earliest estimated finish). The router knows only what it has sent, so the
    split is exact given the arrivals and sizes, and each pool can be simulated alone.

    >>> import numpy as np
    >>> least_work(np.array([0.0, 0.0, 0.0]), np.array([10, 10, 10]), [1.0, 2.0]).tolist()
    [0, 0, 1]
    """
    spt = np.asarray(seconds_per_token, dtype=float)
    backlog = np.zeros(len(spt))
    out = np.empty(len(arrival), dtype=np.int64)
    t_prev = 0.0
    for i, (t, n) in enumerate(zip(arrival.tolist(), np.asarray(size).tolist(), strict=True)):
        backlog = np.maximum(backlog - (t - t_prev), 0.0)
        t_prev = t
        w = n * spt
        p = int(np.argmin(backlog + w))
        out[i] = p
        backlog[p] += w[p]
    return out
