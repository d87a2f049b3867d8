"""Sliding windows of request samples: a ring of time buckets plus a running total.

Adding a sample touches one bucket and the total (O(1)); a bucket that slides out of the
window is subtracted from the total once, when the ring next moves. Latency and
time-to-first-token go into fixed log-spaced histograms (20 % wide bins, 1 ms .. ~2 min), so
p50/p95/p99 are read from the total in a few dozen steps and are accurate to one bin. No
locks, no threads, no awaits: everything runs on the event loop that serves the requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["WINDOWS", "Aggregate", "Decision", "Sample", "Window", "WindowStats", "sample_bins"]

# Stats windows: name -> (span seconds, buckets).
WINDOWS: dict[str, tuple[float, int]] = {"1m": (60.0, 12), "5m": (300.0, 30), "1h": (3600.0, 60)}

_BIN_BASE = 1.2
_BIN_START_S = 0.001
_BINS = 64  # 1 ms * 1.2**64 ~ 117 s; the last bin holds everything slower
_LOG_BASE = math.log(_BIN_BASE)


def _bin(seconds: float) -> int:
    if seconds <= _BIN_START_S:
        return 0
    return min(_BINS - 1, int(math.log(seconds / _BIN_START_S) / _LOG_BASE))


def _bin_upper(index: int) -> float:
    return float(_BIN_START_S * _BIN_BASE ** (index + 1))


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished attempt (or one quality score) as the windows see it."""

    ok: bool | None = None  # None: neither success nor failure (client went away, quality only)
    latency_s: float | None = None
    ttft_s: float | None = None
    output_tokens: int = 0
    generation_s: float = 0.0  # first token -> end, for tokens per second
    cost_usd: float | None = None
    quality: float | None = None


class Aggregate:
    """Sums over some samples; a bucket and the running total are both one of these."""

    __slots__ = ("cost_n", "cost_sum", "fail", "gen_s", "lat", "lat_n", "ok", "out_tok",
                 "q_n", "q_sum", "ttft", "ttft_n")

    def __init__(self) -> None:
        self.ok = 0
        self.fail = 0
        self.lat_n = 0
        self.ttft_n = 0
        self.cost_n = 0
        self.cost_sum = 0.0
        self.out_tok = 0
        self.gen_s = 0.0
        self.q_n = 0
        self.q_sum = 0.0
        self.lat = [0] * _BINS
        self.ttft = [0] * _BINS

    def add(self, s: Sample, bins: tuple[int, int]) -> None:
        if s.ok is True:
            self.ok += 1
        elif s.ok is False:
            self.fail += 1
        if s.latency_s is not None:
            self.lat_n += 1
            self.lat[bins[0]] += 1
        if s.ttft_s is not None:
            self.ttft_n += 1
            self.ttft[bins[1]] += 1
        if s.cost_usd is not None:
            self.cost_n += 1
            self.cost_sum += s.cost_usd
        if s.generation_s > 0:
            self.out_tok += s.output_tokens
            self.gen_s += s.generation_s
        if s.quality is not None:
            self.q_n += 1
            self.q_sum += s.quality

    def merge(self, o: Aggregate) -> None:
        self.ok += o.ok
        self.fail += o.fail
        self.lat_n += o.lat_n
        self.ttft_n += o.ttft_n
        self.cost_n += o.cost_n
        self.cost_sum += o.cost_sum
        self.out_tok += o.out_tok
        self.gen_s += o.gen_s
        self.q_n += o.q_n
        self.q_sum += o.q_sum
        if o.lat_n:
            self.lat = [a + b for a, b in zip(self.lat, o.lat, strict=True)]
        if o.ttft_n:
            self.ttft = [a + b for a, b in zip(self.ttft, o.ttft, strict=True)]

    def subtract(self, o: Aggregate) -> None:
        self.ok -= o.ok
        self.fail -= o.fail
        self.lat_n -= o.lat_n
        self.ttft_n -= o.ttft_n
        self.cost_n -= o.cost_n
        self.cost_sum -= o.cost_sum
        self.out_tok -= o.out_tok
        self.gen_s -= o.gen_s
        self.q_n -= o.q_n
        self.q_sum -= o.q_sum
        if o.lat_n:
            self.lat = [a - b for a, b in zip(self.lat, o.lat, strict=True)]
        if o.ttft_n:
            self.ttft = [a - b for a, b in zip(self.ttft, o.ttft, strict=True)]


def _sum(a: Aggregate, b: Aggregate) -> Aggregate:
    total = Aggregate()
    total.merge(a)
    total.merge(b)
    return total


def sample_bins(sample: Sample) -> tuple[int, int]:
    """Histogram bins of a sample, computed once for all the windows it goes into."""
    return (0 if sample.latency_s is None else _bin(sample.latency_s),
            0 if sample.ttft_s is None else _bin(sample.ttft_s))


@dataclass(frozen=True, slots=True)
class Decision:
    """The few numbers routing reads from the decision window on every request."""

    requests: int
    error_rate: float | None
    latency_p95_s: float | None
    ttft_p95_s: float | None


