"""The congestion control interface and the parts every algorithm shares (RFC 5681).

Windows are bytes. Slow start (RFC 5681 section 3.1), the initial window (RFC 6928), the window
after fast recovery (RFC 6582 section 3.2 step 3) and the floor after a smaller MSS are the same
for every algorithm here; congestion avoidance and the reductions are each algorithm's own.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from netstack.clock import Clock

INITIAL_SSTHRESH = 1 << 30
"""RFC 5681 section 3.1: the initial ssthresh is "arbitrarily high"."""


class RTTSource(Protocol):
    """What an algorithm may read of the RTT estimator (RFC 6298): the smoothed RTT, if any."""

    @property
    def srtt(self) -> float | None:
        """The smoothed round-trip time in seconds, None before the first sample."""


class CongestionControl:
    """One connection's congestion window. Subclasses implement the four events."""

    name: ClassVar[str] = ""
    """The name ``TCPConfig.congestion`` uses, and ``TCPEndpoint.info()["congestion"]``."""

    __slots__ = ("cwnd", "initial_segments", "ssthresh")

    def __init__(self, mss: int, initial_segments: int, clock: Clock, rtt: RTTSource) -> None:
        self.initial_segments = max(1, initial_segments)
        self.cwnd = self.initial_segments * mss
        self.ssthresh = INITIAL_SSTHRESH

    @property
    def in_slow_start(self) -> bool:
        """Whether the window grows exponentially (cwnd below ssthresh)."""
        return self.cwnd < self.ssthresh

    def reset(self, mss: int) -> None:
        """Start over from the initial window for ``mss`` (the handshake fixed the MSS).

        RFC 6928 (or RFC 5681 section 3.1 with fewer than 5 segments): IW in segments.
        """
        self.cwnd = self.initial_segments * mss
        self.ssthresh = INITIAL_SSTHRESH

    def on_ack(self, acked: int, mss: int) -> None:
        """Grow the window for ``acked`` newly acknowledged bytes outside fast recovery."""
        raise NotImplementedError

    def on_fast_retransmit(self, flight: int, mss: int) -> None:
        """Reduce the window on entering fast recovery (a loss found by ACKs or SACK)."""
        raise NotImplementedError

    def on_timeout(self, flight: int, mss: int, first: bool) -> None:
        """Collapse the window after a retransmission timeout (``first`` of its loss episode)."""
        raise NotImplementedError

    def on_recovery_exit(self, flight: int, mss: int) -> None:
        """Deflate after a full ACK ends fast recovery (RFC 6582 section 3.2 step 3, option 1)."""
        self.cwnd = min(self.ssthresh, max(flight, mss) + mss)

    def on_mss_change(self, mss: int) -> None:
        """Keep the window at least one segment after the MSS shrinks (PMTU discovery)."""
        self.cwnd = max(self.cwnd, mss)
