"""Tunable knobs of the TCP implementation: every bound and timer has its setting here."""

from __future__ import annotations

from dataclasses import dataclass

from netstack.transport.tcp.congestion import ALGORITHMS


@dataclass(slots=True)
class TCPConfig:
    """Limits, timers and feature switches for every TCP endpoint of one protocol instance.

    Times are seconds on the stack's clock; sizes are bytes.
    """

    send_buffer: int = 256 * 1024
    """Bytes the application may queue that are not yet acknowledged (back-pressure above)."""
    receive_buffer: int = 256 * 1024
    """Bytes received in order and not yet taken by the application (the advertised window)."""
    reassembly_limit: int = 256 * 1024
    """Bytes of out-of-order data held for reassembly; more is dropped and counted."""
    reassembly_segments: int = 256
    """Disjoint out-of-order ranges held for reassembly."""
    window_scale: bool = True
    """Offer the window scale option (RFC 7323 section 2)."""
    timestamps: bool = True
    """Offer the timestamps option (RFC 7323 sections 3-5: RTTM and PAWS)."""
    sack: bool = True
    """Offer SACK (RFC 2018) and use a scoreboard for recovery (RFC 6675)."""
    nodelay: bool = False
    """Disable the Nagle algorithm (RFC 9293 section 3.7.4) on new endpoints."""
    default_mss: int = 536
    """Send MSS when the peer sends no MSS option (RFC 9293 section 3.7.1: 536 for IPv4)."""
    default_mss_v6: int = 1220
    """Send MSS for IPv6 peers without an MSS option (RFC 8200 section 8.3: 1280 - 60)."""
    initial_window_segments: int = 10
    """Initial congestion window in segments (RFC 6928)."""
    congestion: str = "newreno"
    """Congestion control of new connections: ``"newreno"`` (RFC 5681) or ``"cubic"`` (RFC 9438)."""
    initial_rto: float = 1.0
    """RTO before the first RTT sample (RFC 6298 section 2.1)."""
    min_rto: float = 0.2
    """Lower bound on the RTO (RFC 6298 section 2.4 says 1 s; Linux uses 200 ms)."""
    max_rto: float = 60.0
    """Upper bound on the backed-off RTO (RFC 6298 section 2.5)."""
    max_retries: int = 15
    """Retransmissions of one segment before the connection fails with ETIMEDOUT."""
    syn_retries: int = 6
    """SYN retransmissions before connect() fails with ETIMEDOUT."""
    synack_retries: int = 5
    """SYN-ACK retransmissions before a half-open connection is dropped."""
    delayed_ack: float = 0.04
    """Longest an ACK is held back (RFC 9293 section 3.8.6.3: under 0.5 s; RFC 1122: 200 ms)."""
    msl: float = 30.0
    """Maximum segment lifetime; TIME-WAIT lasts 2 * msl (RFC 9293 section 3.4.2)."""
    fin_wait2_timeout: float = 60.0
    """How long a connection the application closed may wait in FIN-WAIT-2 for the peer."""
    persist_min: float = 0.2
    """First zero-window probe interval; doubles up to max_rto (RFC 9293 section 3.8.6.1)."""
    keepalive: bool = False
    """Send keep-alives on idle connections (RFC 9293 section 3.8.4; off by default)."""
    keepalive_idle: float = 7200.0
    """Idle time before the first keep-alive (RFC 1122 section 4.2.3.6: at least two hours)."""
    keepalive_interval: float = 75.0
    """Time between unanswered keep-alives."""
    keepalive_count: int = 9
    """Unanswered keep-alives before the connection fails with ETIMEDOUT."""
    syn_cookies: bool = True
    """Answer SYNs with a SYN cookie when a listener's backlog is full (RFC 4987 section 3.6)."""
    challenge_ack_rate: float = 1000.0
    """Challenge ACKs per second for the whole protocol (RFC 5961 section 7)."""
    challenge_ack_burst: int = 100
    """Challenge ACKs that may be sent back to back."""

    def __post_init__(self) -> None:
        if self.congestion not in ALGORITHMS:
            names = ", ".join(sorted(ALGORITHMS))
            raise ValueError(f"unknown congestion control {self.congestion!r} (one of {names})")
