"""The IPv6 fixed header and extension headers (RFC 8200 sections 3 and 4).

::

    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version| Traffic Class |           Flow Label                  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |         Payload Length        |  Next Header  |   Hop Limit   |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |          Source Address (16 octets), Destination Address (16)  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Extension headers this module walks: Hop-by-Hop Options (0), Routing (43), Fragment (44),
Destination Options (60) and the Authentication Header (51, RFC 4302 section 2). Every one
starts with a Next Header octet; the walk stops at the first value that is not one of them
(an upper-layer protocol, No Next Header 59, ESP 50, or anything unknown).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from netstack.errors import ParseError
from netstack.header.numbers import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
)

IPV6_HEADER_LEN: Final = 40
"""Length of the fixed header."""
IPV6_FRAGMENT_HEADER_LEN: Final = 8
"""Length of the Fragment header (RFC 8200 section 4.5)."""
IPV6_MIN_MTU: Final = 1280
"""The minimum link MTU every IPv6 link must carry (RFC 8200 section 5)."""

# Where the fixed header's fields sit (RFC 8200 section 3). Code that looks at one field of a
# packet it does not parse (the TUN filter, segmentation offload) reads it here, unvalidated.
IPV6_PAYLOAD_LENGTH_AT: Final = 4
"""Offset of Payload Length (16 bits)."""
IPV6_NEXT_HEADER_AT: Final = 6
"""Offset of Next Header (8 bits)."""
IPV6_HOP_LIMIT_AT: Final = 7
"""Offset of Hop Limit (8 bits)."""
IPV6_SRC_AT: Final = 8
"""Offset of Source Address (16 octets)."""
IPV6_DST_AT: Final = 24
"""Offset of Destination Address (16 octets)."""
IPV6_SRC: Final = slice(IPV6_SRC_AT, IPV6_SRC_AT + 16)
"""Source Address as a slice: ``packet[IPV6_SRC]``."""
IPV6_DST: Final = slice(IPV6_DST_AT, IPV6_DST_AT + 16)
"""Destination Address as a slice: ``packet[IPV6_DST]``."""
IPV6_ADDRESSES: Final = slice(IPV6_SRC_AT, IPV6_DST_AT + 16)
"""Source and Destination Address together (the pseudo-header's addresses)."""

# TLV option types of RFC 8200 section 4.2 with a fixed meaning.
OPT_PAD1: Final = 0
"""Pad1: a single octet of padding with no length field."""
OPT_PADN: Final = 1
"""PadN: two or more octets of padding (type, length, zeros)."""
OPT_JUMBO: Final = 0xC2
"""Jumbo Payload (RFC 2675): not supported by this stack."""

EXTENSION_KINDS: Final = frozenset(
    (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS, IPPROTO_AH)
)
"""Next Header values that :func:`walk_extensions` steps over."""

# version/traffic class/flow label, payload length, next header, hop limit, src, dst
_HEADER: Final = struct.Struct("!IHBB16s16s")
# next header, reserved, fragment offset/res/M, identification
_FRAGMENT: Final = struct.Struct("!BBHI")
# next header, header extension length
_EXT_PREFIX: Final = struct.Struct("!BB")
_unpack_header = _HEADER.unpack_from
_new = object.__new__

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class IPv6Header:
    """The 40-byte IPv6 fixed header (RFC 8200 section 3).

    :meth:`parse` is the one validated parse of the fixed header and :func:`walk_extensions`
    the one walk of the extension headers after it; the constructor and :meth:`build` are the
    way to write one.
    """

    src: bytes
    dst: bytes
    next_header: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0
    payload_length: int = 0

    @property
    def dscp(self) -> int:
        """Return the Differentiated Services codepoint (RFC 2474 section 3)."""
        return self.traffic_class >> 2

    @property
    def ecn(self) -> int:
        """Return the ECN field (RFC 3168 section 5)."""
        return self.traffic_class & 0x3

    def build(self, payload_length: int) -> bytes:
        """Return the fixed header for ``payload_length`` bytes after it (extensions included).

        The record's own ``payload_length`` is ignored. Raises ValueError on field values that
        do not fit the wire format.
        """
        if len(self.src) != 16 or len(self.dst) != 16:
            raise ValueError("IPv6 addresses must be 16 bytes")
        tc = self.traffic_class
        flow = self.flow_label
        if not 0 <= tc <= 0xFF or not 0 <= flow <= 0xFFFFF:
            raise ValueError(f"traffic class {tc} or flow label {flow} out of range")
        if not 0 <= payload_length <= 0xFFFF:
            raise ValueError(f"IPv6 payload length out of range: {payload_length}")
        try:
            return _HEADER.pack(
                (6 << 28) | (tc << 20) | flow,
                payload_length,
                self.next_header,
                self.hop_limit,
                self.src,
                self.dst,
            )
        except struct.error as exc:
            raise ValueError(f"IPv6 field out of range: {exc}") from exc

    def pack(self, payload: bytes | memoryview) -> bytes:
        """Return the fixed header followed by ``payload`` (extension headers and data)."""
        return self.build(len(payload)) + payload

    @staticmethod
    def parse(buf: Buffer) -> IPv6Header:
        """Validate the fixed header at the start of ``buf`` (which may carry link padding).

        Raises ParseError with reason "truncated", "bad_version" or "bad_length" (the payload
        runs past the buffer, or Payload Length is zero with a Hop-by-Hop header, i.e. a
        jumbogram, RFC 2675, which this stack does not support).
        """
        n = len(buf)
        if n < IPV6_HEADER_LEN:
            raise ParseError("truncated", f"{n} bytes, IPv6 header needs 40")
        vtf, plen, nh, hlim, src, dst = _unpack_header(buf)
        if vtf >> 28 != 6:
            raise ParseError("bad_version", f"version {vtf >> 28}")
        if IPV6_HEADER_LEN + plen > n:
            raise ParseError("bad_length", f"payload length {plen}, {n - 40} bytes after header")
        # RFC 2675 section 2: a jumbogram has Payload Length 0 and a Jumbo option in a
        # Hop-by-Hop header. A zero payload cannot hold a Hop-by-Hop header in any other case.
        if plen == 0 and nh == IPPROTO_HOPOPTS:
            raise ParseError("bad_length", "payload length 0 with hop-by-hop (jumbogram)")
        # Once per received packet: the record is filled in directly, not through __init__.
        hdr: IPv6Header = _new(IPv6Header)
        hdr.src = src
        hdr.dst = dst
        hdr.next_header = nh
        hdr.hop_limit = hlim
        hdr.traffic_class = (vtf >> 20) & 0xFF
        hdr.flow_label = vtf & 0xFFFFF
        hdr.payload_length = plen
        return hdr


@dataclass(slots=True, frozen=True)
class IPv6Extension:
    """A Hop-by-Hop (0), Routing (43), Destination Options (60) or AH (51) extension header.

    ``data`` is everything after the two-octet (Next Header, Hdr Ext Len) prefix.
    """

    kind: int
    data: bytes

    @property
    def wire_length(self) -> int:
        """Return the length of the header on the wire, prefix included."""
        return 2 + len(self.data)


@dataclass(slots=True, frozen=True)
class IPv6Fragment:
    """An IPv6 Fragment header (RFC 8200 section 4.5); ``offset`` is in bytes (wire value * 8).

    ``res`` holds the 2-bit Res field; the 8-bit Reserved octet is ignored on reception and
    sent as zero.
    """

    offset: int
    more: bool
    ident: int
    kind: int = IPPROTO_FRAGMENT
    res: int = 0

    @property
    def wire_length(self) -> int:
        """Return the length of the header on the wire (always 8)."""
        return IPV6_FRAGMENT_HEADER_LEN


@dataclass(slots=True)
class ExtensionChain:
    """The result of :func:`walk_extensions`: the headers found and where the payload starts."""

    headers: list[IPv6Extension | IPv6Fragment]
    upper_protocol: int
    """Next Header value after the last extension header (6, 17, 58, 59, 50, unknown...)."""
    upper_offset: int
    """Offset in the packet where the upper-layer data (or fragment data) starts."""
    fragment: IPv6Fragment | None
    """The first Fragment header of the chain, if any."""
    fragment_offset_in_packet: int
    """Offset of that Fragment header (= end of the unfragmentable part), or -1."""
    next_header_field_offset: int
    """Offset of the Next Header octet naming that Fragment header (6 when it is the fixed
    header's), or -1."""


def walk_extensions(
    packet: Buffer,
    next_header: int,
    offset: int = IPV6_HEADER_LEN,
    end: int | None = None,
    max_headers: int = 16,
) -> ExtensionChain:
    """Walk the extension headers of ``packet`` starting at ``offset`` with ``next_header``.

    The fixed header is taken to occupy the 40 bytes before ``offset``; ``end`` bounds the
    walk (default: the length of ``packet``). After a Fragment header with a nonzero offset the
    walk stops, since what follows is fragment data. Raises ParseError with reason
    "hop_by_hop_not_first" (RFC 8200 section 4.1), "truncated_extension" or
    "too_many_extension_headers" (more than ``max_headers``).
    """
    n = len(packet)
    stop = n if end is None or end > n else end
    headers: list[IPv6Extension | IPv6Fragment] = []
    fragment: IPv6Fragment | None = None
    fragment_at = -1
    naming_field = -1
    # Offset of the octet holding the Next Header value being followed.
    field_at = offset - IPV6_HEADER_LEN + 6
    nh = next_header
    pos = offset
    while nh in EXTENSION_KINDS:
        if len(headers) >= max_headers:
            raise ParseError("too_many_extension_headers", f"more than {max_headers}")
        if nh == IPPROTO_FRAGMENT:
            if pos + IPV6_FRAGMENT_HEADER_LEN > stop:
                raise ParseError("truncated_extension", f"fragment header at {pos}")
            nxt, _reserved, off_m, ident = _FRAGMENT.unpack_from(packet, pos)
            frag = IPv6Fragment(
                offset=off_m & 0xFFF8, more=bool(off_m & 1), ident=ident, res=(off_m >> 1) & 0x3
            )
            headers.append(frag)
            if fragment is None:
                fragment, fragment_at, naming_field = frag, pos, field_at
            field_at = pos
            pos += IPV6_FRAGMENT_HEADER_LEN
            nh = nxt
            if frag.offset:
                # RFC 8200 section 4.5: only the first fragment carries the headers that
                # follow the Fragment header; later ones carry opaque fragment data.
                break
            continue
        if nh == IPPROTO_HOPOPTS and headers:
            raise ParseError("hop_by_hop_not_first", f"hop-by-hop header at {pos}")
        if pos + 2 > stop:
            raise ParseError("truncated_extension", f"header {nh} at {pos}")
        nxt, ext_len = _EXT_PREFIX.unpack_from(packet, pos)
        # RFC 4302 section 2.2: AH counts 4-octet units minus 2; the others (RFC 8200
        # sections 4.3, 4.4, 4.6) count 8-octet units not including the first.
        size = (ext_len + 2) << 2 if nh == IPPROTO_AH else (ext_len + 1) << 3
        if pos + size > stop:
            raise ParseError("truncated_extension", f"header {nh} of {size} bytes at {pos}")
        headers.append(IPv6Extension(nh, bytes(packet[pos + 2 : pos + size])))
        field_at = pos
        pos += size
        nh = nxt
    return ExtensionChain(headers, nh, pos, fragment, fragment_at, naming_field)


def build_extensions(
    headers: Sequence[IPv6Extension | IPv6Fragment], upper_protocol: int
) -> tuple[int, bytes]:
    """Return (Next Header value for the fixed header, bytes of the chain) for ``headers``.

    Each header's Next Header octet names the following one, the last names
    ``upper_protocol``. Raises ValueError for an unknown kind, a Hop-by-Hop header that is not
    first, a header whose length is not a multiple of 8 bytes, or an out-of-range field.
    """
    if not headers:
        return upper_protocol, b""
    out = bytearray()
    last = len(headers) - 1
    for i, hdr in enumerate(headers):
        nxt = upper_protocol if i == last else headers[i + 1].kind
        if not 0 <= nxt <= 0xFF:
            raise ValueError(f"next header value out of range: {nxt}")
        if isinstance(hdr, IPv6Fragment):
            if hdr.kind != IPPROTO_FRAGMENT:
                raise ValueError(f"fragment header kind must be 44, not {hdr.kind}")
            off = hdr.offset
            if off & 7 or not 0 <= off <= 0xFFF8:
                raise ValueError(f"fragment offset must be a multiple of 8 in [0, 65528]: {off}")
            if not 0 <= hdr.res <= 3 or not 0 <= hdr.ident <= 0xFFFFFFFF:
                raise ValueError("fragment res or identification out of range")
            out += _FRAGMENT.pack(nxt, 0, off | (hdr.res << 1) | int(hdr.more), hdr.ident)
            continue
        kind = hdr.kind
        if kind not in EXTENSION_KINDS:
            raise ValueError(f"not an extension header walk_extensions follows: {kind}")
        if kind == IPPROTO_HOPOPTS and i != 0:
            raise ValueError("hop-by-hop header must come first (RFC 8200 section 4.1)")
        size = 2 + len(hdr.data)
        if size & 7:
            raise ValueError(f"extension header {kind} is {size} bytes, not a multiple of 8")
        ext_len = (size >> 2) - 2 if kind == IPPROTO_AH else (size >> 3) - 1
        if ext_len > 0xFF:
            raise ValueError(f"extension header {kind} too long: {size} bytes")
        out += _EXT_PREFIX.pack(nxt, ext_len)
        out += hdr.data
    return headers[0].kind, bytes(out)


def parse_tlv_options(data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
    """Return the options of a Hop-by-Hop or Destination Options header as (type, value).

    ``data`` is the header after its two-octet prefix. Pad1 and PadN are skipped (RFC 8200
    section 4.2). Raises ParseError("bad_option") on an option that runs past the end.
    """
    result: list[tuple[int, bytes]] = []
    n = len(data)
    i = 0
    while i < n:
        kind = data[i]
        if kind == OPT_PAD1:
            i += 1
            continue
        if i + 1 >= n:
            raise ParseError("bad_option", f"option {kind} has no length octet")
        end = i + 2 + data[i + 1]
        if end > n:
            raise ParseError("bad_option", f"option {kind} runs to {end} of {n}")
        if kind != OPT_PADN:
            result.append((kind, bytes(data[i + 2 : end])))
        i = end
    return result


def build_tlv_options(
    options: Sequence[tuple[int, bytes]], pad_to: int = 8, prefix: int = 2
) -> bytes:
    """Return ``options`` (type, value) as TLVs padded for an options header.

    Pad1/PadN follow the options so that ``prefix`` + length is a multiple of ``pad_to``
    (RFC 8200 section 4.2). Alignment requirements of individual options are not applied.
    Raises ValueError on a padding type or an over-long value.
    """
    out = bytearray()
    for kind, value in options:
        if kind in (OPT_PAD1, OPT_PADN) or not 0 <= kind <= 0xFF:
            raise ValueError(f"option type {kind} is padding or out of range")
        if len(value) > 0xFF:
            raise ValueError(f"option {kind} value too long: {len(value)}")
        out += bytes((kind, len(value)))
        out += value
    need = -(prefix + len(out)) % pad_to
    if need == 1:
        out.append(OPT_PAD1)
    elif need:
        out += bytes((OPT_PADN, need - 2))
        out += bytes(need - 2)
    return bytes(out)


def option_action(kind: int) -> int:
    """Return the action an unrecognised option asks for: the two high bits of its type.

    RFC 8200 section 4.2: 0 skip, 1 discard, 2 discard and send ICMP Parameter Problem,
    3 discard and send ICMP only if the destination is not multicast.
    """
    return kind >> 6


def option_may_change(kind: int) -> bool:
    """Return True if an option's data may change en route (RFC 8200 section 4.2, third bit)."""
    return bool(kind & 0x20)
