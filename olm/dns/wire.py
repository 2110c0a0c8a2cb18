"""DNS wire format for the fast path: header bits, names, records and our OPT, without dnslib.

Everything here reads or writes message bytes at known offsets (RFC 1035 section 4.1) and never
builds a record object. It is the shared vocabulary of :mod:`olm.dns.request` (the query view)
and :mod:`olm.dns.answer` (stored answers and how they are served); the slow path, where odd
messages are judged, uses dnslib in :mod:`olm.dns.message`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

__all__ = [
    "AA",
    "AD",
    "ADVERTISED_PAYLOAD",
    "CD",
    "HEADER",
    "MAX_TCP_MESSAGE",
    "MIN_UDP_PAYLOAD",
    "OPCODE_MASK",
    "QR",
    "RA",
    "RD",
    "TC",
    "UPSTREAM_PAYLOAD",
    "Record",
    "WireError",
    "ede_option",
    "expand_records",
    "opt_record",
    "read_name",
    "records",
    "skip_name",
]

#: ID, flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT (RFC 1035 section 4.1.1).
HEADER: Final = struct.Struct("!HHHHHH")
#: TYPE, CLASS, TTL, RDLENGTH after a resource record's owner name (RFC 1035 section 4.1.3).
RR_FIXED: Final = struct.Struct("!HHIH")
U16: Final = struct.Struct("!H")
U32: Final = struct.Struct("!I")

# Header flag bits (RFC 1035 4.1.1; AD and CD: RFC 4035 3.2; Z must be zero).
QR: Final = 0x8000
OPCODE_MASK: Final = 0x7800
AA: Final = 0x0400
TC: Final = 0x0200
RD: Final = 0x0100
RA: Final = 0x0080
Z: Final = 0x0040
AD: Final = 0x0020
CD: Final = 0x0010
RCODE_MASK: Final = 0x000F

TYPE_A: Final = 1
TYPE_SOA: Final = 6
TYPE_AAAA: Final = 28
TYPE_OPT: Final = 41
TYPE_TSIG: Final = 250
TYPE_ANY: Final = 255
DO_BIT: Final = 0x8000  # in the OPT record's flags (RFC 3225 section 3)
OPTION_EDE: Final = 15  # Extended DNS Errors (RFC 8914 section 2)

#: RCODE mnemonics (RFC 1035 section 4.1.1; BADVERS, an extended RCODE: RFC 6891 section 6.1.3).
RCODE_NAMES: Final = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    16: "BADVERS",
}

#: Largest UDP reply without EDNS (RFC 1035 section 4.2.1) and the floor with it (RFC 6891 6.2.5).
MIN_UDP_PAYLOAD: Final = 512
#: Largest message a 2-byte TCP length prefix can frame (RFC 1035 section 4.2.2, RFC 7766).
MAX_TCP_MESSAGE: Final = 65535
#: The payload size we offer upstream and advertise to clients: the DNS flag day 2020 value,
#: which avoids IP fragmentation on every common path (RFC 9715 discusses the choice).
UPSTREAM_PAYLOAD: Final = 1232
ADVERTISED_PAYLOAD: Final = 1232

_MAX_NAME: Final = 255  # octets on the wire (RFC 1035 section 3.1)


class WireError(ValueError):
    """A message does not follow RFC 1035's layout; ``reason`` names the counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def skip_name(msg: bytes, off: int) -> int:
    """Return the offset just after the name at ``off``, checking its labels and pointers.

    A compression pointer (RFC 1035 section 4.1.4) ends the name; it must point backwards, to
    before the name it is part of, so a chain of pointers can never loop. Labels longer than 63
    octets (the 0b01 and 0b10 label types, RFC 6891 section 5) and names longer than 255
    octets are refused.
    """
    start = off
    end = len(msg)
    while True:
        if off >= end:
            raise WireError("name_overrun")
        length = msg[off]
        if length == 0:
            if off + 1 - start > _MAX_NAME:
                raise WireError("name_too_long")
            return off + 1
        if length >= 0xC0:
            if off + 2 > end:
                raise WireError("name_overrun")
            if ((length & 0x3F) << 8 | msg[off + 1]) >= start:
                raise WireError("bad_pointer")
            return off + 2
        if length > 63:
            raise WireError("bad_label")
        off += length + 1


