"""The fast path and the dnslib path give the same message.

The fast path is :func:`olm.dns.answer.learn` then :func:`olm.dns.answer.render`: wire bytes
patched at known offsets. The reference here does the same job the slow way, with dnslib
records, following the rules as docs/dns.md states them: the client's ID, opcode, RD, CD and
question spelling; QR=1, RA=1, AA=0, Z=0; AD only for a client that set DO or AD; TTLs aged by
whole seconds down to 0 (a TTL with the top bit set counts as 0); the upstream's OPT replaced by
ours iff the client sent one (an extended RCODE without one becomes SERVFAIL); a stale answer
with every TTL 30 and EDE 3; and over UDP, a reply over the client's limit cut to header,
question and OPT with TC=1.

Hypothesis chooses the cached answers and the queries: names, 0x20 case, IDs, EDNS sizes, DO,
CD, AD and RD bits, record types and TTLs, ages, stale or not, UDP or TCP.
"""

from __future__ import annotations

from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    MX,
    QTYPE,
    RR,
    SOA,
    TXT,
    A,
    DNSHeader,
    DNSQuestion,
    DNSRecord,
    EDNSOption,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from olm.dns.answer import EDE_STALE_ANSWER, learn, render
from olm.dns.request import TCP, UDP, Request
from olm.dns.wire import ede_option

labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
names = st.lists(labels, min_size=1, max_size=4).map(lambda parts: ".".join(parts) + ".test")
ttls = st.one_of(st.integers(0, 2**31 - 1), st.sampled_from([0, 1, 30, 59, 60, 2**31, 2**32 - 1]))
RTYPES = ("A", "AAAA", "TXT", "CNAME", "MX")


def _rdata(rtype: str, n: int) -> object:
    if rtype == "A":
        return A(f"192.0.2.{n % 250}")
    if rtype == "AAAA":
        return AAAA(f"2001:db8::{n:x}")
    if rtype == "TXT":
        return TXT("x" * (n % 200))
    if rtype == "CNAME":
        return CNAME(f"c{n}.example.test.")
    return MX(f"mx{n}.example.test.", n % 50)


