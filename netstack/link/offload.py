"""Segmentation offload over a TUN opened with IFF_VNET_HDR: virtio_net_hdr, GSO and GRO.

With ``IFF_VNET_HDR`` every packet read from or written to a TUN descriptor is preceded by a
10-byte ``struct virtio_net_hdr`` (include/uapi/linux/virtio_net.h), and after the
``TUNSETOFFLOAD`` ioctl (include/uapi/linux/if_tun.h: TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6) the
kernel may hand us TCP "super-packets" of up to 64 KiB and accept the same from us. That moves
many TCP segments per system call, the cost that dominates a userspace stack on a TUN.

This module is pure (no I/O):

* :class:`VirtioNetHdr` parses and builds the header. Its fields are in the host's byte order
  (a legacy virtio header on a little-endian host, or with TUNSETVNETLE unset on the host's own
  order), so the struct uses native order without padding.
* :func:`coalesce` turns a batch of outbound raw IP packets into frames (header + packet),
  merging runs of consecutive TCP segments of one flow into one GSO packet (``gso_type``
  TCPV4/TCPV6, ``gso_size`` = the segments' payload size, ``NEEDS_CSUM`` with the pseudo-header
  sum in the TCP checksum field), exactly so that the kernel's segmentation gives back the
  original segments byte for byte.
* :func:`receive_frame` turns one frame read from the TUN into raw IP packets for the stack:
  it completes a partial checksum (``NEEDS_CSUM``) and hands a TCP GSO packet over whole (one
  large in-window segment: the receiver's GRO) or, when asked, split the way the kernel would.
* :func:`segment_gso` is that kernel-style split (net/ipv4/tcp_offload.c: tcp_gso_segment).

Bad input raises :class:`~netstack.errors.ParseError` only; its reason is the counter to bump.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from netstack.errors import ParseError
from netstack.header.checksum import checksum, ones_sum, pseudo_header_sum
from netstack.header.ipv4 import (
    FLAG_MF,
    IPV4_ADDRESSES,
    IPV4_CHECKSUM_AT,
    IPV4_DST,
    IPV4_FLAGS_AT,
    IPV4_IDENT_AT,
    IPV4_MIN_HEADER_LEN,
    IPV4_PROTOCOL_AT,
    IPV4_SRC,
    IPV4_TOTAL_LENGTH_AT,
    OFFSET_MASK,
    IPv4Header,
)
from netstack.header.ipv6 import (
    IPV6_ADDRESSES,
    IPV6_DST,
    IPV6_HEADER_LEN,
    IPV6_NEXT_HEADER_AT,
    IPV6_PAYLOAD_LENGTH_AT,
    IPV6_SRC,
    IPv6Header,
)
from netstack.header.numbers import IPPROTO_TCP
from netstack.header.tcp import (
    ACK,
    CWR,
    FIN,
    PSH,
    TCP_ACK_AT,
    TCP_CHECKSUM_AT,
    TCP_DATA_OFFSET_AT,
    TCP_FLAGS_AT,
    TCP_MIN_HEADER_LEN,
    TCP_SEQ_AT,
    TCP_URGENT_AT,
    TCP_WINDOW_AT,
    TCPHeader,
)

__all__ = [
    "DATA_VALID",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "MAX_GSO_PACKET",
    "NEEDS_CSUM",
    "PLAIN_HEADER",
    "VNET_FLAGS_AT",
    "VNET_GSO_TYPE_AT",
    "VNET_HDR_LEN",
    "Coalesced",
    "Received",
    "VirtioNetHdr",
    "coalesce",
    "complete_checksum",
    "finish_plain",
    "receive_frame",
    "segment_gso",
    "starts_run",
]

#: sizeof(struct virtio_net_hdr): the default TUNSETVNETHDRSZ.
VNET_HDR_LEN: Final = 10
#: Offset of the ``flags`` octet in the header (NEEDS_CSUM, DATA_VALID).
VNET_FLAGS_AT: Final = 0
#: Offset of the ``gso_type`` octet in the header.
VNET_GSO_TYPE_AT: Final = 1
#: VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum at csum_start + csum_offset is only partial.
NEEDS_CSUM: Final = 1
#: VIRTIO_NET_HDR_F_DATA_VALID: the kernel already verified the checksum.
DATA_VALID: Final = 2
#: VIRTIO_NET_HDR_GSO_* values of ``gso_type``.
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
#: VIRTIO_NET_HDR_GSO_ECN: the TCP segments carry ECN (CWR only on the first, RFC 3168).
GSO_ECN: Final = 0x80
#: The largest GSO packet we build or accept: IPv4 Total Length is 16 bits (RFC 791 section
#: 3.1); the kernel's legacy GSO limit (GSO_LEGACY_MAX_SIZE) is 65536.
MAX_GSO_PACKET: Final = 65535

_HDR: Final = struct.Struct("=BBHHHH")
#: The header for a packet with nothing offloaded: checksums complete, no segmentation.
PLAIN_HEADER: Final = bytes(VNET_HDR_LEN)

# The header fields read and rewritten here sit at the offsets the header modules name
# (netstack.header.ipv4, ipv6, tcp); this module looks at single fields of packets it does not
# parse, on the send path where every packet passes through.
_V4_NO_OPTIONS: Final = 0x45  # version 4, IHL 5 (RFC 791 section 3.1)
_MF_OR_OFFSET_HIGH: Final = (
    FLAG_MF | OFFSET_MASK
) >> 8  # their bits in the flags word's first octet
_V4_TCP: Final = IPV4_MIN_HEADER_LEN + TCP_MIN_HEADER_LEN
_V6_TCP: Final = IPV6_HEADER_LEN + TCP_MIN_HEADER_LEN
_U16: Final = struct.Struct("!H")
_CSUM_AT: Final = struct.Struct("=HH")  # csum_start, csum_offset at byte 6 of the header
_U32: Final = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class VirtioNetHdr:
    """``struct virtio_net_hdr``: what the kernel did or must do to a packet's checksum/size."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> VirtioNetHdr:
        """Read the header at the start of ``data``; raise ParseError if it is too short."""
        if len(data) < VNET_HDR_LEN:
            raise ParseError("vnet_short", f"{len(data)} bytes, need {VNET_HDR_LEN}")
        return cls(*_HDR.unpack_from(data))

    def build(self) -> bytes:
        """Return the 10 header bytes."""
        return _HDR.pack(
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )


