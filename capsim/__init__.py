"""capsim: the cheapest GPU fleet that meets a p99 latency target, found by simulation."""

__version__ = "0.1.0"
