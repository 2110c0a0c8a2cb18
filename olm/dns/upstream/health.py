"""The health of one upstream as one group sees it: its latency, its failures, up or down.

A group keeps one :class:`Health` per upstream. Each try ends in :meth:`Health.success` (with
the answer's latency) or :meth:`Health.failure`. The latency is an exponentially weighted
moving average, as AdGuard's dnsproxy and SmartDNS rank their upstreams: the first sample sets
it, each later one moves it by ``alpha`` of the difference. After ``down_after`` failures in a
row the upstream is down; one success brings it back up.
"""

from __future__ import annotations

import bisect
from typing import Final, TypedDict

__all__ = ["ALPHA", "DOWN_AFTER", "LATENCY_BUCKETS", "Health", "HealthSnapshot"]

#: Weight of a new latency sample in the moving average.
ALPHA: Final = 0.2
#: Failures in a row that mark an upstream down.
DOWN_AFTER: Final = 3
#: Upper bounds (seconds) of the latency histogram's buckets, as Prometheus histograms count
#: them; a last, unbounded bucket follows.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HealthSnapshot(TypedDict):
    """What :meth:`Health.snapshot` reports about one upstream."""

    url: str
    latency_ms: float | None
    failures_in_row: int
    down: bool
    answers: int
    failures: int


class Health:
    """Latency and failure record of one upstream.

    * ``latency``: the moving average of answer latencies in seconds; None before the first.
    * ``failures_in_row``: failures since the last success.
    * ``answers``, ``failures``: totals; ``failure_kinds``: failures by kind (``timeout``,
      ``error``, ``rcode``, ``probe``).
    * ``latency_counts``, ``latency_sum``: every answer's latency, counted per bucket of
      :data:`LATENCY_BUCKETS` (not cumulative; one more for the rest) and summed.
    * ``down``: ``down_after`` failures came in a row and no success since.
    * ``probe_at``, ``probe_wait``: when the next background probe of a down upstream is due
      (event loop time) and the interval that led there; kept by the group.
    """

    __slots__ = (
        "alpha",
        "answers",
        "down",
        "down_after",
        "failure_kinds",
        "failures",
        "failures_in_row",
        "latency",
        "latency_counts",
        "latency_sum",
        "probe_at",
        "probe_wait",
        "url",
    )

    def __init__(self, url: str, *, alpha: float = ALPHA, down_after: int = DOWN_AFTER) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must lie in (0, 1]")
        if down_after < 1:
            raise ValueError("down_after must be at least 1")
        self.url = url
        self.alpha = alpha
        self.down_after = down_after
        self.latency: float | None = None
        self.failures_in_row = 0
        self.answers = 0
        self.failures = 0
        self.failure_kinds: dict[str, int] = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.down = False
        self.probe_at = 0.0
        self.probe_wait = 0.0

    def success(self, latency: float) -> bool:
        """Record an answer after ``latency`` seconds; return True if it marks the upstream up."""
        average = self.latency
        self.latency = latency if average is None else average + self.alpha * (latency - average)
        self.answers += 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        self.latency_sum += latency
        self.failures_in_row = 0
        if self.down:
            self.down = False
            return True
        return False

    def failure(self, kind: str = "error") -> bool:
        """Record a failed try of ``kind``; return True if it marks the upstream down."""
        self.failures += 1
        kinds = self.failure_kinds
        kinds[kind] = kinds.get(kind, 0) + 1
        self.failures_in_row += 1
        if not self.down and self.failures_in_row >= self.down_after:
            self.down = True
            return True
        return False

    def snapshot(self) -> HealthSnapshot:
        """Return the record as plain values, the latency in milliseconds."""
        latency = self.latency
        return {
            "url": self.url,
            "latency_ms": None if latency is None else round(latency * 1000, 3),
            "failures_in_row": self.failures_in_row,
            "down": self.down,
            "answers": self.answers,
            "failures": self.failures,
        }

    def __repr__(self) -> str:
        state = "down" if self.down else "up"
        latency = "-" if self.latency is None else f"{self.latency * 1000:.1f} ms"
        return f"Health({self.url}, {state}, {latency}, {self.failures_in_row} failures in a row)"
