"""The TCP header (RFC 9293 section 3.1) and its options.

Options: RFC 9293 section 3.2 (MSS), RFC 7323 (window scale, timestamps), RFC 2018 (SACK).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |          Source Port          |       Destination Port        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                        Sequence Number                        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                    Acknowledgment Number                      |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  Data |       |C|E|U|A|P|R|S|F|                               |
    | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |           Checksum            |         Urgent Pointer        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from netstack.errors import ParseError
from netstack.header.checksum import checksum, ones_sum, pseudo_header_sum
from netstack.header.numbers import IPPROTO_TCP

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
"""ECN-Echo (RFC 3168 section 6.1)."""
CWR: Final = 0x80
"""Congestion Window Reduced (RFC 3168 section 6.1)."""

TCP_MIN_HEADER_LEN: Final = 20
"""Length of a header without options (Data Offset 5)."""
TCP_MAX_OPTIONS_LEN: Final = 40
"""Room for options: Data Offset is at most 15 words (RFC 9293 section 3.1)."""

# Where the header's fields sit (RFC 9293 section 3.1), for code that reads one field of a
# segment it does not parse (segmentation offload); offsets from the start of the TCP header.
TCP_SRC_PORT_AT: Final = 0
"""Offset of Source Port (16 bits)."""
TCP_DST_PORT_AT: Final = 2
"""Offset of Destination Port (16 bits)."""
TCP_SEQ_AT: Final = 4
"""Offset of Sequence Number (32 bits)."""
TCP_ACK_AT: Final = 8
"""Offset of Acknowledgment Number (32 bits)."""
TCP_DATA_OFFSET_AT: Final = 12
"""Offset of the octet whose high 4 bits are Data Offset, in 32-bit words."""
TCP_FLAGS_AT: Final = 13
"""Offset of the control bits (CWR ... FIN)."""
TCP_WINDOW_AT: Final = 14
"""Offset of Window (16 bits)."""
TCP_CHECKSUM_AT: Final = 16
"""Offset of Checksum (16 bits)."""
TCP_URGENT_AT: Final = 18
"""Offset of Urgent Pointer (16 bits)."""

# Option kinds (RFC 9293 section 3.2, RFC 7323 sections 2.2 and 3.2, RFC 2018 sections 2-3).
OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_MSS: Final = 2
OPT_WINDOW_SCALE: Final = 3
OPT_SACK_PERMITTED: Final = 4
OPT_SACK: Final = 5
OPT_TIMESTAMP: Final = 8

MAX_WINDOW_SCALE: Final = 14
"""Largest shift a receiver honours (RFC 7323 section 2.3); larger values are kept as read."""
MAX_SACK_BLOCKS: Final = 4
"""SACK blocks that fit in 40 bytes of options (RFC 2018 section 3)."""

_FLAG_NAMES: Final = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
# ports, seq, ack, data offset/reserved, flags, window, checksum, urgent pointer
_HEADER: Final = struct.Struct("!HHIIBBHHH")
_U16: Final = struct.Struct("!H")
_MSS: Final = struct.Struct("!BBH")
_WS: Final = struct.Struct("!BBBB")  # NOP, kind, length, shift
_TS: Final = struct.Struct("!BBII")
_TS_VALUES: Final = struct.Struct("!II")
# NOP, NOP, Timestamps kind and length, TSval, TSecr: RFC 7323 Appendix A's layout, the whole
# option area of every segment after the handshake from a peer using timestamps (no SACK).
_ALIGNED_TS: Final = struct.Struct("!HHII")
_NOP_NOP: Final = OPT_NOP << 8 | OPT_NOP
_TS_KIND_LEN: Final = OPT_TIMESTAMP << 8 | 10
_SACK_BLOCKS: Final = tuple(struct.Struct(f"!{2 * n}I") for n in range(MAX_SACK_BLOCKS + 1))
_KNOWN_KINDS: Final = frozenset(
    (OPT_EOL, OPT_NOP, OPT_MSS, OPT_WINDOW_SCALE, OPT_SACK_PERMITTED, OPT_SACK, OPT_TIMESTAMP)
)

_unpack_header = _HEADER.unpack_from
_new = object.__new__
_new_tuple = tuple.__new__

Buffer = bytes | bytearray | memoryview


class TCPOptions(NamedTuple):
    """The options of one segment, decoded. Immutable, so one instance can be shared.

    ``sack_blocks`` holds (left edge, right edge) pairs; ``timestamp`` is (TSval, TSecr);
    ``unknown`` keeps (kind, data) of options this module does not decode, in wire order.
    A named tuple rather than a frozen dataclass: one is built for nearly every segment sent
    or received, and a frozen dataclass costs several times as much to build.
    """

    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None
    unknown: tuple[tuple[int, bytes], ...] = ()

    def build(self) -> bytes:
        """Return the options in a canonical order, NOP-aligned and padded to a multiple of 4.

        Order: MSS, SACK-Permitted with Timestamps, Window Scale, SACK, then unknown options.
        Raises ValueError if a value is out of range or the result exceeds 40 bytes.
        """
        out = bytearray()
        try:
            if self.mss is not None:
                out += _MSS.pack(OPT_MSS, 4, self.mss)
            ts = self.timestamp
            if ts is not None:
                # RFC 7323 Appendix A: two leading octets keep the 32-bit values aligned.
                out += b"\x04\x02" if self.sack_permitted else b"\x01\x01"
                out += _TS.pack(OPT_TIMESTAMP, 10, ts[0], ts[1])
            elif self.sack_permitted:
                out += b"\x01\x01\x04\x02"
            if self.window_scale is not None:
                out += _WS.pack(OPT_NOP, OPT_WINDOW_SCALE, 3, self.window_scale)
            blocks = self.sack_blocks
            if blocks:
                if len(blocks) > MAX_SACK_BLOCKS:
                    raise ValueError(f"at most {MAX_SACK_BLOCKS} SACK blocks: {len(blocks)}")
                out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks)))
                out += _SACK_BLOCKS[len(blocks)].pack(*(edge for b in blocks for edge in b))
        except struct.error as exc:
            raise ValueError(f"TCP option value out of range: {exc}") from exc
        for kind, data in self.unknown:
            if kind in _KNOWN_KINDS or not 0 <= kind <= 0xFF or len(data) > 0xFF - 2:
                raise ValueError(f"cannot encode option kind {kind} as unknown")
            out += bytes((kind, len(data) + 2))
            out += data
        out += b"\x01" * (-len(out) & 3)
        if len(out) > TCP_MAX_OPTIONS_LEN:
            raise ValueError(f"TCP options take {len(out)} bytes, at most 40 fit")
        return bytes(out)

    @staticmethod
    def parse(buf: Buffer) -> TCPOptions:
        """Decode an option area (RFC 9293 section 3.2). EOL ends it; NOP is skipped.

        Raises ParseError("bad_option") on an option whose length is below 2, runs past the
        area, or does not match its kind. A repeated option keeps its last value.
        """
        n = len(buf)
        if n == 0:
            return NO_OPTIONS
        if n == 12:
            # The NOP, NOP, Timestamps layout (RFC 7323 Appendix A), read in one step.
            lead, kind_len, tsval, tsecr = _ALIGNED_TS.unpack_from(buf)
            if lead == _NOP_NOP and kind_len == _TS_KIND_LEN:
                return _new_tuple(TCPOptions, (None, None, False, (), (tsval, tsecr), ()))
        mss: int | None = None
        window_scale: int | None = None
        sack_permitted = False
        sack_blocks: tuple[tuple[int, int], ...] = ()
        timestamp: tuple[int, int] | None = None
        unknown: list[tuple[int, bytes]] = []
        i = 0
        while i < n:
            kind = buf[i]
            if kind == OPT_EOL:
                break
            if kind == OPT_NOP:
                i += 1
                continue
            if i + 1 >= n:
                raise ParseError("bad_option", f"option {kind} has no length octet")
            length = buf[i + 1]
            end = i + length
            if length < 2 or end > n:
                raise ParseError("bad_option", f"option {kind} length {length} at {i} of {n}")
            if kind == OPT_MSS:
                if length != 4:
                    raise ParseError("bad_option", f"MSS length {length}")
                mss = _U16.unpack_from(buf, i + 2)[0]
            elif kind == OPT_WINDOW_SCALE:
                if length != 3:
                    raise ParseError("bad_option", f"window scale length {length}")
                window_scale = buf[i + 2]
            elif kind == OPT_SACK_PERMITTED:
                if length != 2:
                    raise ParseError("bad_option", f"SACK-permitted length {length}")
                sack_permitted = True
            elif kind == OPT_SACK:
                count, rem = divmod(length - 2, 8)
                if rem or not 1 <= count <= MAX_SACK_BLOCKS:
                    raise ParseError("bad_option", f"SACK length {length}")
                edges = _SACK_BLOCKS[count].unpack_from(buf, i + 2)
                sack_blocks = tuple(zip(edges[::2], edges[1::2], strict=True))
            elif kind == OPT_TIMESTAMP:
                if length != 10:
                    raise ParseError("bad_option", f"timestamp length {length}")
                tsval, tsecr = _TS_VALUES.unpack_from(buf, i + 2)
                timestamp = (tsval, tsecr)
            else:
                unknown.append((kind, bytes(buf[i + 2 : end])))
            i = end
        return _new_tuple(
            TCPOptions, (mss, window_scale, sack_permitted, sack_blocks, timestamp, tuple(unknown))
        )


NO_OPTIONS: Final = TCPOptions()
"""The empty option set, shared by every segment that carries no options."""


@dataclass(slots=True)
class TCPHeader:
    """One TCP header. ``checksum`` and ``header_length`` are as read by :meth:`parse`.

    :meth:`parse` is the one validated parse of the header and its options; the constructor
    and :func:`build_tcp` are the way to write one. ``checksum`` and ``header_length`` take no
    part in comparisons.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    urgent: int = 0
    options: TCPOptions = field(default=NO_OPTIONS)
    checksum: int = field(default=0, compare=False)
    header_length: int = field(default=0, compare=False)

    @staticmethod
    def parse(buf: Buffer) -> TCPHeader:
        """Validate the header at the start of ``buf`` (the segment) and decode its options.

        Raises ParseError with reason "truncated", "bad_data_offset" (below 5 words or past the
        buffer) or "bad_option". The reserved bits are ignored (RFC 9293 section 3.1).
        """
        n = len(buf)
        if n < TCP_MIN_HEADER_LEN:
            raise ParseError("truncated", f"{n} bytes, TCP header needs 20")
        sport, dport, seq, ack, off, flags, window, csum, urgent = _unpack_header(buf)
        header_length = (off >> 4) << 2
        if header_length < TCP_MIN_HEADER_LEN or header_length > n:
            raise ParseError("bad_data_offset", f"data offset {header_length} with {n} bytes")
        # Once per received segment: the record is filled in directly, not through __init__.
        hdr: TCPHeader = _new(TCPHeader)
        hdr.options = (
            NO_OPTIONS
            if header_length == TCP_MIN_HEADER_LEN
            else TCPOptions.parse(buf[TCP_MIN_HEADER_LEN:header_length])
        )
        hdr.src_port = sport
        hdr.dst_port = dport
        hdr.seq = seq
        hdr.ack = ack
        hdr.flags = flags
        hdr.window = window
        hdr.urgent = urgent
        hdr.checksum = csum
        hdr.header_length = header_length
        return hdr

    def build(self) -> bytes:
        """Return the header bytes with the checksum field zero (see :func:`build_tcp`)."""
        return self._pack(self._options_bytes(), 0)

    def _options_bytes(self) -> bytes:
        options = self.options
        return b"" if options is NO_OPTIONS else options.build()

    def _pack(self, options: bytes, csum: int) -> bytes:
        try:
            fixed = _HEADER.pack(
                self.src_port,
                self.dst_port,
                self.seq,
                self.ack,
                (TCP_MIN_HEADER_LEN + len(options)) << 2,
                self.flags,
                self.window,
                csum,
                self.urgent,
            )
        except struct.error as exc:
            raise ValueError(f"TCP field out of range: {exc}") from exc
        return fixed + options if options else fixed