@dataclass(slots=True)
class Coalesced:
    """What :func:`coalesce` made: frames to write, and how many were GSO packets."""

    frames: list[bytes]
    gso_packets: int = 0
    segments_merged: int = 0


@dataclass(slots=True)
class Received:
    """What :func:`receive_frame` made of one frame: packets for the stack and what it did."""

    packets: list[bytes]
    gso: bool = False
    checksum_filled: bool = False
    split: bool = False


# -- outbound: coalescing -------------------------------------------------------------------


def _tcp_offset(pkt: bytes) -> int:
    """Return the TCP header offset if ``pkt`` is a coalescible data segment, else 0.

    Coalescible: IPv4 without options and not a fragment (RFC 791 section 3.1), or IPv6 whose
    Next Header is TCP (no extension headers, RFC 8200 section 4); lengths consistent; TCP
    flags exactly ACK or ACK|PSH (a SYN, FIN, RST, URG or CWR segment is sent alone); payload
    not empty.
    """
    n = len(pkt)
    first = pkt[0] if n else 0
    if first == _V4_NO_OPTIONS:
        # Total Length must match; MF clear and Fragment Offset zero.
        if (
            n < _V4_TCP
            or pkt[IPV4_PROTOCOL_AT] != IPPROTO_TCP
            or pkt[IPV4_FLAGS_AT] & _MF_OR_OFFSET_HIGH
            or pkt[IPV4_FLAGS_AT + 1]
            or _U16.unpack_from(pkt, IPV4_TOTAL_LENGTH_AT)[0] != n
        ):
            return 0
        t = IPV4_MIN_HEADER_LEN
    elif first >> 4 == 6:
        if (
            n < _V6_TCP
            or pkt[IPV6_NEXT_HEADER_AT] != IPPROTO_TCP
            or _U16.unpack_from(pkt, IPV6_PAYLOAD_LENGTH_AT)[0] != n - IPV6_HEADER_LEN
        ):
            return 0
        t = IPV6_HEADER_LEN
    else:
        return 0
    flags = pkt[t + TCP_FLAGS_AT]
    if flags != ACK and flags != ACK | PSH:
        return 0
    thl = (pkt[t + TCP_DATA_OFFSET_AT] >> 4) * 4
    if thl < TCP_MIN_HEADER_LEN or t + thl >= n:
        return 0
    return t


