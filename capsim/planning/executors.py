"""Where many simulations run: ``--executor local``, ``dask://HOST:PORT`` or ``dask-local:N``.

:func:`open_executor` turns the option's text into a :class:`concurrent.futures.Executor`
that :func:`capsim.planning.parallel.run_tasks` uses, or ``None`` for the local default (a
process pool of ``--jobs`` workers). Every task is a plain picklable tuple with its own seed,
and :func:`~capsim.planning.parallel.run_tasks` returns results in task order, so a plan run
on a Dask cluster prints the same numbers as one run on local processes.

Dask (``pip install 'capsim[dask]'``) is imported only when a ``dask`` executor is asked for.
A remote cluster's workers need capsim installed (the same version) to unpickle the tasks.

>>> parse_executor("local")
('local', None)
>>> parse_executor("dask://10.0.0.5:8786")
('dask', 'tcp://10.0.0.5:8786')
>>> parse_executor("dask-local:4")
('dask-local', 4)
>>> parse_executor("dask-local:0")
Traceback (most recent call last):
...
capsim.errors.InputError: --executor: 'dask-local:0': the worker count must be 1 to 256; accepted: local, dask://HOST:PORT or dask-local:N
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

from capsim.errors import InputError

ACCEPTED = "local, dask://HOST:PORT or dask-local:N"
_REMOTE = re.compile(r"^dask://([A-Za-z0-9_.\-\[\]:]+):(\d{1,5})$")
_LOCAL = re.compile(r"^dask-local:(-?\d+)$")


def _bad(text: str, why: str) -> InputError:
    return InputError(f"'{text}': {why}; accepted: {ACCEPTED}", where="--executor")


def parse_executor(text: str) -> tuple[str, str | int | None]:
    """``(kind, target)``: ``('local', None)``, ``('dask', 'tcp://H:P')`` or ``('dask-local', N)``."""
    t = text.strip()
    if t == "local":
        return "local", None
    if m := _REMOTE.match(t):
        port = int(m.group(2))
        if not 1 <= port <= 65535:
            raise _bad(text, f"port {port} is not in 1-65535")
        return "dask", f"tcp://{m.group(1)}:{port}"
    if m := _LOCAL.match(t):
        n = int(m.group(1))
        if not 1 <= n <= 256:
            raise _bad(text, "the worker count must be 1 to 256")
        return "dask-local", n
    raise _bad(text, "not an executor")


def _distributed():
    """The ``distributed`` package, or an error saying how to install it."""
    try:
        import distributed  # optional: the dask extra
    except ImportError:
        raise InputError(
            "a Dask executor needs dask[distributed]: pip install 'capsim[dask]'",
            where="--executor",
        ) from None
    return distributed


@contextmanager
def open_executor(text: str | None) -> Iterator[Executor | None]:
    """The executor ``text`` names, open for the ``with`` block (None: local processes).

    ``dask-local:N`` starts a cluster of N single-threaded worker processes on this machine and
    closes it afterwards; ``dask://HOST:PORT`` connects to a running scheduler (``dask
    scheduler``, with ``dask worker`` processes) and leaves the cluster running.
    """
    kind, target = parse_executor(text or "local")
    if kind == "local":
        yield None
        return
    distributed = _distributed()
    cluster = None
    try:
        if kind == "dask-local":
            cluster = distributed.LocalCluster(
                n_workers=int(str(target)), threads_per_worker=1, dashboard_address=None
            )
            client = distributed.Client(cluster)
        else:
            client = distributed.Client(str(target), timeout="10s")
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise _bad(text or "", f"cannot reach the Dask scheduler ({exc})") from None
    try:
        # pure=False: every task runs (no hashing of large scenario objects into keys)
        yield client.get_executor(pure=False)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
