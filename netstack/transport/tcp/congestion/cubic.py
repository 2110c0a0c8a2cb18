"""CUBIC congestion control (RFC 9438).

After a loss the window follows a cubic function of the time since congestion avoidance began
(section 4.2): concave up to the window where the loss happened, ``W_max`` (section 4.4), then
convex beyond it (section 4.5); never slower than Reno would grow (the Reno-friendly region,
section 4.3). Windows are kept in segments, as the RFC writes them, and the connection's
``cwnd`` in bytes. Time is the stack's clock, so simulations stay deterministic.
"""

from __future__ import annotations

from typing import Final

from netstack.clock import Clock
from netstack.transport.tcp.congestion.base import CongestionControl, RTTSource

C: Final = 0.4
"""RFC 9438 section 4.1.2: the constant C of the window function (segments per second cubed)."""
BETA_CUBIC: Final = 0.7
"""RFC 9438 section 4.1.2: the multiplicative decrease factor."""
ALPHA_CUBIC: Final = 3 * (1 - BETA_CUBIC) / (1 + BETA_CUBIC)
"""RFC 9438 section 4.3, equation (3): Reno-friendly additive increase per RTT, in segments."""


def cubic_k(w_max: float, cwnd_epoch: float) -> float:
    """K, the time for the window to grow back to ``w_max`` (RFC 9438 section 4.2, eq. (2))."""
    if cwnd_epoch >= w_max:
        return 0.0
    return float(((w_max - cwnd_epoch) / C) ** (1 / 3))


def w_cubic(t: float, k: float, w_max: float) -> float:
    """Return W_cubic(t) = C * (t - K)**3 + W_max (RFC 9438 section 4.2, equation (1))."""
    return C * (t - k) ** 3 + w_max


def cubic_target(w_next: float, cwnd: float) -> float:
    """Return the target: W_cubic(t + RTT) clamped to [cwnd, 1.5 * cwnd] (section 4.2)."""
    if w_next < cwnd:
        return cwnd
    if w_next > 1.5 * cwnd:
        return 1.5 * cwnd
    return w_next


class Cubic(CongestionControl):
    """RFC 9438 CUBIC with fast convergence; slow start as in RFC 5681 (section 4.10)."""

    name = "cubic"

    __slots__ = (
        "_after_timeout",
        "_clock",
        "_exact",
        "_rtt",
        "cwnd_prior",
        "epoch_start",
        "k",
        "w_est",
        "w_max",
    )

    def __init__(self, mss: int, initial_segments: int, clock: Clock, rtt: RTTSource) -> None:
        super().__init__(mss, initial_segments, clock, rtt)
        self._clock = clock
        self._rtt = rtt
        self._clear()

    def _clear(self) -> None:
        self.w_max: float | None = None  # segments; the window before the last reduction
        self.cwnd_prior: float | None = None  # segments; cwnd when ssthresh was last set
        self.epoch_start: float | None = None  # clock time the congestion avoidance began
        self.k = 0.0
        self.w_est = 0.0  # segments; the Reno-friendly estimate (section 4.3)
        self._after_timeout = False
        self._exact = float(self.cwnd)  # cwnd in bytes with its fraction

    def reset(self, mss: int) -> None:
        """Start over from the initial window, forgetting W_max and the epoch."""
        super().reset(mss)
        self._clear()

    def on_ack(self, acked: int, mss: int) -> None:
        """Slow start below ssthresh; above it follow W_cubic or W_est (sections 4.2-4.5)."""
        cwnd = self.cwnd
        if cwnd < self.ssthresh:
            # Section 4.10: slow start as Reno does (RFC 5681 section 3.1).
            self.cwnd = cwnd + min(acked, mss)
            return
        exact = self._exact
        if int(exact) != cwnd:
            exact = float(cwnd)  # recovery or a smaller MSS set the window meanwhile
        now = self._clock.now()
        segments = exact / mss
        start = self.epoch_start
        if start is None:
            start = self._start_epoch(now, segments)
        t = now - start
        w_max = self.w_max
        assert w_max is not None
        acked_segments = acked / mss
        # Section 4.3, equation (4): what Reno would have by now. Alpha becomes 1 once W_est
        # reaches the window before the last reduction.
        prior = self.cwnd_prior
        alpha = 1.0 if prior is None or self.w_est >= prior else ALPHA_CUBIC
        self.w_est += alpha * acked_segments / segments
        if w_cubic(t, self.k, w_max) < self.w_est:
            # Section 4.3: the Reno-friendly region.
            segments = self.w_est
        else:
            # Sections 4.4 (concave, cwnd < W_max) and 4.5 (convex): grow toward the target
            # by (target - cwnd) / cwnd per SMSS acknowledged.
            srtt = self._rtt.srtt or 0.0
            target = cubic_target(w_cubic(t + srtt, self.k, w_max), segments)
            segments += (target - segments) / segments * acked_segments
        exact = segments * mss
        self._exact = exact
        self.cwnd = int(exact)

    def _start_epoch(self, now: float, cwnd_epoch: float) -> float:
        """Begin a congestion avoidance stage with window ``cwnd_epoch`` (sections 4.2, 4.8)."""
        self.epoch_start = now
        w_max = self.w_max
        if self._after_timeout or w_max is None or w_max < cwnd_epoch:
            # Section 4.8: after a timeout (and here also before any loss) K is 0 and W_max is
            # the window at the start of congestion avoidance.
            self.w_max = cwnd_epoch
            self.k = 0.0
            self._after_timeout = False
        else:
            self.k = cubic_k(w_max, cwnd_epoch)
        self.w_est = cwnd_epoch  # section 4.3
        return now

    def _reduce(self, mss: int) -> None:
        """Sections 4.6 and 4.7: remember W_max (lowered by fast convergence), set ssthresh."""
        segments = self.cwnd / mss
        w_max = self.w_max
        if w_max is not None and segments < w_max:
            # Section 4.7: a loss before W_max was regained; release bandwidth to new flows.
            self.w_max = segments * (1 + BETA_CUBIC) / 2
        else:
            self.w_max = segments
        self.cwnd_prior = segments
        # Section 4.6 allows cwnd in place of the flight size; at least 2 SMSS.
        self.ssthresh = max(int(self.cwnd * BETA_CUBIC), 2 * mss)
        self.epoch_start = None

    def on_fast_retransmit(self, flight: int, mss: int) -> None:
        """Reduce to beta_cubic * cwnd and remember W_max (sections 4.6, 4.7)."""
        # Section 4.6: multiplicative decrease, cwnd = max(ssthresh, 2 SMSS).
        self._reduce(mss)
        self.cwnd = self.ssthresh
        self._exact = float(self.cwnd)

    def on_timeout(self, flight: int, mss: int, first: bool) -> None:
        """Collapse to one segment; the next epoch restarts with K = 0 (section 4.8)."""
        # Section 4.8: cwnd as Reno (one SMSS, RFC 5681 section 3.1), ssthresh by beta_cubic;
        # only the first timeout of a loss episode sets it.
        if first:
            self._reduce(mss)
        self.epoch_start = None
        self._after_timeout = True
        self.cwnd = mss
        self._exact = float(mss)