def _percentile(hist: list[int], n: int, q: float) -> float | None:
    if n <= 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for index, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return _bin_upper(index)
    return _bin_upper(_BINS - 1)


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One window read at one instant. Percentiles are bin upper bounds (within 20 %)."""

    span_s: float
    requests: int  # samples with a success/failure verdict
    successes: int
    failures: int
    error_rate: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_p99_s: float | None
    output_tokens_per_s: float | None
    cost_usd_total: float
    cost_per_request_usd: float | None
    quality: float | None
    quality_samples: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {name: getattr(self, name) for name in self.__slots__}


class Window:
    """A sliding window of ``span_s`` seconds in ``buckets`` buckets."""

    __slots__ = ("_bucket_s", "_buckets", "_head", "_stamps", "_total", "span_s")

    def __init__(self, span_s: float, buckets: int) -> None:
        if span_s <= 0 or buckets < 1:
            raise ValueError("a window needs a positive span and at least one bucket")
        self.span_s = span_s
        self._bucket_s = span_s / buckets
        self._buckets = [Aggregate() for _ in range(buckets)]
        self._stamps = [-1] * buckets  # bucket epoch each slot holds, -1: empty
        self._head = -1  # newest epoch seen
        self._total = Aggregate()

    def _advance(self, now: float) -> int:
        epoch = int(now // self._bucket_s)
        if epoch <= self._head:  # same bucket (a monotonic clock never goes back)
            return self._head
        n = len(self._buckets)
        if epoch - self._head >= n:  # everything slid out
            self._buckets = [Aggregate() for _ in range(n)]
            self._stamps = [-1] * n
            self._total = Aggregate()
        else:
            for e in range(self._head + 1, epoch + 1):
                slot = e % n
                if self._stamps[slot] >= 0:
                    self._total.subtract(self._buckets[slot])
                    self._buckets[slot] = Aggregate()
                    self._stamps[slot] = -1
        self._head = epoch
        return epoch

    def epoch(self, now: float) -> int:
        return int(now // self._bucket_s)

    def add(self, now: float, sample: Sample, bins: tuple[int, int] | None = None) -> None:
        bins = bins or sample_bins(sample)
        epoch = self._advance(now)
        slot = epoch % len(self._buckets)
        self._stamps[slot] = epoch
        self._buckets[slot].add(sample, bins)
        self._total.add(sample, bins)

    def merge(self, now: float, agg: Aggregate) -> None:
        """Add a whole accumulator (one tick of samples) at ``now``."""
        epoch = self._advance(now)
        slot = epoch % len(self._buckets)
        self._stamps[slot] = epoch
        self._buckets[slot].merge(agg)
        self._total.merge(agg)

    def retract(self, at: float, sample: Sample) -> None:
        """Take back ``sample``, added at ``at`` (a feedback vote replaced by a later one);
        nothing if its bucket has slid out of the window already."""
        epoch = int(at // self._bucket_s)
        slot = epoch % len(self._buckets)
        if self._stamps[slot] != epoch:
            return
        gone = Aggregate()
        gone.add(sample, sample_bins(sample))
        self._buckets[slot].subtract(gone)
        self._total.subtract(gone)

    def counts(self, now: float) -> tuple[int, int]:
        """(successes, failures) in the window: what a breaker needs, without percentiles."""
        self._advance(now)
        return self._total.ok, self._total.fail

    def total(self, now: float) -> Aggregate:
        """The window's running total now (live: read it, do not change it)."""
        self._advance(now)
        return self._total

    def decision(self, now: float, others: Aggregate | None = None) -> Decision:
        """The decision numbers, with ``others`` (the other replicas' windows, summed) added:
        every process uses the same histogram bins, so the fleet's p95 is read from the
        summed histograms, as accurate as one process's."""
        self._advance(now)
        t = self._total
        if others is not None:
            t = _sum(t, others)
        requests = t.ok + t.fail
        return Decision(requests, t.fail / requests if requests else None,
                        _percentile(t.lat, t.lat_n, 0.95), _percentile(t.ttft, t.ttft_n, 0.95))

    def stats(self, now: float) -> WindowStats:
        self._advance(now)
        t = self._total
        requests = t.ok + t.fail
        return WindowStats(
            span_s=self.span_s,
            requests=requests,
            successes=t.ok,
            failures=t.fail,
            error_rate=t.fail / requests if requests else None,
            latency_p50_s=_percentile(t.lat, t.lat_n, 0.50),
            latency_p95_s=_percentile(t.lat, t.lat_n, 0.95),
            latency_p99_s=_percentile(t.lat, t.lat_n, 0.99),
            ttft_p50_s=_percentile(t.ttft, t.ttft_n, 0.50),
            ttft_p95_s=_percentile(t.ttft, t.ttft_n, 0.95),
            ttft_p99_s=_percentile(t.ttft, t.ttft_n, 0.99),
            output_tokens_per_s=t.out_tok / t.gen_s if t.gen_s > 0 else None,
            cost_usd_total=round(max(t.cost_sum, 0.0), 12),
            cost_per_request_usd=t.cost_sum / t.cost_n if t.cost_n else None,
            quality=t.q_sum / t.q_n if t.q_n else None,
            quality_samples=t.q_n,
        )