class Record(NamedTuple):
    """Where one resource record lies in a message (all offsets into the message)."""

    section: int  # 0 answer, 1 authority, 2 additional
    start: int  # the owner name
    rtype: int
    ttl: int
    ttl_offset: int
    rdata: int  # start of RDATA
    end: int  # just after RDATA


def records(msg: bytes, off: int, counts: tuple[int, int, int]) -> Iterator[Record]:
    """Yield the records of the three sections starting at ``off``; raise WireError if cut."""
    end = len(msg)
    for section, count in enumerate(counts):
        for _ in range(count):
            start = off
            off = skip_name(msg, off)
            if off + 10 > end:
                raise WireError("record_overrun")
            rtype, _, ttl, rdlength = RR_FIXED.unpack_from(msg, off)
            rdata = off + 10
            off = rdata + rdlength
            if off > end:
                raise WireError("rdata_overrun")
            yield Record(section, start, rtype, ttl, rdata - 6, rdata, off)


def ede_option(code: int, text: str = "") -> bytes:
    """Encode an Extended DNS Error option: INFO-CODE and EXTRA-TEXT (RFC 8914 section 2)."""
    extra = text.encode("utf-8")
    return struct.pack("!HHH", OPTION_EDE, 2 + len(extra), code) + extra


def opt_record(
    payload: int, ext_rcode: int = 0, do: bool = False, options: bytes = b"", version: int = 0
) -> bytes:
    """Encode an OPT pseudo-record with the root as owner (RFC 6891 section 6.1.2)."""
    return (
        b"\x00"
        + struct.pack(
            "!HHBBHH",
            TYPE_OPT,
            payload,
            ext_rcode,
            version,
            DO_BIT if do else 0,
            len(options),
        )
        + options
    )


#: Types whose RDATA holds names that may be compressed (RFC 3597 section 4: only the types
#: of RFC 1035): NS, MD, MF, CNAME, SOA, MB, MG, MR, PTR, MINFO, MX.
_NAMES_IN_RDATA: Final = {2: 1, 3: 1, 4: 1, 5: 1, 6: 2, 7: 1, 8: 1, 9: 1, 12: 1, 14: 2, 15: 1}
_MAX_HOPS: Final = 32


def read_name(msg: bytes, off: int) -> tuple[bytes, int]:
    """Return the name at ``off`` written in full (pointers followed) and the offset after it.

    Pointers must point backwards (so they cannot loop), at most 32 of them.
    """
    out = bytearray()
    end = -1
    hops = 0
    size = len(msg)
    while True:
        if off >= size:
            raise WireError("name_overrun")
        length = msg[off]
        if length >= 0xC0:
            if off + 2 > size:
                raise WireError("name_overrun")
            target = (length & 0x3F) << 8 | msg[off + 1]
            if target >= off or hops >= _MAX_HOPS:
                raise WireError("bad_pointer")
            hops += 1
            if end < 0:
                end = off + 2
            off = target
            continue
        if length > 63:
            raise WireError("bad_label")
        out += msg[off : off + length + 1]
        if len(out) > 255:
            raise WireError("name_too_long")
        if length == 0:
            return bytes(out), (end if end >= 0 else off + 1)
        off += length + 1


def expand_records(msg: bytes, start: int) -> list[tuple[int, bytes]]:
    """Return every record after ``start`` as ``(section, bytes)`` with no compression left.

    The owner is written in full, and so are the names in the RDATA of the types that may
    compress them; other RDATA is copied as it is. OPT records are left out.
    """
    _, _, _, ancount, nscount, arcount = HEADER.unpack_from(msg)
    out = []
    for record in records(msg, start, (ancount, nscount, arcount)):
        if record.rtype == TYPE_OPT:
            continue
        owner, fixed = read_name(msg, record.start)
        rdata = msg[record.rdata : record.end]
        names = _NAMES_IN_RDATA.get(record.rtype)
        if names:
            off = record.rdata
            parts = []
            if record.rtype == 15:  # MX: PREFERENCE first (RFC 1035 3.3.9)
                parts.append(msg[off : off + 2])
                off += 2
            for _ in range(names):
                name, off = read_name(msg, off)
                parts.append(name)
            parts.append(msg[off : record.end])  # SOA's five numbers
            rdata = b"".join(parts)
        head = msg[fixed : fixed + 8]  # TYPE, CLASS, TTL
        out.append((record.section, owner + head + U16.pack(len(rdata)) + rdata))
    return out
