"""TCP (RFC 9293) for netstack: a sans-I/O state machine with asyncio streams on top.

Split by concern: :mod:`.segment` (sequence-space helpers), :mod:`.endpoint` (the state
machine, sender and receiver logic), :mod:`.sender` (send buffer), :mod:`.receiver`
(out-of-order reassembly), :mod:`.sack` (scoreboard), :mod:`.congestion` (NewReno),
:mod:`.timers` (timers and RTO), :mod:`.isn` (ISNs and SYN cookies), :mod:`.listener`,
:mod:`.protocol` (demux, resets, ICMP) and :mod:`.streams` (asyncio API).
"""

from __future__ import annotations

from netstack.transport.tcp.config import TCPConfig
from netstack.transport.tcp.endpoint import State, TCPEndpoint
from netstack.transport.tcp.listener import TCPListener
from netstack.transport.tcp.protocol import TCPProtocol

__all__ = ["State", "TCPConfig", "TCPEndpoint", "TCPListener", "TCPProtocol"]