@st.composite
def upstream_answers(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """An upstream reply: (question name, type, wire), the way a resolver could send it."""
    qname = draw(names)
    qtype = draw(st.sampled_from(RTYPES))
    header = DNSHeader(
        id=draw(st.integers(0, 0xFFFF)),
        qr=1,
        aa=draw(st.booleans()),
        ra=1,
        ad=draw(st.booleans()),
        rcode=draw(st.sampled_from([0, 0, 3])),
    )
    reply = DNSRecord(header, q=DNSQuestion(qname, getattr(QTYPE, qtype)))
    for i in range(draw(st.integers(0, 30))):
        owner = qname if draw(st.booleans()) else f"o{i}.{qname}"
        rtype = draw(st.sampled_from(RTYPES))
        rr = RR(owner, getattr(QTYPE, rtype), rdata=_rdata(rtype, i), ttl=draw(ttls))
        section = draw(st.sampled_from(["rr", "rr", "auth", "ar"]))
        getattr(reply, {"rr": "add_answer", "auth": "add_auth", "ar": "add_ar"}[section])(rr)
    if draw(st.booleans()):
        soa = SOA("ns.test.", "admin.test.", (1, 2, 3, 4, draw(st.integers(0, 10_000))))
        reply.add_auth(RR("test.", QTYPE.SOA, rdata=soa, ttl=draw(ttls)))
    if draw(st.booleans()):
        reply.add_ar(EDNS0(udp_len=4096, ext_rcode=draw(st.sampled_from([0, 0, 1]))))
    return qname, qtype, bytes(reply.pack())


@st.composite
def client_queries(draw: st.DrawFn, qname: str, qtype: str) -> bytes:
    """The client's query for ``qname``, in any letter case, with any header bits and EDNS."""
    spelled = "".join(c.upper() if draw(st.booleans()) else c for c in qname)
    header = DNSHeader(
        id=draw(st.integers(0, 0xFFFF)),
        rd=draw(st.booleans()),
        cd=draw(st.booleans()),
        ad=draw(st.booleans()),
    )
    query = DNSRecord(header, q=DNSQuestion(spelled, getattr(QTYPE, qtype)))
    if draw(st.booleans()):
        flags = "do" if draw(st.booleans()) else ""
        query.add_ar(EDNS0(udp_len=draw(st.integers(0, 65535)), flags=flags))
    return bytes(query.pack())


def _ttl(value: int, age: int) -> int:
    value = value if value < 2**31 else 0  # RFC 2181 section 8
    return max(0, value - age)


def reference(upstream: bytes, query: bytes, age: int, stale: bool, limit: int) -> bytes:
    """The reply by the rules, built with dnslib records."""
    up = DNSRecord.parse(upstream)
    q = DNSRecord.parse(query)
    opts = [rr for rr in q.ar if rr.rtype == QTYPE.OPT]
    do = bool(opts and opts[0].edns_do)
    ext = 0
    kept = []
    for rr in up.ar:
        if rr.rtype == QTYPE.OPT:
            ext = (rr.ttl >> 24) & 0xFF
        else:
            kept.append(rr)
    rcode = ext << 4 | up.header.rcode
    header = DNSHeader(
        id=q.header.id,
        qr=1,
        opcode=q.header.opcode,
        aa=0,
        rd=q.header.rd,
        ra=1,
        cd=q.header.cd,
        ad=int(bool(up.header.ad) and (do or bool(q.header.ad))),
        rcode=rcode & 0xF,
    )
    if rcode > 15 and not opts:
        header.rcode, header.ad = 2, 0  # SERVFAIL: the client cannot read an extended RCODE
        return bytes(DNSRecord(header, questions=q.questions).pack())

    def aged(records: list[RR]) -> list[RR]:
        out = []
        for rr in records:
            ttl = 30 if stale else _ttl(rr.ttl, age)
            out.append(RR(rr.rname, rr.rtype, rr.rclass, ttl, rr.rdata))
        return out

    reply = DNSRecord(header, questions=q.questions, rr=aged(up.rr), auth=aged(up.auth))
    for rr in aged(kept):
        reply.add_ar(rr)
    opt = None
    if opts:
        ede = [EDNSOption(15, ede_option(EDE_STALE_ANSWER)[4:])] if stale else []
        opt = EDNS0(udp_len=1232, ext_rcode=rcode >> 4, flags="do" if do else "", opts=ede)
        reply.add_ar(opt)
    full = bytes(reply.pack())
    if len(full) <= limit:
        return full
    cut = DNSRecord(header, questions=q.questions)
    cut.header.tc = 1
    if opt is not None:
        cut.add_ar(opt)
    return bytes(cut.pack())


def normal(data: bytes) -> tuple[object, ...]:
    """What a client sees in a message, independent of name compression."""
    msg = DNSRecord.parse(data)
    h = msg.header

    def rdata(rr: RR) -> str:
        text = str(rr.rdata)
        # Names in record data compare case-insensitively (RFC 4343): compressed against the
        # question, they take the client's spelling, as in dnsdist's packet cache.
        return text.lower() if rr.rtype in (QTYPE.CNAME, QTYPE.MX, QTYPE.SOA) else text

    def rrs(records: list[RR]) -> list[tuple[object, ...]]:
        return [
            (str(rr.rname).lower(), rr.rtype, rr.rclass, rr.ttl, rdata(rr))
            if rr.rtype != QTYPE.OPT
            else (rr.rclass, rr.ttl, rr.rdata)
            for rr in records
        ]

    return (
        (h.id, h.qr, h.opcode, h.aa, h.tc, h.rd, h.ra, h.z, h.ad, h.cd, h.rcode),
        [(q.qname.label, q.qtype, q.qclass) for q in msg.questions],
        rrs(msg.rr),
        rrs(msg.auth),
        rrs(msg.ar),
    )


@settings(max_examples=400, deadline=None)
@given(st.data(), upstream_answers(), st.integers(0, 2**31), st.booleans(), st.booleans())
def test_fast_path_equals_dnslib_path(
    data: st.DataObject, upstream: tuple[str, str, bytes], age: int, stale: bool, udp: bool
) -> None:
    qname, qtype, wire = upstream
    query = data.draw(client_queries(qname, qtype))
    answer = learn(wire)
    answer.born = 1000.0
    if stale:
        answer = answer.stale(30, ede_option(EDE_STALE_ANSWER))
    request = Request(query, transport=UDP if udp else TCP)
    assert request.ok
    fast = render(answer, request, 1000.0 + age + 0.5)
    full = render(answer, Request(query, transport=TCP), 1000.0 + age + 0.5)
    # The reference decides truncation by the fast path's own full length: name compression
    # may differ between the upstream's bytes (which the fast path keeps) and dnslib's.
    limit = request.limit if len(full) > request.limit else 65535
    assert normal(fast) == normal(reference(wire, query, age, stale, limit))
    assert len(fast) <= request.limit
    assert (DNSRecord.parse(fast).header.tc == 1) == (len(full) > request.limit)
