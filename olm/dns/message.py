"""The proxy's DNS message rules: check queries, derive upstream queries, shape replies.

Everything here takes and returns bytes or dnslib records and never touches a socket or the
clock, so each rule of RFC 1035, RFC 6891 (EDNS) and RFC 5452 can be tested on its own. The
proxy (:mod:`olm.dns.proxy`) strings these functions together; the transports only move bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from dnslib import EDNS0, QTYPE, RCODE, DNSBuffer, DNSHeader, DNSQuestion, DNSRecord

__all__ = [
    "ADVERTISED_PAYLOAD",
    "MAX_TCP_MESSAGE",
    "MIN_UDP_PAYLOAD",
    "UPSTREAM_PAYLOAD",
    "Edns",
    "Query",
    "Rejection",
    "check_query",
    "client_reply",
    "error_reply",
    "fit_reply",
    "parse_message",
    "upstream_query",
]

#: Header: ID, flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT (RFC 1035 section 4.1.1).
_HEADER: Final = struct.Struct("!HHHHHH")
HEADER_LEN: Final = _HEADER.size

_QR: Final = 0x8000
_OPCODE_SHIFT: Final = 11
_RD: Final = 0x0100

#: Largest UDP reply without EDNS (RFC 1035 section 4.2.1) and the floor with it (RFC 6891 6.2.5).
MIN_UDP_PAYLOAD: Final = 512
#: Largest message a 2-byte TCP length prefix can frame (RFC 1035 section 4.2.2, RFC 7766).
MAX_TCP_MESSAGE: Final = 65535
#: The payload size we offer upstream and advertise to clients: the DNS flag day 2020 value,
#: which avoids IP fragmentation on every common path (RFC 9715 discusses the choice).
UPSTREAM_PAYLOAD: Final = 1232
ADVERTISED_PAYLOAD: Final = 1232

_OPCODE_QUERY: Final = 0
_BADVERS: Final = 16  # RFC 6891 section 9: extended RCODE 16, "Bad OPT Version".


class MessageError(ValueError):
    """dnslib could not parse (or pack) a message; ``reason`` names the counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def parse_message(data: bytes) -> DNSRecord:
    """Parse a whole DNS message with dnslib; raise :class:`MessageError` on any failure.

    dnslib mostly raises its DNSError, but some malformed inputs escape as other exceptions
    (a label that is not UTF-8 can raise UnicodeDecodeError), so every failure is folded into
    one type here.
    """
    try:
        return DNSRecord.parse(data)
    except Exception as exc:  # dnslib's failure modes on untrusted bytes are not all DNSError
        raise MessageError("unparsable", str(exc)) from exc


@dataclass(frozen=True, slots=True)
class Edns:
    """A client's EDNS(0) parameters taken from its OPT record (RFC 6891 section 6.1.2)."""

    payload: int
    do: bool
    version: int = 0


@dataclass(slots=True)
class Query:
    """A client query that passed every check and may be resolved."""

    id: int
    flags: int
    question: DNSQuestion
    edns: Edns | None

    @property
    def rd(self) -> bool:
        """Whether the client asked for recursion (RD bit, RFC 1035 section 4.1.1)."""
        return bool(self.flags & _RD)

    @property
    def udp_limit(self) -> int:
        """Largest UDP reply the client takes: 512 without EDNS, else its advertised size.

        RFC 6891 section 6.2.5: values below 512 are treated as 512.
        """
        if self.edns is None:
            return MIN_UDP_PAYLOAD
        return max(MIN_UDP_PAYLOAD, min(self.edns.payload, MAX_TCP_MESSAGE))


@dataclass(frozen=True, slots=True)
class Rejection:
    """A query answered (or dropped) without going upstream.

    ``reason`` is the counter to bump (``unreadable``, ``response``, ``formerr``, ``notimp``,
    ``badvers``); ``reply`` is the wire reply, or None when the message is dropped silently.
    """

    reason: str
    reply: bytes | None


def _try_question(data: bytes, qdcount: int) -> DNSQuestion | None:
    """Return the first question if it parses on its own (for copying into FORMERR/NOTIMP)."""
    if qdcount < 1:
        return None
    try:
        buffer = DNSBuffer(data)
        buffer.offset = HEADER_LEN
        question: DNSQuestion = DNSQuestion.parse(buffer)
    except Exception:  # dnslib raises several types on garbage; any of them means "no question"
        return None
    return question if _encodable(question) else None


def _encodable(question: DNSQuestion) -> bool:
    """Whether the question's name keeps RFC 1035's limits, so dnslib can pack it again.

    RFC 1035 sections 2.3.4 and 3.1: labels of at most 63 octets, names of at most 255 octets
    on the wire. dnslib parses longer ones (a length octet of 64 is label type 0b01, RFC 6891
    section 5) but refuses to encode them, so such a question can be neither forwarded nor
    echoed.
    """
    labels = question.qname.label
    return all(len(label) <= 63 for label in labels) and sum(map(len, labels)) + len(labels) < 255


def _reply_header(qid: int, flags: int, rcode: int) -> DNSHeader:
    """Build a response header for a query with ``flags``: QR set, opcode, RD and CD copied."""
    header = DNSHeader(id=qid, bitmap=0)
    header.qr = 1
    header.opcode = (flags >> _OPCODE_SHIFT) & 0xF
    header.rd = (flags >> 8) & 1
    header.cd = (flags >> 4) & 1
    header.ra = 1
    header.rcode = rcode & 0xF
    return header


def _opt(do: bool, ext_rcode: int = 0, payload: int = ADVERTISED_PAYLOAD) -> EDNS0:
    """Our own OPT pseudo-record (RFC 6891 section 6.1.2): version 0, root owner name."""
    return EDNS0(udp_len=payload, ext_rcode=ext_rcode, flags="do" if do else "")


def _error(
    qid: int, flags: int, rcode: int, question: DNSQuestion | None, edns: Edns | None
) -> bytes:
    """Pack an error reply; the extended part of ``rcode`` goes into the OPT (RFC 6891 6.1.3)."""
    record = DNSRecord(_reply_header(qid, flags, rcode))
    if question is not None:
        record.add_question(question)
    if edns is not None:
        record.add_ar(_opt(edns.do, ext_rcode=rcode >> 4))
    packed = bytes(record.pack())  # dnslib packs into a bytearray
    return packed


def check_query(data: bytes) -> Query | Rejection:
    """Validate one client message; return the query to resolve or the immediate answer.

    Rules, in order:

    * fewer than 12 bytes: no header to answer to, dropped (``unreadable``);
    * QR=1: a response, never answered, which also breaks reflection loops (``response``);
    * opcode other than QUERY: NOTIMP (RFC 1035 section 4.1.1);
    * anything dnslib cannot parse: FORMERR with the same ID and the question when it parses;
    * QDCOUNT other than 1: FORMERR (RFC 9619);
    * a question name over RFC 1035's limits (63-octet labels, 255-octet names): FORMERR
      without the question, which cannot be encoded;
    * more than one OPT, an OPT outside the additional section or one whose owner is not the
      root: FORMERR (RFC 6891 sections 6.1.1 and 6.1.2), with an OPT as section 7 demands;
    * EDNS version above 0: BADVERS with an OPT of version 0 (RFC 6891 section 6.1.3).
    """
    if len(data) < HEADER_LEN:
        return Rejection("unreadable", None)
    qid, flags, qdcount, _, _, _ = _HEADER.unpack_from(data)
    if flags & _QR:
        return Rejection("response", None)
    if (flags >> _OPCODE_SHIFT) & 0xF != _OPCODE_QUERY:
        question = _try_question(data, qdcount)
        return Rejection("notimp", _error(qid, flags, RCODE.NOTIMP, question, None))
    try:
        record = parse_message(data)
    except MessageError:
        question = _try_question(data, qdcount)
        return Rejection("formerr", _error(qid, flags, RCODE.FORMERR, question, None))

    opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    misplaced = any(rr.rtype == QTYPE.OPT for rr in record.rr) or any(
        rr.rtype == QTYPE.OPT for rr in record.auth
    )
    edns: Edns | None = None
    if opts:
        opt = opts[0]
        edns = Edns(payload=opt.rclass, do=bool(opt.edns_do), version=(opt.ttl >> 16) & 0xFF)
    question = record.questions[0] if len(record.questions) == 1 else None
    if question is not None and not _encodable(question):
        return Rejection("formerr", _error(qid, flags, RCODE.FORMERR, None, edns))
    if len(opts) > 1 or misplaced or (opts and len(opts[0].rname.label) != 0):
        # RFC 6891 section 7: a problem with the OPT itself is a FORMERR that carries an OPT.
        reply_edns = edns if edns is not None else Edns(ADVERTISED_PAYLOAD, False)
        return Rejection("formerr", _error(qid, flags, RCODE.FORMERR, question, reply_edns))
    if question is None:
        return Rejection("formerr", _error(qid, flags, RCODE.FORMERR, None, edns))
    if edns is not None and edns.version > 0:
        return Rejection("badvers", _error(qid, flags, _BADVERS, question, edns))
    return Query(id=qid, flags=flags, question=question, edns=edns)


def upstream_query(query: Query, qid: int) -> bytes:
    """Build the query the proxy sends upstream for ``query``, with the fresh ID ``qid``.

    RD and CD are copied from the client; our own OPT offers a 1232-byte payload and carries
    the client's DO bit (RFC 3225 section 3), whether or not the client used EDNS. The client's
    EDNS options are hop-by-hop (RFC 6891 section 6.1.1) and are not forwarded.
    """
    header = DNSHeader(id=qid, bitmap=0)
    header.rd = (query.flags >> 8) & 1
    header.cd = (query.flags >> 4) & 1
    record = DNSRecord(header, q=query.question)
    do = query.edns.do if query.edns is not None else False
    record.add_ar(_opt(do, payload=UPSTREAM_PAYLOAD))
    packed = bytes(record.pack())  # dnslib packs into a bytearray
    return packed


def client_reply(query: Query, answer: DNSRecord) -> DNSRecord:
    """Turn an upstream ``answer`` into the reply for ``query`` (not yet sized for UDP).

    The client's ID and question (with its original letter case) are restored, RD is the
    client's, the upstream's OPT is removed and ours added iff the client sent one (RFC 6891
    section 7). An extended RCODE from upstream travels in our OPT; a client without EDNS
    cannot receive one and gets SERVFAIL instead.
    """
    ext_rcode = 0
    kept = []
    for rr in answer.ar:
        if rr.rtype == QTYPE.OPT:
            ext_rcode = (rr.ttl >> 24) & 0xFF
        else:
            kept.append(rr)
    header = answer.header
    header.id = query.id
    header.rd = (query.flags >> 8) & 1
    reply = DNSRecord(header, questions=[query.question], rr=answer.rr, auth=answer.auth, ar=kept)
    if query.edns is not None:
        reply.add_ar(_opt(query.edns.do, ext_rcode=ext_rcode))
    elif ext_rcode:
        return error_reply(query, RCODE.SERVFAIL)
    return reply


def error_reply(query: Query, rcode: int) -> DNSRecord:
    """Build a reply with only ``rcode`` (SERVFAIL, REFUSED), the question and OPT iff EDNS."""
    record = DNSRecord(_reply_header(query.id, query.flags, rcode), q=query.question)
    if query.edns is not None:
        record.add_ar(_opt(query.edns.do, ext_rcode=rcode >> 4))
    return record


def fit_reply(reply: DNSRecord, limit: int) -> tuple[bytes, bool]:
    """Pack ``reply`` into at most ``limit`` bytes; return the bytes and whether it was truncated.

    A reply that does not fit is cut whole, never mid-RRset (RFC 2181 section 9, RFC 1035
    section 4.2.1): TC=1, the question kept, answer, authority and additional records dropped
    except our OPT (RFC 6891 section 7: an EDNS client still gets an OPT). The client retries
    over TCP (RFC 7766 section 5).
    """
    packed = bytes(reply.pack())  # dnslib packs into a bytearray
    if len(packed) <= limit:
        return packed, False
    header = DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap)
    header.tc = 1
    cut = DNSRecord(header, questions=list(reply.questions))
    for rr in reply.ar:
        if rr.rtype == QTYPE.OPT:
            cut.add_ar(rr)
    short = bytes(cut.pack())  # dnslib packs into a bytearray
    return short, True
