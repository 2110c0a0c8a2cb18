"""TCP (RFC 9293) for netstack: a sans-I/O state machine (asyncio streams: netstack.adapters).

Split by concern (docs/tcp.md has the map): :mod:`.state` (states and every transition),
:mod:`.endpoint` (one connection: segment dispatch, timers, ICMP, close), :mod:`.handshake`
(SYN, SYN-ACK, simultaneous open), :mod:`.receiver` (acceptability, trimming, reassembly,
window, delayed ACK), :mod:`.sender` (output, ACK processing, RTT/RTO, persist),
:mod:`.sendbuffer` (the bounded send buffer), :mod:`.recovery` (Reno and SACK loss recovery),
:mod:`.sack` (scoreboard),
:mod:`.congestion` (NewReno and CUBIC), :mod:`.timers` (timers and the RTO estimator),
:mod:`.segment` (sequence-space helpers), :mod:`.isn` (ISNs and SYN cookies),
:mod:`.listener` and :mod:`.protocol` (demux, resets, ICMP).
"""

from __future__ import annotations

from netstack.transport.tcp.config import TCPConfig
from netstack.transport.tcp.endpoint import State, TCPEndpoint
from netstack.transport.tcp.listener import TCPListener
from netstack.transport.tcp.protocol import TCPProtocol

__all__ = ["State", "TCPConfig", "TCPEndpoint", "TCPListener", "TCPProtocol"]