def starts_run(packet: bytes) -> bool:
    """Whether ``packet`` could begin a GSO run: a TCP data segment with flags exactly ACK.

    Anything else (UDP, ICMP, a pure ACK, a segment with PSH, SYN or FIN) always travels
    alone, so a writer may send it at once when nothing is waiting before it.
    """
    t = _tcp_offset(packet)
    return t != 0 and packet[t + TCP_FLAGS_AT] == ACK


def _same_flow(head: bytes, pkt: bytes, t: int, thl: int) -> bool:
    """Whether ``pkt`` has the same headers as ``head`` except the fields GSO rewrites.

    The kernel's segmentation copies the first segment's headers into every segment and only
    sets the lengths, the IPv4 Identification and header checksum, the sequence number, PSH/FIN
    on the last segment and the TCP checksum; everything else must already be equal.
    """
    if t == IPV4_MIN_HEADER_LEN:
        # Version, IHL and TOS; flags, offset, TTL and protocol; the addresses.
        if (
            head[:IPV4_TOTAL_LENGTH_AT] != pkt[:IPV4_TOTAL_LENGTH_AT]
            or head[IPV4_FLAGS_AT:IPV4_CHECKSUM_AT] != pkt[IPV4_FLAGS_AT:IPV4_CHECKSUM_AT]
            or head[IPV4_ADDRESSES] != pkt[IPV4_ADDRESSES]
        ):
            return False
    # Version, traffic class and flow label; next header, hop limit and the addresses.
    elif (
        head[:IPV6_PAYLOAD_LENGTH_AT] != pkt[:IPV6_PAYLOAD_LENGTH_AT]
        or head[IPV6_NEXT_HEADER_AT:IPV6_HEADER_LEN] != pkt[IPV6_NEXT_HEADER_AT:IPV6_HEADER_LEN]
    ):
        return False
    # Ports; acknowledgment number and data offset; window; urgent pointer and options.
    return (
        head[t : t + TCP_SEQ_AT] == pkt[t : t + TCP_SEQ_AT]
        and head[t + TCP_ACK_AT : t + TCP_FLAGS_AT] == pkt[t + TCP_ACK_AT : t + TCP_FLAGS_AT]
        and head[t + TCP_WINDOW_AT : t + TCP_CHECKSUM_AT]
        == pkt[t + TCP_WINDOW_AT : t + TCP_CHECKSUM_AT]
        and head[t + TCP_URGENT_AT : t + thl] == pkt[t + TCP_URGENT_AT : t + thl]
    )


def _build_gso(group: list[bytes], t: int, thl: int, gso_size: int) -> bytes:
    """Return the frame for ``group`` (two or more segments) as one GSO packet."""
    head = group[0]
    hl = t + thl
    total = hl + sum(len(p) for p in group) - hl * len(group)
    out = bytearray(head[:hl])
    if t == IPV4_MIN_HEADER_LEN:
        _U16.pack_into(out, IPV4_TOTAL_LENGTH_AT, total)
        _U16.pack_into(out, IPV4_CHECKSUM_AT, 0)
        _U16.pack_into(out, IPV4_CHECKSUM_AT, checksum(out[:IPV4_MIN_HEADER_LEN]))
        src, dst = head[IPV4_SRC], head[IPV4_DST]
        gso_type = GSO_TCPV4
    else:
        _U16.pack_into(out, IPV6_PAYLOAD_LENGTH_AT, total - IPV6_HEADER_LEN)
        src, dst = head[IPV6_SRC], head[IPV6_DST]
        gso_type = GSO_TCPV6
    # PSH travels on the last segment only (tcp_gso_segment clears it on the others).
    out[t + TCP_FLAGS_AT] = group[-1][t + TCP_FLAGS_AT]
    # NEEDS_CSUM: the field holds the folded pseudo-header sum over the whole TCP length, the
    # value a stack leaves for a device that completes checksums (CHECKSUM_PARTIAL).
    _U16.pack_into(
        out, t + TCP_CHECKSUM_AT, ones_sum(b"", pseudo_header_sum(src, dst, IPPROTO_TCP, total - t))
    )
    vnet = _HDR.pack(NEEDS_CSUM, gso_type, hl, gso_size, t, TCP_CHECKSUM_AT)
    parts: list[bytes | bytearray | memoryview] = [vnet, out]
    parts.extend(memoryview(p)[hl:] for p in group)
    return b"".join(parts)


