"""Segment-level helpers: lengths in sequence space, MSS from MTU, replies to stray segments."""

from __future__ import annotations

from typing import Final

from netstack.header.seqnum import seq_add
from netstack.header.tcp import ACK, FIN, RST, SYN, TCPHeader

IPV4_TCP_OVERHEAD: Final = 40
"""IPv4 and TCP headers without options (RFC 9293 section 3.7.1: MSS = MTU - 40)."""
IPV6_TCP_OVERHEAD: Final = 60
"""IPv6 and TCP headers without options (RFC 8200 section 8.3)."""
TIMESTAMP_OPTION_LEN: Final = 12
"""Bytes the aligned timestamps option takes in every segment (RFC 7323 Appendix A)."""
MIN_MSS: Final = 88
"""Floor under PMTU-driven MSS reductions (68-byte IPv4 minimum MTU, less headers, rounded)."""


def segment_length(flags: int, data_len: int) -> int:
    """SEG.LEN: data octets plus one each for SYN and FIN (RFC 9293 section 3.4)."""
    return data_len + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)


def mss_for_mtu(mtu: int, family_len: int) -> int:
    """Return the MSS to advertise for a path of ``mtu`` bytes (RFC 9293 section 3.7.1)."""
    overhead = IPV4_TCP_OVERHEAD if family_len == 4 else IPV6_TCP_OVERHEAD
    return max(mtu - overhead, MIN_MSS)


def reset_for(hdr: TCPHeader, data_len: int) -> TCPHeader | None:
    """Return the RST answering a segment of no connection (RFC 9293 section 3.10.7.1).

    If the segment has ACK set the reset takes its sequence number from SEG.ACK; otherwise it
    has sequence number zero and acknowledges SEG.SEQ + SEG.LEN. A RST is never answered.
    """
    if hdr.flags & RST:
        return None
    if hdr.flags & ACK:
        return TCPHeader(hdr.dst_port, hdr.src_port, hdr.ack, 0, RST, 0)
    ack = seq_add(hdr.seq, segment_length(hdr.flags, data_len))
    return TCPHeader(hdr.dst_port, hdr.src_port, 0, ack, RST | ACK, 0)
