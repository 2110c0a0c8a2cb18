"""Answers: what handlers return, kept as wire bytes, and how one is served to one client.

An :class:`Answer` is a message that belongs to no client yet: the header (ID 0), the question,
and the answer, authority and additional records as wire bytes, without an OPT record, with the
offsets of every TTL recorded. :func:`render` serves it to one :class:`Request`: the client's ID
and question spelling, TTLs aged by the time since the answer was learned, the header flags a
proxy must send, an OPT record iff the client sent one, and truncation to the client's limit.
That is the whole fast path of a cache hit (dnsdist's packet cache is the model): a few slices
and ``struct`` writes, no record objects.

:func:`learn` makes an Answer from an upstream's reply, checking its layout on the way (the
layout only: record data is the upstream's business, except the fixed sizes of A and AAAA).
"""

from __future__ import annotations

import copy
import functools
import struct
from typing import Final

from olm.dns.request import Request
from olm.dns.wire import (
    AA,
    AD,
    ADVERTISED_PAYLOAD,
    CD,
    HEADER,
    OPCODE_MASK,
    QR,
    RA,
    RCODE_MASK,
    RD,
    TC,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_OPT,
    TYPE_SOA,
    TYPE_TSIG,
    U16,
    U32,
    WireError,
    ede_option,
    opt_record,
    records,
    skip_name,
)

__all__ = [
    "EDE_NO_REACHABLE_AUTHORITY",
    "EDE_STALE_ANSWER",
    "NOERROR",
    "NXDOMAIN",
    "REFUSED",
    "SERVFAIL",
    "Answer",
    "ede_option",
    "error_answer",
    "learn",
    "raw_answer",
    "render",
]

NOERROR: Final = 0
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
REFUSED: Final = 5

#: Extended DNS Error codes (RFC 8914 section 4).
EDE_STALE_ANSWER: Final = 3
EDE_NO_REACHABLE_AUTHORITY: Final = 22

_FIXED_RDATA: Final = {TYPE_A: 4, TYPE_AAAA: 16}

opt_bytes = functools.cache(opt_record)
#: Our OPT for the common case (no extended RCODE, no EDE), without and with DO.
_PLAIN_OPT: Final = (opt_record(ADVERTISED_PAYLOAD), opt_record(ADVERTISED_PAYLOAD, do=True))
_ID_FLAGS: Final = struct.Struct("!HH")


class Answer:
    """A DNS message ready to be served to any client that asked its question.

    * ``wire``: header (ID 0, counts without an OPT), question, records.
    * ``qend``: where the question ends (12 when there is none).
    * ``rcode``: the full RCODE, extended part included (RFC 6891 section 6.1.3).
    * ``bits``: the header bits the answer carries itself: AA (local data only), AD, TC.
    * ``ttls``: ``(offset, ttl)`` of each record's TTL field, for ageing.
    * ``born``: the clock time the TTLs count from; None for answers that do not age.
    * ``ede``: an Extended DNS Error option to send to EDNS clients (RFC 8914), or b"".
    * ``ttl``: how long the answer may be cached by the RFC's rules: the smallest TTL for a
      positive answer (RFC 2181 section 5.2), the SOA's for a negative one (RFC 2308 section
      5); -1 when the rules give none (a negative answer without SOA, an error).
    * ``negative``: NXDOMAIN or NODATA (RFC 2308 section 1).
    * ``signed``: the message carries a TSIG record; ``raw``: serve it byte for byte (only the
      ID changes), as a signed answer must be (RFC 8945 section 5.5).
    """

    __slots__ = (
        "_aged",
        "bits",
        "born",
        "ede",
        "negative",
        "qend",
        "raw",
        "rcode",
        "signed",
        "ttl",
        "ttls",
        "wire",
    )

    def __init__(
        self,
        wire: bytes,
        qend: int,
        rcode: int,
        *,
        bits: int = 0,
        ttls: tuple[tuple[int, int], ...] = (),
        born: float | None = None,
        ede: bytes = b"",
        ttl: int = -1,
        negative: bool = False,
        signed: bool = False,
        raw: bool = False,
    ) -> None:
        self.wire = wire
        self.qend = qend
        self.rcode = rcode
        self.bits = bits
        self.ttls = ttls
        self.born = born
        self.ede = ede
        self.ttl = ttl
        self.negative = negative
        self.signed = signed
        self.raw = raw
        self._aged: tuple[int, bytes] | None = None  # (age, records aged by it), reused

    def records_at(self, now: float) -> bytes:
        """Return the records after the question, each TTL lowered by the seconds since born.

        Replies served within the same second share one aged copy.
        """
        qend = self.qend
        born = self.born
        if born is None or not self.ttls:
            return self.wire[qend:]
        age = int(now - born)
        if age <= 0:
            return self.wire[qend:]
        aged = self._aged
        if aged is not None and aged[0] == age:
            return aged[1]
        buf = bytearray(self.wire[qend:])
        pack = U32.pack_into
        for off, ttl in self.ttls:
            pack(buf, off - qend, ttl - age if ttl > age else 0)
        records = bytes(buf)
        self._aged = (age, records)
        return records

    @property
    def truncated(self) -> bool:
        """Whether the upstream set TC=1: the answer is incomplete."""
        return bool(self.bits & TC)

    @property
    def positive(self) -> bool:
        """NOERROR with records of the asked type."""
        return self.rcode == NOERROR and not self.negative

    def with_ttls(self, ttl_of: dict[int, int] | None = None, *, fixed: int | None = None) -> bytes:
        """Return the wire with TTLs replaced: each by ``ttl_of[offset]``, or all by ``fixed``."""
        buf = bytearray(self.wire)
        for off, ttl in self.ttls:
            value = fixed if fixed is not None else (ttl_of or {}).get(off, ttl)
            U32.pack_into(buf, off, value)
        return bytes(buf)

    def clamped(self, low: int, high: int) -> Answer:
        """Return a copy whose record TTLs lie within ``[low, high]`` (cache min/max TTL)."""
        if all(low <= ttl <= high for _, ttl in self.ttls):
            return self
        ttls = tuple((off, min(max(ttl, low), high)) for off, ttl in self.ttls)
        copy = self.copy()
        copy.ttls = ttls
        copy.wire = self.with_ttls(dict(ttls))
        return copy

    def stale(self, ttl: int, ede: bytes) -> Answer:
        """Return a copy served as stale: every TTL ``ttl``, no ageing, with ``ede``."""
        copy = self.copy()
        copy.wire = self.with_ttls(fixed=ttl)
        copy.ttls = tuple((off, ttl) for off, _ in self.ttls)
        copy.born = None
        copy.ede = ede
        return copy

    def copy(self) -> Answer:
        """Return a shallow copy (without the aged records, which belong to the wire)."""
        twin = copy.copy(self)
        twin._aged = None
        return twin

    def __repr__(self) -> str:
        kind = "negative" if self.negative else "rcode " + str(self.rcode)
        return f"Answer({kind}, {len(self.wire)} bytes, ttl {self.ttl})"