def coalesce(packets: Sequence[bytes], max_size: int = MAX_GSO_PACKET) -> Coalesced:
    """Turn outbound raw IP packets into TUN frames, in order, merging TCP runs into GSO packets.

    A run is a sequence of adjacent TCP data segments of one flow with consecutive sequence
    numbers (and, for IPv4, consecutive Identification values), all headers equal except what
    segmentation rewrites, every payload but the last exactly ``gso_size`` long and PSH on the
    last one only, up to ``max_size`` bytes of IP packet. Everything else becomes a frame with
    :data:`PLAIN_HEADER` (its checksums are already complete).
    """
    frames: list[bytes] = []
    result = Coalesced(frames)
    n = len(packets)
    i = 0
    while i < n:
        head = packets[i]
        i += 1
        t = _tcp_offset(head)
        if not t or head[t + TCP_FLAGS_AT] & PSH:
            frames.append(PLAIN_HEADER + head)
            continue
        thl = (head[t + TCP_DATA_OFFSET_AT] >> 4) * 4
        hl = t + thl
        gso_size = len(head) - hl
        size = len(head)
        group = [head]
        seq = _U32.unpack_from(head, t + TCP_SEQ_AT)[0]
        ident = _U16.unpack_from(head, IPV4_IDENT_AT)[0]
        while i < n:
            pkt = packets[i]
            if len(pkt) < hl or _tcp_offset(pkt) != t or not _same_flow(head, pkt, t, thl):
                break
            payload = len(pkt) - hl
            seq = (seq + gso_size) & 0xFFFFFFFF
            if payload > gso_size or size + payload > max_size:
                break
            if _U32.unpack_from(pkt, t + TCP_SEQ_AT)[0] != seq:
                break
            if t == IPV4_MIN_HEADER_LEN:
                # The kernel numbers IPv4 segments ID, ID+1, ... (inet_gso_segment).
                ident = (ident + 1) & 0xFFFF
                if _U16.unpack_from(pkt, IPV4_IDENT_AT)[0] != ident:
                    break
            group.append(pkt)
            size += payload
            i += 1
            if payload < gso_size or pkt[t + TCP_FLAGS_AT] & PSH:
                break  # only the last segment may be short or carry PSH
        if len(group) == 1:
            frames.append(PLAIN_HEADER + head)
            continue
        frames.append(_build_gso(group, t, thl, gso_size))
        result.gso_packets += 1
        result.segments_merged += len(group)
    return result


# -- inbound: checksum completion, GRO and splitting -----------------------------------------


def complete_checksum(packet: bytearray, csum_start: int, csum_offset: int) -> None:
    """Finish a partial checksum in place (virtio NEEDS_CSUM, RFC 1071).

    The field at ``csum_start + csum_offset`` holds a partial sum (the pseudo-header's); the
    checksum is the complement of the one's-complement sum from ``csum_start`` to the end,
    that field included. A result of zero is stored as 0xFFFF, which is the same value in
    one's-complement arithmetic and keeps a UDP checksum from reading as "none" (RFC 768).
    """
    at = csum_start + csum_offset
    if at + 2 > len(packet) or csum_start >= len(packet):
        raise ParseError(
            "vnet_bad_csum_offset", f"csum at {csum_start}+{csum_offset} in {len(packet)} bytes"
        )
    value = checksum(memoryview(packet)[csum_start:])
    packet[at : at + 2] = _U16.pack(value or 0xFFFF)


