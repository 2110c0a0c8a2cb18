"""The proxy's pure message rules: checks, EDNS, upstream queries, reply shaping, truncation."""

from __future__ import annotations

import struct

from dnslib import EDNS0, QTYPE, RCODE, RR, TXT, A, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import given
from hypothesis import strategies as st

from olm.dns.message import (
    ADVERTISED_PAYLOAD,
    UPSTREAM_PAYLOAD,
    Query,
    Rejection,
    check_query,
    client_reply,
    error_reply,
    fit_reply,
    upstream_query,
)


def make_query(
    name: str = "Example.COM",
    qtype: str = "A",
    *,
    qid: int = 0x1234,
    edns: EDNS0 | None = None,
    extra_ar: list[RR] | None = None,
) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.header.id = qid
    if edns is not None:
        record.add_ar(edns)
    for rr in extra_ar or []:
        record.add_ar(rr)
    packed: bytes = record.pack()
    return packed


def rejected(data: bytes) -> tuple[str, DNSRecord | None]:
    verdict = check_query(data)
    assert isinstance(verdict, Rejection)
    return verdict.reason, DNSRecord.parse(verdict.reply) if verdict.reply else None


def opts(record: DNSRecord) -> list[RR]:
    return [rr for rr in record.ar if rr.rtype == QTYPE.OPT]


def test_plain_query_passes_with_its_fields() -> None:
    verdict = check_query(make_query())
    assert isinstance(verdict, Query)
    assert verdict.id == 0x1234
    assert str(verdict.question.qname) == "Example.COM."
    assert verdict.edns is None
    assert verdict.rd
    assert verdict.udp_limit == 512


def test_short_message_is_dropped() -> None:
    assert check_query(b"\x12\x34" + bytes(9)) == Rejection("unreadable", None)


def test_response_is_dropped() -> None:
    record = DNSRecord.question("a.example")
    record.header.qr = 1
    assert check_query(record.pack()) == Rejection("response", None)


def test_unknown_opcode_is_notimp_with_question() -> None:
    record = DNSRecord.question("a.example")
    record.header.opcode = 5  # UPDATE
    record.header.id = 77
    reason, reply = rejected(record.pack())
    assert reason == "notimp"
    assert reply is not None
    assert reply.header.id == 77 and reply.header.qr == 1 and reply.header.rcode == RCODE.NOTIMP
    assert reply.header.opcode == 5
    assert str(reply.q.qname) == "a.example."


def test_garbage_after_header_is_formerr_with_question_copied() -> None:
    # A valid header and question, then an answer count pointing past the end.
    data = bytearray(make_query("b.example", qid=9))
    data[7] = 3  # ANCOUNT = 3, none present
    reason, reply = rejected(bytes(data))
    assert reason == "formerr"
    assert reply is not None
    assert reply.header.id == 9 and reply.header.qr == 1 and reply.header.rcode == RCODE.FORMERR
    assert str(reply.q.qname) == "b.example."
    assert not opts(reply)


def test_unparsable_question_is_formerr_without_question() -> None:
    data = struct.pack("!HHHHHH", 5, 0x0100, 1, 0, 0, 0) + b"\x05ab"  # label cut short
    reason, reply = rejected(data)
    assert reason == "formerr"
    assert reply is not None
    assert reply.header.id == 5 and reply.header.rcode == RCODE.FORMERR
    assert reply.questions == []


def test_qdcount_zero_and_two_are_formerr() -> None:
    empty = DNSRecord(DNSHeader(id=3))
    reason, reply = rejected(empty.pack())
    assert reason == "formerr" and reply is not None and reply.header.rcode == RCODE.FORMERR
    two = DNSRecord.question("a.example")
    two.add_question(DNSQuestion("b.example"))
    reason, reply = rejected(two.pack())
    assert reason == "formerr" and reply is not None and reply.questions == []


def test_two_opts_are_formerr_with_opt() -> None:
    data = make_query(edns=EDNS0(udp_len=1232), extra_ar=[EDNS0(udp_len=4096)])
    reason, reply = rejected(data)
    assert reason == "formerr"
    assert reply is not None and reply.header.rcode == RCODE.FORMERR
    assert len(opts(reply)) == 1


def test_opt_with_non_root_owner_is_formerr() -> None:
    reason, reply = rejected(make_query(edns=EDNS0("bad.example", udp_len=1232)))
    assert reason == "formerr"
    assert reply is not None and reply.header.rcode == RCODE.FORMERR


def test_edns_version_1_is_badvers() -> None:
    reason, reply = rejected(make_query(edns=EDNS0(udp_len=1232, version=1)))
    assert reason == "badvers"
    assert reply is not None
    (opt,) = opts(reply)
    # RFC 6891 6.1.3: BADVERS is 16: header RCODE 0, upper eight bits 1 in the OPT.
    assert reply.header.rcode == 0
    assert (opt.ttl >> 24) & 0xFF == 1
    assert (opt.ttl >> 16) & 0xFF == 0
    assert str(reply.q.qname) == "Example.COM."


def test_edns_query_limits() -> None:
    small = check_query(make_query(edns=EDNS0(udp_len=100)))
    large = check_query(make_query(edns=EDNS0(udp_len=4096, flags="do")))
    assert isinstance(small, Query) and isinstance(large, Query)
    assert small.udp_limit == 512
    assert large.udp_limit == 4096
    assert large.edns is not None and large.edns.do


def test_upstream_query_has_own_opt_fresh_id_and_client_do_bit() -> None:
    for flags, expected_do in (("do", 1), ("", 0)):
        query = check_query(make_query(edns=EDNS0(udp_len=4096, flags=flags)))
        assert isinstance(query, Query)
        up = DNSRecord.parse(upstream_query(query, 0xBEEF))
        assert up.header.id == 0xBEEF
        assert up.header.rd == 1 and up.header.qr == 0
        (opt,) = opts(up)
        assert opt.rclass == UPSTREAM_PAYLOAD
        assert opt.edns_do == expected_do
        assert up.q.qname == query.question.qname and up.q.qtype == QTYPE.A


