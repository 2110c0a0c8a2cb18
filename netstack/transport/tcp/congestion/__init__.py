"""Congestion control behind one interface, chosen per connection by ``TCPConfig.congestion``.

:class:`CongestionControl` is what the sender sees: the congestion window ``cwnd`` and slow start
threshold ``ssthresh`` in bytes, and one method per event (an ACK of new data, a loss found by
fast retransmit, a retransmission timeout, the end of fast recovery, a smaller MSS). Deciding
*that* a loss happened and *which* bytes to resend is loss recovery's job (:mod:`..recovery`);
this package only decides how big the window is.

Implementations: :class:`NewReno` (RFC 5681, RFC 6582) and :class:`Cubic` (RFC 9438).
"""

from __future__ import annotations

from typing import Final

from netstack.clock import Clock
from netstack.transport.tcp.congestion.base import CongestionControl, RTTSource
from netstack.transport.tcp.congestion.cubic import Cubic
from netstack.transport.tcp.congestion.newreno import NewReno

ALGORITHMS: Final[dict[str, type[CongestionControl]]] = {"newreno": NewReno, "cubic": Cubic}
"""The congestion controls ``TCPConfig.congestion`` may name."""


def new_congestion_control(
    name: str, mss: int, initial_segments: int, clock: Clock, rtt: RTTSource
) -> CongestionControl:
    """Return a fresh controller of the algorithm called ``name`` (a key of :data:`ALGORITHMS`)."""
    try:
        algorithm = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown congestion control {name!r}") from None
    return algorithm(mss, initial_segments, clock, rtt)


__all__ = [
    "ALGORITHMS",
    "CongestionControl",
    "Cubic",
    "NewReno",
    "RTTSource",
    "new_congestion_control",
]