def error_answer(request: Request, rcode: int, ede: bytes = b"") -> Answer:
    """Return an answer with only ``rcode`` and the request's question (when it has one)."""
    question = request.wire[12 : request.qend]
    wire = HEADER.pack(0, 0, 1 if question else 0, 0, 0, 0) + question
    return Answer(wire, 12 + len(question), rcode, ede=ede)


def learn(data: bytes, born: float | None = None) -> Answer:
    """Make an Answer of an upstream reply; raise :class:`WireError` if its layout is broken.

    The upstream's OPT record is taken out (its extended RCODE kept), AA is dropped (a proxy is
    not the authority, RFC 1035 section 4.1.1) and TTLs with the top bit set count as 0
    (RFC 2181 section 8).
    """
    if len(data) < 12:
        raise WireError("short")
    _, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if qdcount != 1:
        raise WireError("qdcount")
    nend = skip_name(data, 12)
    qend = nend + 4
    if qend > len(data):
        raise WireError("question_overrun")
    qtype = U16.unpack_from(data, nend)[0]
    ttls: list[tuple[int, int]] = []
    smallest = answer_smallest = soa_ttl = -1
    has_type = signed = False
    opt_at = opt_end = -1
    ext_rcode = 0
    end = qend
    for record in records(data, qend, (ancount, nscount, arcount)):
        rtype, section, end = record.rtype, record.section, record.end
        if rtype == TYPE_OPT:
            # RFC 6891 section 6.1.1: one OPT at most, in the additional section, root owner.
            if section != 2 or opt_at >= 0 or data[record.start] != 0:
                raise WireError("bad_opt")
            opt_at, opt_end = record.start, record.end
            ext_rcode = record.ttl >> 24
            continue
        size = _FIXED_RDATA.get(rtype)
        if size is not None and record.end - record.rdata != size:
            raise WireError("bad_rdata")
        ttl = record.ttl if record.ttl < 0x80000000 else 0
        ttls.append((record.ttl_offset, ttl))
        if smallest < 0 or ttl < smallest:
            smallest = ttl
        if section == 0:
            if answer_smallest < 0 or ttl < answer_smallest:
                answer_smallest = ttl
            if rtype == qtype or qtype == TYPE_ANY:
                has_type = True
        elif section == 1 and rtype == TYPE_SOA:
            # SOA RDATA: MNAME, RNAME, then SERIAL REFRESH RETRY EXPIRE MINIMUM (RFC 1035 3.3.13).
            fixed = skip_name(data, skip_name(data, record.rdata))
            if fixed + 20 != record.end:
                raise WireError("bad_rdata")
            minimum = U32.unpack_from(data, fixed + 16)[0]
            soa_ttl = min(ttl, minimum)
        elif rtype == TYPE_TSIG:
            signed = True
    if opt_at >= 0 and opt_end != end:
        # An OPT before other additional records: let dnslib move it to the end, then retry.
        from olm.dns.message import opt_last

        return learn(opt_last(data), born)
    buf = bytearray(data[: opt_at if opt_at >= 0 else end])
    buf[0:2] = b"\x00\x00"
    if opt_at >= 0:
        U16.pack_into(buf, 10, arcount - 1)
    for off, ttl in ttls:
        if ttl == 0 and data[off] & 0x80:
            U32.pack_into(buf, off, 0)
    rcode = ext_rcode << 4 | flags & RCODE_MASK
    negative = False
    cache_ttl = -1
    if rcode == NOERROR and has_type:
        cache_ttl = smallest
    elif rcode in (NOERROR, NXDOMAIN):
        # RFC 2308 section 5: the SOA bounds how long a negative answer lives, and a CNAME
        # chain before it (RFC 2308 section 2.1) cannot outlive its own records.
        negative = True
        if soa_ttl >= 0:
            cache_ttl = soa_ttl if answer_smallest < 0 else min(soa_ttl, answer_smallest)
    return Answer(
        bytes(buf),
        qend,
        rcode,
        bits=flags & (AD | TC),
        ttls=tuple(ttls),
        born=born,
        ttl=cache_ttl,
        negative=negative,
        signed=signed,
    )


