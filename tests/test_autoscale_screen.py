"""The screening search with a spare worker is the sequential search (guesses only add speed)."""

from __future__ import annotations

from concurrent.futures import Executor, Future

import capsim.planning.autoscaled_screen as scr
from capsim.load import load_catalog, load_scenario
from capsim.planning.autoscaled_screen import knobs, screen_candidate


class _Lazy(Future):
    """A future that runs its call only when its result is asked for (never done before)."""

    def __init__(self, fn, args):
        super().__init__()
        self.fn, self.args = fn, args

    def result(self, timeout=None):
        if not self.done():
            self.set_result(self.fn(*self.args))
        return super().result(timeout)


class LazyPool(Executor):
    """A spare worker whose guesses are always still running when the search looks at them."""

    def __init__(self):
        self.submitted: list = []

    def submit(self, fn, /, *args, **kwargs):
        self.submitted.append(args[0][5])
        return _Lazy(fn, args)


def _small():
    """The embedding scenario at 150 req/s with a p99 target of 80 ms: on a T4 the search
    screens 60% (passes), 90% (fails; the spare's guess) and 80% (passes; guessed here)."""
    cat = load_catalog()
    s = load_scenario("scenarios/embedding_autoscaled.yaml", cat)
    arrivals = s.traffic.arrivals.model_copy(update={"rate_rps": 150.0})
    traffic = s.traffic.model_copy(update={"arrivals": arrivals})
    slo = s.slo.model_copy(update={"latency_ms": 80.0})
    return s.model_copy(update={"traffic": traffic, "slo": slo}), cat


def test_screen_with_a_busy_spare_is_the_sequential_search(monkeypatch):
    s, cat = _small()
    here = []  # guesses screened in this process while the spare was busy
    done = scr._done
    monkeypatch.setattr(scr, "_done", lambda v: here.append(v) or done(v))
    alone = screen_candidate(s, cat, "t4", "fp16", 1, 3)
    pool = LazyPool()
    spared = screen_candidate(s, cat, "t4", "fp16", 1, 3, spare=pool)
    assert pool.submitted and here, "guesses went both to the spare and here"
    assert knobs(spared.pick) == knobs(alone.pick) == "target 80, replicas 1-4"
    assert [knobs(x) for x in spared.ladder] == [knobs(x) for x in alone.ladder]

    def runs(sc):
        return [
            (knobs(t.spec), t.result.runs[0].scalars, t.result.runs[0].quantiles) for t in sc.trials
        ]

    assert runs(spared) == runs(alone)  # every screened run's numbers, in the same order
