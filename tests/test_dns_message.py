"""The message rules: the query view, the slow-path checks, upstream queries, reply shaping."""

from __future__ import annotations

import struct

from dnslib import EDNS0, QTYPE, RCODE, RR, TXT, A, DNSHeader, DNSQuestion, DNSRecord, EDNSOption
from hypothesis import given
from hypothesis import strategies as st

from olm.dns.answer import REFUSED, error_answer, learn, render
from olm.dns.message import Rejection, judge
from olm.dns.request import TCP, UDP, Request
from olm.dns.upstream.base import Query
from olm.dns.wire import ADVERTISED_PAYLOAD, UPSTREAM_PAYLOAD


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
    return bytes(record.pack())


def check_query(data: bytes, transport: str = UDP) -> Request | Rejection:
    """The sanitise handler's decision: the request to resolve, or the rejection."""
    request = Request(data, transport=transport)
    return request if request.ok else judge(request)


def rejected(data: bytes) -> tuple[str, DNSRecord | None]:
    request = Request(data)
    assert not request.ok
    verdict = judge(request)
    assert isinstance(verdict, Rejection)
    if verdict.answer is None:
        return verdict.reason, None
    return verdict.reason, DNSRecord.parse(render(verdict.answer, request, 0.0))


def opts(record: DNSRecord) -> list[RR]:
    return [rr for rr in record.ar if rr.rtype == QTYPE.OPT]


def test_plain_query_passes_with_its_fields() -> None:
    data = make_query()
    request = Request(data, b"\x0a\x00\x00\x01", 5353, b"\x0a\x00\x00\x02", UDP)
    assert request.ok
    assert request.id == 0x1234
    assert request.question == data[12:]
    assert request.name == "example.com."
    assert request.qtype == QTYPE.A
    assert not request.edns
    assert request.flags & 0x0100  # RD
    assert request.limit == 512
    assert request.client == b"\x0a\x00\x00\x01" and request.port == 5353
    # The key: the name in lower case, type and class, then the DO/CD byte.
    assert request.key == b"\x07example\x03com\x00" + b"\x00\x01\x00\x01" + b"\x00"
    assert Request(data, transport=TCP).limit == 65535


def test_key_is_case_insensitive_and_keeps_do_and_cd_apart() -> None:
    plain = Request(make_query("WWW.Example.COM")).key
    assert Request(make_query("www.example.com")).key == plain
    do = Request(make_query("www.example.com", edns=EDNS0(udp_len=1232, flags="do"))).key
    cd_query = DNSRecord.question("www.example.com")
    cd_query.header.cd = 1
    cd = Request(bytes(cd_query.pack())).key
    assert len({plain, do, cd}) == 3
    # A type whose bytes are letters must not be folded: HTTPS is 65 (0x0041, "A").
    assert (
        Request(make_query("a.example", "HTTPS")).key
        != Request(make_query("a.example", "TYPE97")).key
    )


def test_short_message_is_dropped() -> None:
    assert check_query(b"\x12\x34" + bytes(9)) == Rejection("unreadable", None)


def test_response_is_dropped() -> None:
    record = DNSRecord.question("a.example")
    record.header.qr = 1
    assert check_query(record.pack()) == Rejection("response", None)


def test_unusual_but_valid_query_is_rebuilt_in_ordinary_shape() -> None:
    # A compressed question (pointer to itself is illegal; here: trailing bytes) and an
    # answer record in a query: dnslib reads them, the proxy asks the plain question.
    record = DNSRecord.question("c.example")
    record.add_answer(RR("c.example", rdata=A("192.0.2.1")))
    data = bytes(record.pack()) + b"\x00\x00"
    verdict = check_query(data)
    assert isinstance(verdict, Request) and verdict.ok
    assert verdict.id == record.header.id
    assert DNSRecord.parse(verdict.wire).rr == []
    assert verdict.name == "c.example."


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
    assert isinstance(small, Request) and isinstance(large, Request)
    assert small.limit == 512
    assert large.limit == 4096
    assert large.edns and large.do and large.payload == 4096
    assert large.options == b"" and large.opt == len(large.wire) - 11
    cookie = EDNSOption(10, b"\x01" * 8)
    with_cookie = check_query(make_query(edns=EDNS0(udp_len=1232, opts=[cookie])))
    assert isinstance(with_cookie, Request) and with_cookie.ok
    assert with_cookie.options == b"\x00\x0a\x00\x08" + b"\x01" * 8