def finish_plain(frame: bytes) -> bytes:
    """Return the packet of a frame whose ``gso_type`` is NONE, its checksum completed.

    ``gso_type`` must be NONE (checked by the caller). With NEEDS_CSUM the checksum is completed
    as :func:`complete_checksum` does; otherwise the packet is returned as it is.
    """
    if len(frame) <= VNET_HDR_LEN:
        raise ParseError("vnet_empty", "header without a packet")
    if not frame[VNET_FLAGS_AT] & NEEDS_CSUM:
        return frame[VNET_HDR_LEN:]
    start, offset = _CSUM_AT.unpack_from(frame, 6)
    body = frame[VNET_HDR_LEN:]
    n = len(body)
    at = start + offset
    if at + 2 > n or start >= n:
        raise ParseError("vnet_bad_csum_offset", f"csum at {start}+{offset} in {n} bytes")
    # RFC 1071 inline (as in netstack.header.checksum, saving two calls on every datagram):
    # the one's-complement sum is the big-endian value modulo 0xFFFF, a zero remainder
    # standing for 0xFFFF; its complement 0 is stored as 0xFFFF (RFC 768).
    value = int.from_bytes(body[start:], "big")
    if (n - start) & 1:
        value <<= 8
    value = ~(value % 0xFFFF) & 0xFFFF or 0xFFFF
    return body[:at] + _U16.pack(value) + body[at + 2 :]


def _gso_headers(hdr: VirtioNetHdr, packet: bytes | bytearray) -> tuple[int, int]:
    """Check a TCP GSO packet's IP and TCP headers; return (TCP offset, TCP header length).

    The headers get the one validated parse of each (netstack.header), once per super-packet;
    any fault is reported as "gso_bad_packet" with what the parse found.
    """
    n = len(packet)
    gso = hdr.gso_type & ~GSO_ECN
    t = hdr.csum_start
    if hdr.gso_size == 0:
        raise ParseError("gso_bad_size", "gso_size 0")
    try:
        if gso == GSO_TCPV4:
            # The super-packet's header checksum is the kernel's business (segmentation
            # rewrites it), so it is not verified here.
            ip4 = IPv4Header.parse(packet, verify_checksum=False)
            if ip4.protocol != IPPROTO_TCP:
                raise ParseError("gso_bad_packet", "TCPV4 GSO without IPv4/TCP")
            if ip4.total_length != n or ip4.header_length != t:
                raise ParseError("gso_bad_packet", "IPv4 length or header length disagrees")
        elif gso == GSO_TCPV6:
            ip6 = IPv6Header.parse(packet)
            if ip6.next_header != IPPROTO_TCP or t != IPV6_HEADER_LEN:
                raise ParseError("gso_bad_packet", "TCPV6 GSO without IPv6/TCP")
            if IPV6_HEADER_LEN + ip6.payload_length != n:
                raise ParseError("gso_bad_packet", "IPv6 payload length disagrees")
        else:
            raise ParseError("gso_bad_type", f"gso_type {hdr.gso_type}")
        if hdr.csum_offset != TCP_CHECKSUM_AT or not hdr.flags & NEEDS_CSUM:
            raise ParseError("gso_bad_packet", "TCP GSO without a partial TCP checksum")
        thl = TCPHeader.parse(memoryview(packet)[t:]).header_length
    except ParseError as exc:
        if exc.reason.startswith("gso_"):
            raise
        raise ParseError("gso_bad_packet", f"{exc.reason}: {exc.detail}") from None
    if t + thl >= n:
        raise ParseError("gso_bad_packet", f"TCP data offset {thl} leaves no payload")
    return t, thl