def raw_answer(data: bytes) -> Answer:
    """Return an answer served byte for byte but for its ID (a reply to a signed query)."""
    return Answer(data, 12, data[3] & RCODE_MASK, raw=True, signed=True, bits=(data[2] << 8) & TC)


def _truncated(request: Request, flags: int, opt: bytes) -> bytes:
    """Header with TC=1, the question and our OPT only (RFC 2181 section 9, RFC 6891 7)."""
    question = request.wire[12 : request.qend]
    return (
        HEADER.pack(request.id, flags | TC, 1 if question else 0, 0, 0, 1 if opt else 0)
        + question
        + opt
    )


def render(answer: Answer, request: Request, now: float) -> bytes:
    """Serve ``answer`` to the client of ``request``: the reply's exact wire bytes.

    * ID, opcode, RD and CD are the client's; QR=1, RA=1 (we offer recursion); Z=0; AA only
      for local data; AD only when the client set DO or AD (RFC 6840 section 5.8).
    * The question is the client's own spelling (it may use 0x20 case randomisation).
    * Record TTLs are lowered by the whole seconds since ``answer.born``, down to 0.
    * An OPT record (our payload size, the client's DO, the extended RCODE, an EDE option)
      is added iff the client sent one (RFC 6891 section 7); an extended RCODE for a client
      without EDNS is sent as SERVFAIL, which it can understand.
    * A reply over ``request.limit`` is cut whole: TC=1, question and OPT only.
    """
    flags = request.flags
    if answer.raw:
        out = U16.pack(request.id) + answer.wire[2:]
        if len(out) <= request.limit:
            return out
        return _truncated(request, QR | RA | flags & (OPCODE_MASK | RD | CD) | out[3] & 0xF, b"")
    rcode = answer.rcode
    bits = answer.bits
    if bits & AD and not (request.do or flags & AD):
        bits &= ~AD
    head = QR | RA | flags & (OPCODE_MASK | RD | CD) | bits & (AA | AD)
    wire = answer.wire
    qend = answer.qend
    # The client's own spelling of the question (same length: the same name, RFC 4343).
    question = request.wire[12:qend] if qend > 12 and qend == request.qend else wire[12:qend]
    if request.edns:
        ext, ede = rcode >> 4, answer.ede
        opt = (
            _PLAIN_OPT[request.do]
            if not (ext or ede)
            else opt_bytes(ADVERTISED_PAYLOAD, ext, request.do, ede)
        )
        counts = wire[4:10] + U16.pack(((wire[10] << 8) | wire[11]) + 1)
    elif rcode > RCODE_MASK:
        question = request.wire[12 : request.qend]
        flags = (head & ~AD) | SERVFAIL  # no data, nothing authenticated
        return HEADER.pack(request.id, flags, 1 if question else 0, 0, 0, 0) + question
    else:
        opt = b""
        counts = wire[4:12]
    out = (
        _ID_FLAGS.pack(request.id, head | rcode & RCODE_MASK)
        + counts
        + question
        + answer.records_at(now)
        + opt
    )
    if len(out) > request.limit:
        return _truncated(request, head | rcode & RCODE_MASK, opt)
    return out