def build_tcp(src_addr: bytes, dst_addr: bytes, header: TCPHeader, payload: Buffer = b"") -> bytes:
    """Return the whole segment: ``header`` with its checksum filled in, then ``payload``.

    The checksum covers the IPv4 or IPv6 pseudo-header (RFC 9293 section 3.1, RFC 8200
    section 8.1) chosen by the address length.
    """
    options = header._options_bytes()
    zeroed = header._pack(options, 0)
    # The header is a multiple of 4 bytes, so it can be summed apart from the payload.
    length = len(zeroed) + len(payload)
    partial = ones_sum(zeroed, pseudo_header_sum(src_addr, dst_addr, IPPROTO_TCP, length))
    return header._pack(options, checksum(payload, partial)) + payload


def tcp_checksum_ok(src_addr: bytes, dst_addr: bytes, segment: Buffer) -> bool:
    """Return True if the checksum of the whole ``segment`` (header and data) is right."""
    n = len(segment)
    if n < TCP_MIN_HEADER_LEN:
        return False
    # Right when the one's-complement sum over pseudo-header and segment is 0xFFFF
    # (RFC 9293 section 3.1): pseudo_header_sum and ones_sum written out in one expression,
    # as this runs once per segment. The protocol number keeps the value nonzero.
    value = int.from_bytes(segment) << 8 if n & 1 else int.from_bytes(segment)
    return (value + int.from_bytes(src_addr + dst_addr) + n + IPPROTO_TCP) % 0xFFFF == 0


def flags_str(flags: int) -> str:
    """Return the names of the flags set in ``flags``, lowest bit first ("SYN,ACK"); "none"."""
    names = [name for bit, name in enumerate(_FLAG_NAMES) if flags >> bit & 1]
    return ",".join(names) if names else "none"
