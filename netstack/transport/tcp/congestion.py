"""Congestion control: slow start, congestion avoidance, NewReno reductions (RFC 5681, 6582).

This object only holds the window arithmetic; the sender decides when a loss happened (three
duplicate ACKs or the SACK scoreboard, RFC 6675; or a retransmission timeout) and which bytes
to retransmit.
"""

from __future__ import annotations


class NewReno:
    """The congestion window ``cwnd`` and slow start threshold ``ssthresh``, in bytes."""

    __slots__ = ("_acked", "cwnd", "ssthresh")

    def __init__(self, mss: int, initial_segments: int) -> None:
        # RFC 6928 (or RFC 5681 section 3.1 with initial_segments <= 4): IW in segments.
        self.cwnd = max(1, initial_segments) * mss
        self.ssthresh = 1 << 30  # RFC 5681 section 3.1: "arbitrarily high"
        self._acked = 0

    @property
    def in_slow_start(self) -> bool:
        """Whether the window grows exponentially (cwnd below ssthresh)."""
        return self.cwnd < self.ssthresh

    def on_ack(self, acked: int, mss: int) -> None:
        """Grow the window for ``acked`` newly acknowledged bytes outside fast recovery."""
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
        """Halve the window on entering fast recovery (RFC 5681 equation (4), RFC 6675 5)."""
        self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = self.ssthresh
        self._acked = 0

    def on_timeout(self, flight: int, mss: int, first: bool) -> None:
        """Collapse the window after a retransmission timeout (RFC 5681 section 3.1).

        Only the first timeout of a loss episode lowers ssthresh (RFC 5681 equation (4) note).
        """
        if first:
            self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = mss  # the loss window LW = 1 SMSS
        self._acked = 0

    def on_recovery_exit(self, flight: int, mss: int) -> None:
        """Deflate after a full ACK ends fast recovery (RFC 6582 section 3.2 step 3, option 1)."""
        self.cwnd = min(self.ssthresh, max(flight, mss) + mss)
        self._acked = 0

    def on_mss_change(self, mss: int) -> None:
        """Keep the window at least one segment after the MSS shrinks (PMTU discovery)."""
        self.cwnd = max(self.cwnd, mss)