def test_malformed_edns_options_go_to_the_slow_path() -> None:
    data = bytearray(make_query(edns=EDNS0(udp_len=1232)))
    data[-2:] = b"\x00\x03"  # RDLENGTH 3, no option data
    data += b"\x00\x0a\x00"  # an option cut after two octets of its length
    request = Request(bytes(data))
    assert request.edns and not request.ok


def test_upstream_query_has_own_opt_fresh_id_and_client_do_bit() -> None:
    for flags, expected_do in (("do", 1), ("", 0)):
        request = Request(make_query(edns=EDNS0(udp_len=4096, flags=flags, opts=[])))
        up = DNSRecord.parse(Query(request).wire(0xBEEF))
        assert up.header.id == 0xBEEF
        assert up.header.rd == 1 and up.header.qr == 0 and up.header.ad == 1
        (opt,) = opts(up)
        assert opt.rclass == UPSTREAM_PAYLOAD
        assert opt.edns_do == expected_do
        assert str(up.q.qname) == "Example.COM." and up.q.qtype == QTYPE.A


def test_upstream_query_without_client_edns_still_offers_edns() -> None:
    up = DNSRecord.parse(Query(Request(make_query())).wire(1))
    (opt,) = opts(up)
    assert opt.edns_do == 0 and opt.rdata == []


def test_replies_match_by_id_qr_and_question_case_insensitively() -> None:
    query = Query(Request(make_query("Example.COM")))
    reply = DNSRecord.question("EXAMPLE.com")
    reply.header.id, reply.header.qr = 0x4444, 1
    data = bytes(reply.pack())
    assert query.matches(data, 0x4444)
    assert not query.matches(data, 0x4445)
    not_response = bytearray(data)
    not_response[2] &= 0x7F
    assert not query.matches(bytes(not_response), 0x4444)
    other = DNSRecord.question("example.org")
    other.header.id, other.header.qr = 0x4444, 1
    assert not query.matches(bytes(other.pack()), 0x4444)
    aaaa = DNSRecord.question("example.com", "AAAA")
    aaaa.header.id, aaaa.header.qr = 0x4444, 1
    assert not query.matches(bytes(aaaa.pack()), 0x4444)


def upstream_answer(*, ext_rcode: int = 0, count: int = 1, name: str = "example.com") -> bytes:
    answer = DNSRecord(DNSHeader(id=77, qr=1, ra=1, aa=1), q=DNSQuestion(name))
    for i in range(count):
        answer.add_answer(RR(name, rdata=A(f"192.0.2.{i % 250 + 1}"), ttl=60))
    answer.add_ar(EDNS0(udp_len=4096, ext_rcode=ext_rcode))
    return bytes(answer.pack())


def served(data: bytes, upstream: bytes, now: float = 0.0) -> DNSRecord:
    return DNSRecord.parse(render(learn(upstream), Request(data), now))


def test_reply_has_opt_iff_client_sent_one() -> None:
    reply = served(make_query(edns=EDNS0(udp_len=1400, flags="do")), upstream_answer())
    (opt,) = opts(reply)
    assert opt.rclass == ADVERTISED_PAYLOAD and opt.edns_do == 1
    assert reply.header.id == 0x1234
    assert str(reply.q.qname) == "Example.COM."  # the client's spelling, not upstream's
    assert len(reply.rr) == 1
    plain = served(make_query(), upstream_answer())
    assert not opts(plain)
    assert plain.header.id == 0x1234


def test_forwarded_reply_flags_ra_set_aa_cleared_z_zero() -> None:
    reply = served(make_query(), upstream_answer())
    assert reply.header.ra == 1 and reply.header.aa == 0 and reply.header.z == 0
    assert reply.header.rd == 1 and reply.header.qr == 1


def test_ad_only_for_clients_that_set_do_or_ad() -> None:
    upstream = bytearray(upstream_answer())
    upstream[3] |= 0x20  # AD
    assert served(make_query(), bytes(upstream)).header.ad == 0
    do = served(make_query(edns=EDNS0(udp_len=1232, flags="do")), bytes(upstream))
    assert do.header.ad == 1
    ad_query = DNSRecord.question("example.com")
    ad_query.header.ad = 1
    assert served(bytes(ad_query.pack()), bytes(upstream)).header.ad == 1