def segment_gso(hdr: VirtioNetHdr, packet: bytes | bytearray) -> list[bytes]:
    """Split a TCP GSO packet into its segments as the kernel does (tcp_gso_segment).

    Each segment gets the super-packet's headers with its own lengths, sequence number, IPv4
    Identification (ID, ID+1, ...) and header checksum, and a complete TCP checksum; FIN and
    PSH stay on the last segment only and CWR on the first only (RFC 3168 section 6.1.2).
    """
    t, thl = _gso_headers(hdr, packet)
    hl = t + thl
    size = hdr.gso_size
    n = len(packet)
    if n - hl > size * 0xFFFF:
        raise ParseError("gso_bad_size", "too many segments")
    v4 = t == IPV4_MIN_HEADER_LEN
    addresses = bytes(packet[IPV4_ADDRESSES] if v4 else packet[IPV6_ADDRESSES])
    half = len(addresses) // 2
    src, dst = addresses[:half], addresses[half:]
    seq0 = _U32.unpack_from(packet, t + TCP_SEQ_AT)[0]
    ident0 = _U16.unpack_from(packet, IPV4_IDENT_AT)[0]
    flags = packet[t + TCP_FLAGS_AT]
    template = bytearray(packet[:hl])
    out: list[bytes] = []
    for index, start in enumerate(range(hl, n, size)):
        payload = packet[start : start + size]
        last = start + size >= n
        head = template[:]
        if v4:
            _U16.pack_into(head, IPV4_TOTAL_LENGTH_AT, hl + len(payload))
            _U16.pack_into(head, IPV4_IDENT_AT, (ident0 + index) & 0xFFFF)
            _U16.pack_into(head, IPV4_CHECKSUM_AT, 0)
            _U16.pack_into(head, IPV4_CHECKSUM_AT, checksum(head[:IPV4_MIN_HEADER_LEN]))
        else:
            _U16.pack_into(head, IPV6_PAYLOAD_LENGTH_AT, thl + len(payload))
        _U32.pack_into(head, t + TCP_SEQ_AT, (seq0 + index * size) & 0xFFFFFFFF)
        seg_flags = flags if last else flags & ~(FIN | PSH)
        if index:
            seg_flags &= ~CWR
        head[t + TCP_FLAGS_AT] = seg_flags
        _U16.pack_into(head, t + TCP_CHECKSUM_AT, 0)
        tcp_len = thl + len(payload)
        pseudo = pseudo_header_sum(src, dst, IPPROTO_TCP, tcp_len)
        value = checksum(payload, ones_sum(head[t:], pseudo))
        _U16.pack_into(head, t + TCP_CHECKSUM_AT, value)
        out.append(bytes(head) + payload)
    return out


def receive_frame(frame: bytes, *, gro: bool = True) -> Received:
    """Turn one frame read from a vnet-header TUN into raw IP packets for the stack.

    A plain packet comes back as it is; one with ``NEEDS_CSUM`` gets its checksum completed. A
    TCP GSO packet comes back as one large TCP segment with a complete checksum when ``gro``
    (a TCP receiver takes any in-window segment), else split by :func:`segment_gso`. Raises
    ParseError for a short or inconsistent header, an unknown ``gso_type``, or a GSO packet
    whose IP/TCP headers disagree with it.
    """
    hdr = VirtioNetHdr.parse(frame)
    if len(frame) == VNET_HDR_LEN:
        raise ParseError("vnet_empty", "header without a packet")
    if hdr.gso_type == GSO_NONE:
        return Received([finish_plain(frame)], checksum_filled=bool(hdr.flags & NEEDS_CSUM))
    packet = bytearray(frame[VNET_HDR_LEN:])
    t, _ = _gso_headers(hdr, packet)
    if not gro:
        return Received(segment_gso(hdr, packet), gso=True, split=True)
    # Compute the checksum afresh over the whole segment rather than trust the partial sum:
    # the pseudo-header length is the super-packet's (RFC 9293 section 3.1), as it must be.
    v4 = t == IPV4_MIN_HEADER_LEN
    addresses = bytes(packet[IPV4_ADDRESSES] if v4 else packet[IPV6_ADDRESSES])
    half = len(addresses) // 2
    src, dst = addresses[:half], addresses[half:]
    at = t + TCP_CHECKSUM_AT
    _U16.pack_into(packet, at, 0)
    pseudo = pseudo_header_sum(src, dst, IPPROTO_TCP, len(packet) - t)
    _U16.pack_into(packet, at, checksum(memoryview(packet)[t:], pseudo))
    return Received([bytes(packet)], gso=True, checksum_filled=True)
