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