def test_upstream_query_without_client_edns_still_offers_edns() -> None:
    query = check_query(make_query())
    assert isinstance(query, Query)
    up = DNSRecord.parse(upstream_query(query, 1))
    (opt,) = opts(up)
    assert opt.edns_do == 0


def upstream_answer(query: Query, qid: int, *, ext_rcode: int = 0, count: int = 1) -> DNSRecord:
    answer = DNSRecord(DNSHeader(id=qid, qr=1, ra=1), q=DNSQuestion("example.com"))
    for i in range(count):
        answer.add_answer(RR("example.com", rdata=A(f"192.0.2.{i % 250 + 1}"), ttl=60))
    answer.add_ar(EDNS0(udp_len=4096, ext_rcode=ext_rcode))
    return DNSRecord.parse(answer.pack())


def test_reply_has_opt_iff_client_sent_one() -> None:
    with_edns = check_query(make_query(edns=EDNS0(udp_len=1400, flags="do")))
    without = check_query(make_query())
    assert isinstance(with_edns, Query) and isinstance(without, Query)
    reply = DNSRecord.parse(client_reply(with_edns, upstream_answer(with_edns, 999)).pack())
    (opt,) = opts(reply)
    assert opt.rclass == ADVERTISED_PAYLOAD and opt.edns_do == 1
    assert reply.header.id == 0x1234
    assert str(reply.q.qname) == "Example.COM."  # the client's spelling, not upstream's
    assert len(reply.rr) == 1
    plain = DNSRecord.parse(client_reply(without, upstream_answer(without, 999)).pack())
    assert not opts(plain)
    assert plain.header.id == 0x1234


def test_extended_rcode_to_non_edns_client_becomes_servfail() -> None:
    without = check_query(make_query())
    assert isinstance(without, Query)
    reply = client_reply(without, upstream_answer(without, 1, ext_rcode=1))
    assert reply.header.rcode == RCODE.SERVFAIL
    assert reply.rr == []


def test_error_reply_copies_question_and_opt() -> None:
    query = check_query(make_query(edns=EDNS0(udp_len=1400)))
    assert isinstance(query, Query)
    reply = DNSRecord.parse(error_reply(query, RCODE.REFUSED).pack())
    assert reply.header.rcode == RCODE.REFUSED and reply.header.qr == 1
    assert reply.header.id == 0x1234 and len(opts(reply)) == 1
    assert str(reply.q.qname) == "Example.COM."


def big_reply(query: Query) -> DNSRecord:
    answer = DNSRecord(DNSHeader(id=1, qr=1, ra=1), q=query.question)
    for _ in range(10):
        answer.add_answer(RR("example.com", QTYPE.TXT, rdata=TXT("x" * 200), ttl=60))
    answer.add_auth(RR("example.com", rdata=A("192.0.2.1")))
    return client_reply(query, DNSRecord.parse(answer.pack()))


def test_truncation_keeps_question_drops_records_keeps_opt() -> None:
    query = check_query(make_query(edns=EDNS0(udp_len=1232)))
    assert isinstance(query, Query)
    data, truncated = fit_reply(big_reply(query), query.udp_limit)
    assert truncated and len(data) <= 1232
    cut = DNSRecord.parse(data)
    assert cut.header.tc == 1 and cut.header.id == 0x1234
    assert str(cut.q.qname) == "Example.COM."
    assert cut.rr == [] and cut.auth == []
    assert len(opts(cut)) == 1 and len(cut.ar) == 1


def test_truncation_without_edns_has_no_opt_and_512_limit() -> None:
    query = check_query(make_query())
    assert isinstance(query, Query)
    reply = big_reply(query)
    data, truncated = fit_reply(reply, query.udp_limit)
    assert truncated and len(data) <= 512
    assert DNSRecord.parse(data).ar == []
    full, cut = fit_reply(reply, 65535)
    assert not cut and len(full) > 2000
    assert len(DNSRecord.parse(full).rr) == 10


def test_reply_between_512_and_edns_size_is_not_truncated_for_edns_client() -> None:
    query = check_query(make_query(edns=EDNS0(udp_len=4096)))
    assert isinstance(query, Query)
    answer = DNSRecord(DNSHeader(id=1, qr=1), q=query.question)
    for _ in range(3):
        answer.add_answer(RR("example.com", QTYPE.TXT, rdata=TXT("y" * 200)))
    reply = client_reply(query, DNSRecord.parse(answer.pack()))
    data, truncated = fit_reply(reply, query.udp_limit)
    assert not truncated and 512 < len(data) <= 4096
    _, truncated_plain = fit_reply(reply, 512)
    assert truncated_plain


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    verdict = check_query(data)
    if isinstance(verdict, Rejection) and verdict.reply is not None:
        assert type(verdict.reply) is bytes
        reply = DNSRecord.parse(verdict.reply)
        assert reply.header.qr == 1
        assert reply.header.id == struct.unpack_from("!H", data)[0]


@given(st.binary(min_size=12, max_size=200), st.integers(0, 0xFFFF))
def test_arbitrary_header_and_body_keep_the_id(body: bytes, qid: int) -> None:
    data = struct.pack("!H", qid) + body[2:]
    verdict = check_query(data)
    if isinstance(verdict, Query):
        assert verdict.id == qid
    elif verdict.reply is not None:
        assert DNSRecord.parse(verdict.reply).header.id == qid
    else:
        assert verdict.reason in ("response", "unreadable")
