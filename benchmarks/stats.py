"""The few statistics the benchmarks report, computed one way for all of them."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def latency_summary(seconds: list[float]) -> dict:
    """n, p50, p99, max and mean of latencies given in seconds, in milliseconds."""
    if not seconds:
        return {"n": 0}
    ms = [x * 1000 for x in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }
