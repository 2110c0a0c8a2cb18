"""The slow path: queries of unusual shape judged with dnslib, by the rules of the RFCs.

A query of the ordinary shape is recognised by :class:`olm.dns.request.Request` alone and never
comes here. Everything else (short, a response, another opcode, several questions, records in
the answer or authority section, a broken or versioned OPT, a signature, a compressed question,
trailing bytes) is parsed by dnslib and either refused with the RCODE its RFC demands or put
into the ordinary shape. Nothing here touches a socket or the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dnslib import QTYPE, DNSBuffer, DNSQuestion, DNSRecord

from olm.dns.answer import Answer
from olm.dns.request import Request
from olm.dns.wire import HEADER, OPCODE_MASK, QR, TYPE_TSIG, opt_record

__all__ = ["MessageError", "Rejection", "judge", "opt_last", "parse_message"]

_OPCODE_SHIFT: Final = 11
FORMERR: Final = 1
NOTIMP: Final = 4
BADVERS: Final = 16  # RFC 6891 section 9: extended RCODE 16, "Bad OPT Version".


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
class Rejection:
    """A query answered (or dropped) by the rules rather than resolved.

    ``reason`` is the counter to bump (``unreadable``, ``response``, ``formerr``, ``notimp``,
    ``badvers``); ``answer`` is what to send, or None when the message is dropped silently.
    """

    reason: str
    answer: Answer | None


def _encodable(question: DNSQuestion) -> bool:
    """Whether the question's name keeps RFC 1035's limits, so it can be echoed.

    RFC 1035 sections 2.3.4 and 3.1: labels of at most 63 octets, names of at most 255 octets
    on the wire. dnslib parses longer ones (a length octet of 64 is label type 0b01, RFC 6891
    section 5) but refuses to encode them.
    """
    labels = question.qname.label
    return all(len(label) <= 63 for label in labels) and sum(map(len, labels)) + len(labels) < 255


def _question_wire(question: DNSQuestion | None) -> bytes:
    """Return the question packed on its own (uncompressed), or b"" when there is none to echo."""
    if question is None or not _encodable(question):
        return b""
    try:
        return bytes(DNSRecord(q=question).pack())[12:]
    except Exception:  # a name dnslib parsed but cannot encode
        return b""


def _first_question(request: Request, qdcount: int) -> bytes:
    """Return the first question to echo in an error: the client's bytes when walkable."""
    if request.qend:
        return request.wire[12 : request.qend]
    if qdcount < 1:
        return b""
    try:
        buffer = DNSBuffer(request.wire)
        buffer.offset = 12
        question: DNSQuestion = DNSQuestion.parse(buffer)
    except Exception:  # dnslib raises several types on garbage; any of them means "no question"
        return b""
    return _question_wire(question)


def _error(request: Request, rcode: int, question: bytes, reason: str) -> Rejection:
    wire = HEADER.pack(0, 0, 1 if question else 0, 0, 0, 0) + question
    return Rejection(reason, Answer(wire, 12 + len(question), rcode))


def _set_edns(request: Request, payload: int | None, do: bool = False) -> None:
    """Make the request carry (or not) an OPT as the slow path read it, for the reply's OPT."""
    request.edns = payload is not None
    request.do = do
    if payload is not None and request.transport == "udp":
        request.limit = min(max(payload, 512), 65535)


def judge(request: Request) -> Request | Rejection:
    """Judge a query the fast view did not accept; return it in ordinary shape, or a Rejection.

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
    * EDNS version above 0: BADVERS with an OPT of version 0 (RFC 6891 section 6.1.3);
    * a TSIG record anywhere but last in the additional section: FORMERR (RFC 8945 5.1);
      a TSIG record last: the query is passed on whole, signature included (``tsig``).

    Anything else (answer or authority records in a query, a compressed question, bytes
    after the message, options we cannot read) is rebuilt as question plus our reading of its
    OPT, and must then pass the fast view.
    """
    wire = request.wire
    if len(wire) < 12:
        return Rejection("unreadable", None)
    _, flags, qdcount, _, _, _ = HEADER.unpack_from(wire)
    if flags & QR:
        return Rejection("response", None)
    if flags & OPCODE_MASK:
        _set_edns(request, None)
        return _error(request, NOTIMP, _first_question(request, qdcount), "notimp")
    try:
        record = parse_message(wire)
    except MessageError:
        _set_edns(request, None)
        return _error(request, FORMERR, _first_question(request, qdcount), "formerr")

    opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    misplaced = any(rr.rtype == QTYPE.OPT for rr in (*record.rr, *record.auth))
    if opts:
        opt = opts[0]
        _set_edns(request, opt.rclass, bool(opt.edns_do))
    else:
        _set_edns(request, None)
    question = record.questions[0] if len(record.questions) == 1 else None
    if question is not None and not _encodable(question):
        return _error(request, FORMERR, b"", "formerr")
    qwire = _question_wire(question)
    if len(opts) > 1 or misplaced or (opts and len(opts[0].rname.label) != 0):
        # RFC 6891 section 7: a problem with the OPT itself is a FORMERR that carries an OPT.
        if not request.edns:
            _set_edns(request, 512)
        return _error(request, FORMERR, qwire, "formerr")
    if question is None or not qwire:
        return _error(request, FORMERR, b"", "formerr")
    if opts and (opts[0].ttl >> 16) & 0xFF:
        return _error(request, BADVERS, qwire, "badvers")
    tsig_at = [i for i, rr in enumerate(record.ar) if rr.rtype == TYPE_TSIG]
    if tsig_at:
        if tsig_at != [len(record.ar) - 1] or not request.qend:
            return _error(request, FORMERR, qwire, "formerr")
        request.tsig = True
        request.ok = True
        return request
    normal = HEADER.pack(request.id, flags, 1, 0, 0, 1 if opts else 0) + qwire
    if opts:
        normal += opt_record(opts[0].rclass, do=bool(opts[0].edns_do))
    rebuilt = Request(normal, request.client, request.port, request.local, request.transport)
    if not rebuilt.ok:
        return _error(request, FORMERR, qwire, "formerr")
    return rebuilt


def opt_last(data: bytes) -> bytes:
    """Return ``data`` with its OPT record moved to the end of the additional section.

    For the rare upstream reply whose OPT precedes other additional records: the fast path
    strips a trailing OPT with a slice. dnslib repacks the whole message, so compression
    pointers stay right. Raises :class:`olm.dns.wire.WireError` if dnslib cannot do it.
    """
    from olm.dns.wire import WireError

    try:
        record = parse_message(data)
        opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
        record.ar = [rr for rr in record.ar if rr.rtype != QTYPE.OPT] + opts
        return bytes(record.pack())
    except Exception as exc:
        raise WireError("unparsable") from exc
