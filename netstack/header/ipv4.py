"""The IPv4 header (RFC 791 section 3.1).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version|  IHL  |Type of Service|          Total Length         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |         Identification        |Flags|      Fragment Offset    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  Time to Live |    Protocol   |         Header Checksum       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                 Source Address / Destination Address          |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                    Options                    |    Padding    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The Type of Service octet is read as DSCP and ECN (RFC 2474 section 3, RFC 3168 section 5).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from netstack.errors import ParseError
from netstack.header.checksum import checksum

IPV4_MIN_HEADER_LEN: Final = 20
"""Length of a header without options (IHL = 5)."""
IPV4_MAX_HEADER_LEN: Final = 60
"""Length of a header with the largest IHL (15 words)."""
IPV4_MAX_OPTIONS_LEN: Final = IPV4_MAX_HEADER_LEN - IPV4_MIN_HEADER_LEN

# Option types of RFC 791 section 3.1 that occupy a single octet.
OPT_EOL: Final = 0
"""End of Option List: ends the option area; the rest is padding."""
OPT_NOP: Final = 1
"""No Operation: a single octet used to align the next option."""

# Where the fixed header's fields sit (RFC 791 section 3.1). Code that looks at one field of a
# packet it does not parse (the TUN filter, segmentation offload) reads it here, unvalidated.
IPV4_TOTAL_LENGTH_AT: Final = 2
"""Offset of Total Length (16 bits)."""
IPV4_IDENT_AT: Final = 4
"""Offset of Identification (16 bits)."""
IPV4_FLAGS_AT: Final = 6
"""Offset of the flags and Fragment Offset word (16 bits)."""
IPV4_PROTOCOL_AT: Final = 9
"""Offset of Protocol (8 bits)."""
IPV4_CHECKSUM_AT: Final = 10
"""Offset of Header Checksum (16 bits)."""
IPV4_SRC_AT: Final = 12
"""Offset of Source Address (4 octets)."""
IPV4_DST_AT: Final = 16
"""Offset of Destination Address (4 octets)."""
IPV4_SRC: Final = slice(IPV4_SRC_AT, IPV4_SRC_AT + 4)
"""Source Address as a slice: ``packet[IPV4_SRC]``."""
IPV4_DST: Final = slice(IPV4_DST_AT, IPV4_DST_AT + 4)
"""Destination Address as a slice: ``packet[IPV4_DST]``."""
IPV4_ADDRESSES: Final = slice(IPV4_SRC_AT, IPV4_DST_AT + 4)
"""Source and Destination Address together (the pseudo-header's addresses)."""

FLAG_RESERVED: Final = 0x8000
"""The reserved flag bit of the flags and Fragment Offset word (RFC 791 section 3.1)."""
FLAG_DF: Final = 0x4000
"""Don't Fragment."""
FLAG_MF: Final = 0x2000
"""More Fragments."""
OFFSET_MASK: Final = 0x1FFF
"""Fragment Offset, in 8-octet units."""
_FRAGMENT_BITS: Final = FLAG_RESERVED | FLAG_MF | OFFSET_MASK

# version/IHL, TOS, total length, identification, flags/offset, TTL, protocol, checksum, src, dst
_HEADER: Final = struct.Struct("!BBHHHBBH4s4s")
_CHECKSUM: Final = struct.Struct("!H")
_unpack_header = _HEADER.unpack_from
_new = object.__new__

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class IPv4Header:
    """One IPv4 header; ``fragment_offset`` is in bytes and ``options`` is the raw option area.

    :meth:`parse` is the one validated parse of the header, for the receive path and every
    other reader; the constructor and :meth:`build` are the way to write one. ``checksum`` is
    the value as read and ``header_length`` follows from ``options``; neither takes part in
    comparisons.
    """

    src: bytes
    dst: bytes
    protocol: int
    ttl: int = 64
    tos: int = 0
    ident: int = 0
    reserved_flag: bool = False
    dont_fragment: bool = False
    more_fragments: bool = False
    fragment_offset: int = 0
    total_length: int = 0
    options: bytes = b""
    checksum: int = field(default=0, compare=False)
    header_length: int = field(init=False, compare=False, repr=False)
    """The header length in bytes: 20 plus the option area."""

    def __post_init__(self) -> None:
        self.header_length = IPV4_MIN_HEADER_LEN + len(self.options)

    @property
    def dscp(self) -> int:
        """Return the Differentiated Services codepoint (RFC 2474 section 3): the high 6 bits."""
        return self.tos >> 2

    @property
    def ecn(self) -> int:
        """Return the ECN field (RFC 3168 section 5): the low 2 bits of the TOS octet."""
        return self.tos & 0x3

    def build(self, payload_length: int) -> bytes:
        """Return the header bytes for a payload of ``payload_length`` bytes.

        Total Length and Header Checksum are computed here; the ``total_length`` and
        ``checksum`` fields of the record are ignored. Raises ValueError on field values
        that do not fit the wire format.
        """
        options = self.options
        n_opts = len(options)
        if n_opts & 3 or n_opts > IPV4_MAX_OPTIONS_LEN:
            raise ValueError(f"IPv4 options must be a multiple of 4 bytes, <= 40: {n_opts}")
        if len(self.src) != 4 or len(self.dst) != 4:
            raise ValueError("IPv4 addresses must be 4 bytes")
        offset = self.fragment_offset
        if offset & 7 or not 0 <= offset <= OFFSET_MASK * 8:
            raise ValueError(f"fragment offset must be a multiple of 8 in [0, 65528]: {offset}")
        header_length = IPV4_MIN_HEADER_LEN + n_opts
        total = header_length + payload_length
        if payload_length < 0 or total > 0xFFFF:
            raise ValueError(f"IPv4 total length out of range: {total}")
        flags = offset >> 3
        if self.reserved_flag:
            flags |= FLAG_RESERVED
        if self.dont_fragment:
            flags |= FLAG_DF
        if self.more_fragments:
            flags |= FLAG_MF
        try:
            fixed = _HEADER.pack(
                0x40 | (header_length >> 2),
                self.tos,
                total,
                self.ident,
                flags,
                self.ttl,
                self.protocol,
                0,
                self.src,
                self.dst,
            )
        except struct.error as exc:
            raise ValueError(f"IPv4 field out of range: {exc}") from exc
        # RFC 791 section 3.1: the checksum is computed with the checksum field zero.
        if not n_opts:
            return fixed[:10] + checksum(fixed).to_bytes(2, "big") + fixed[12:]
        header = bytearray(fixed)
        if n_opts:
            header += options
        _CHECKSUM.pack_into(header, IPV4_CHECKSUM_AT, checksum(header))
        return bytes(header)

    def pack(self, payload: bytes | memoryview) -> bytes:
        """Return the header followed by ``payload``: a whole datagram."""
        return self.build(len(payload)) + payload

    @staticmethod
    def parse(buf: Buffer, *, verify_checksum: bool = True) -> IPv4Header:
        """Validate the header at the start of ``buf`` (which may carry link padding after it).

        Raises ParseError with reason "truncated", "bad_version", "bad_header_length",
        "bad_total_length", "bad_checksum" or "bad_option".
        """
        # This runs once per received packet, so it is written for speed: a static method (no
        # bound method to make), the record filled in directly rather than through __init__.
        n = len(buf)
        if n < IPV4_MIN_HEADER_LEN:
            raise ParseError("truncated", f"{n} bytes, IPv4 header needs 20")
        vihl, tos, total, ident, flags, ttl, proto, csum, src, dst = _unpack_header(buf)
        if vihl >> 4 != 4:
            raise ParseError("bad_version", f"version {vihl >> 4}")
        header_length = (vihl & 0xF) << 2
        if header_length < IPV4_MIN_HEADER_LEN or header_length > n:
            raise ParseError("bad_header_length", f"IHL {header_length} with {n} bytes")
        # RFC 791 section 3.1: Total Length covers header and data; bytes past it are link
        # padding (an Ethernet minimum frame, for one) that the caller trims.
        if total < header_length or total > n:
            raise ParseError("bad_total_length", f"total length {total}, {n} bytes")
        # RFC 1071: a correct header's one's-complement sum is 0xFFFF, i.e. the header read as
        # one big-endian integer (int.from_bytes's default order) is a nonzero multiple of
        # 0xFFFF; netstack.header.checksum explains why. The version nibble makes it nonzero.
        if verify_checksum and int.from_bytes(buf[:header_length]) % 0xFFFF:
            raise ParseError("bad_checksum", f"header checksum {csum:#06x}")
        hdr: IPv4Header = _new(IPv4Header)
        if header_length > IPV4_MIN_HEADER_LEN:
            options = bytes(buf[IPV4_MIN_HEADER_LEN:header_length])
            parse_options(options)
            hdr.options = options
        else:
            hdr.options = b""
        hdr.src = src
        hdr.dst = dst
        hdr.protocol = proto
        hdr.ttl = ttl
        hdr.tos = tos
        hdr.ident = ident
        if flags & _FRAGMENT_BITS:
            # The reserved bit, More Fragments or an offset: each bit is decoded.
            hdr.reserved_flag = flags & FLAG_RESERVED != 0
            hdr.dont_fragment = flags & FLAG_DF != 0
            hdr.more_fragments = flags & FLAG_MF != 0
            hdr.fragment_offset = (flags & OFFSET_MASK) << 3
        else:
            # The common case, no fragment: DF alone (path MTU discovery, RFC 1191) or nothing.
            hdr.reserved_flag = False
            hdr.dont_fragment = flags != 0
            hdr.more_fragments = False
            hdr.fragment_offset = 0
        hdr.total_length = total
        hdr.checksum = csum
        hdr.header_length = header_length
        return hdr


def build_datagram(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload: bytes | memoryview,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = False,
) -> bytes:
    """Return a whole IPv4 datagram with no options: a 20-byte header, checksum filled, + payload.

    The same bytes as ``IPv4Header(...).pack(payload)``, built in one step for the send path.
    Raises ValueError when a field or the length does not fit the wire format.
    """
    total = IPV4_MIN_HEADER_LEN + len(payload)
    flags = FLAG_DF if dont_fragment else 0
    # RFC 1071: the one's-complement sum of the header's 16-bit words, added here as integers
    # (the address words arrive as one integer, congruent modulo 0xFFFF to their sum).
    word_sum = (
        0x4500 + tos + total + ident + flags + (ttl << 8) + protocol + int.from_bytes(src + dst)
    )
    folded = word_sum % 0xFFFF or 0xFFFF
    try:
        header = _HEADER.pack(
            0x45, tos, total, ident, flags, ttl, protocol, ~folded & 0xFFFF, src, dst
        )
    except struct.error as exc:
        raise ValueError(f"IPv4 field out of range: {exc}") from exc
    if total > 0xFFFF or len(src) != 4 or len(dst) != 4:
        raise ValueError(f"not a valid IPv4 datagram: {total} bytes")
    return header + payload


def parse_options(options: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
    """Return the options of an IPv4 option area as (type, value) pairs (RFC 791 section 3.1).

    End of Option List ends the list, No Operation is skipped; every other option is
    type, length (counting the type and length octets, so at least 2) and value, and must lie
    inside the area. Raises ParseError("bad_option") otherwise.
    """
    result: list[tuple[int, bytes]] = []
    n = len(options)
    i = 0
    while i < n:
        kind = options[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise ParseError("bad_option", f"option {kind} has no length octet")
        length = options[i + 1]
        if length < 2 or i + length > n:
            raise ParseError("bad_option", f"option {kind} length {length} at {i} of {n}")
        result.append((kind, bytes(options[i + 2 : i + length])))
        i += length
    return result


def build_options(options: Sequence[tuple[int, bytes]]) -> bytes:
    """Return an option area holding ``options`` (type, value) as type/length/value.

    The area is padded with EOL octets to a multiple of 4 bytes (RFC 791 section 3.1).
    Raises ValueError if it exceeds 40 bytes or a type cannot carry a value.
    """
    out = bytearray()
    for kind, value in options:
        if kind in (OPT_EOL, OPT_NOP) or not 0 <= kind <= 0xFF:
            raise ValueError(f"option type {kind} cannot carry a value")
        if len(value) > 0xFF - 2:
            raise ValueError(f"option {kind} value too long: {len(value)}")
        out += bytes((kind, len(value) + 2))
        out += value
    out += bytes(-len(out) & 3)
    if len(out) > IPV4_MAX_OPTIONS_LEN:
        raise ValueError(f"IPv4 options take {len(out)} bytes, at most 40 fit")
    return bytes(out)


def is_fragment(hdr: IPv4Header) -> bool:
    """Return True if ``hdr`` belongs to a fragment: More Fragments set or a nonzero offset."""
    return hdr.more_fragments or hdr.fragment_offset != 0
