"""NewReno: slow start, congestion avoidance and halving on loss (RFC 5681, RFC 6582).

The window arithmetic only; when a loss happened (three duplicate ACKs or the SACK scoreboard,
RFC 6675; or a retransmission timeout) and which bytes to resend is loss recovery's decision.
"""

from __future__ import annotations

from netstack.clock import Clock
from netstack.transport.tcp.congestion.base import CongestionControl, RTTSource


class NewReno(CongestionControl):
    """Additive increase by one SMSS per RTT, multiplicative decrease by half."""

    name = "newreno"

    __slots__ = ("_acked",)

    def __init__(self, mss: int, initial_segments: int, clock: Clock, rtt: RTTSource) -> None:
        super().__init__(mss, initial_segments, clock, rtt)
        self._acked = 0

    def reset(self, mss: int) -> None:
        """Start over from the initial window."""
        super().reset(mss)
        self._acked = 0

    def on_ack(self, acked: int, mss: int) -> None:
        """Slow start below ssthresh, then one SMSS per window of ACKed bytes."""
        if self.cwnd < self.ssthresh:
            # RFC 5681 section 3.1 equation (2), with byte counting capped at one SMSS.
            self.cwnd += min(acked, mss)
            return
        # RFC 5681 section 3.1: about one SMSS per RTT in congestion avoidance (RFC 3465 2.1).
        self._acked += acked
        if self._acked >= self.cwnd:
            self._acked -= self.cwnd
            self.cwnd += mss

    def on_fast_retransmit(self, flight: int, mss: int) -> None:
        """Halve: ssthresh = max(FlightSize / 2, 2 SMSS), cwnd = ssthresh."""
        # RFC 5681 section 3.2 step 2, equation (4); RFC 6675 section 5 step 4.2.
        self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = self.ssthresh
        self._acked = 0

    def on_timeout(self, flight: int, mss: int, first: bool) -> None:
        """Collapse cwnd to one SMSS; halve ssthresh on the first timeout of an episode."""
        # RFC 5681 section 3.1: only the first timeout of a loss episode lowers ssthresh
        # (the note to equation (4)); the loss window LW is one SMSS.
        if first:
            self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = mss
        self._acked = 0

    def on_recovery_exit(self, flight: int, mss: int) -> None:
        """Deflate to min(ssthresh, FlightSize + SMSS) (RFC 6582 section 3.2 step 3)."""
        super().on_recovery_exit(flight, mss)
        self._acked = 0