def test_extended_rcode_to_non_edns_client_becomes_servfail() -> None:
    reply = served(make_query(), upstream_answer(ext_rcode=1))
    assert reply.header.rcode == RCODE.SERVFAIL
    assert reply.rr == []
    edns = served(make_query(edns=EDNS0(udp_len=1232)), upstream_answer(ext_rcode=1))
    (opt,) = opts(edns)
    assert (opt.ttl >> 24) & 0xFF == 1 and edns.header.rcode == 0


def test_error_reply_copies_question_and_opt() -> None:
    request = Request(make_query(edns=EDNS0(udp_len=1400)))
    reply = DNSRecord.parse(render(error_answer(request, REFUSED), request, 0.0))
    assert reply.header.rcode == RCODE.REFUSED and reply.header.qr == 1 and reply.header.ra == 1
    assert reply.header.id == 0x1234 and len(opts(reply)) == 1
    assert str(reply.q.qname) == "Example.COM."


def test_ttls_age_by_whole_seconds_and_stop_at_zero() -> None:
    answer = learn(upstream_answer())
    answer.born = 100.0
    request = Request(make_query())
    assert DNSRecord.parse(render(answer, request, 100.9)).rr[0].ttl == 60
    assert DNSRecord.parse(render(answer, request, 131.0)).rr[0].ttl == 29
    assert DNSRecord.parse(render(answer, request, 500.0)).rr[0].ttl == 0


def big_upstream(name: str = "example.com") -> bytes:
    answer = DNSRecord(DNSHeader(id=1, qr=1, ra=1), q=DNSQuestion(name))
    for _ in range(10):
        answer.add_answer(RR(name, QTYPE.TXT, rdata=TXT("x" * 200), ttl=60))
    answer.add_auth(RR(name, rdata=A("192.0.2.1")))
    return bytes(answer.pack())


def test_truncation_keeps_question_drops_records_keeps_opt() -> None:
    cut = served(make_query(edns=EDNS0(udp_len=1232)), big_upstream())
    assert cut.header.tc == 1 and cut.header.id == 0x1234
    assert str(cut.q.qname) == "Example.COM."
    assert cut.rr == [] and cut.auth == []
    assert len(opts(cut)) == 1 and len(cut.ar) == 1


def test_truncation_without_edns_has_no_opt_and_512_limit() -> None:
    data = render(learn(big_upstream()), Request(make_query()), 0.0)
    assert len(data) <= 512
    cut = DNSRecord.parse(data)
    assert cut.header.tc == 1 and cut.ar == []
    full = render(learn(big_upstream()), Request(make_query(), transport=TCP), 0.0)
    assert len(full) > 2000
    assert len(DNSRecord.parse(full).rr) == 10


def test_reply_between_512_and_edns_size_is_not_truncated_for_edns_client() -> None:
    answer = DNSRecord(DNSHeader(id=1, qr=1), q=DNSQuestion("example.com"))
    for _ in range(3):
        answer.add_answer(RR("example.com", QTYPE.TXT, rdata=TXT("y" * 200)))
    upstream = bytes(answer.pack())
    data = render(learn(upstream), Request(make_query(edns=EDNS0(udp_len=4096))), 0.0)
    assert 512 < len(data) <= 4096 and DNSRecord.parse(data).header.tc == 0
    plain = render(learn(upstream), Request(make_query()), 0.0)
    assert DNSRecord.parse(plain).header.tc == 1


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    request = Request(data)
    verdict = request if request.ok else judge(request)
    if isinstance(verdict, Rejection) and verdict.answer is not None:
        reply = DNSRecord.parse(render(verdict.answer, request, 0.0))
        assert reply.header.qr == 1
        assert reply.header.id == struct.unpack_from("!H", data)[0]


@given(st.binary(min_size=12, max_size=200), st.integers(0, 0xFFFF))
def test_arbitrary_header_and_body_keep_the_id(body: bytes, qid: int) -> None:
    data = struct.pack("!H", qid) + body[2:]
    request = Request(data)
    verdict = request if request.ok else judge(request)
    if isinstance(verdict, Request):
        assert verdict.id == qid and verdict.ok
    elif verdict.answer is not None:
        assert DNSRecord.parse(render(verdict.answer, request, 0.0)).header.id == qid
    else:
        assert verdict.reason in ("response", "unreadable")


@given(st.binary(max_size=300))
def test_learn_raises_only_wire_errors(data: bytes) -> None:
    from olm.dns.wire import WireError

    try:
        answer = learn(data)
    except WireError:
        return
    assert answer.wire[:2] == b"\x00\x00"
