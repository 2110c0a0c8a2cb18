"""Regression tests for bugs the fuzzers found (docs/fuzzing.md lists them).

Each test was written from a fuzzer's reproducer before the fix, and failed then.
"""

from __future__ import annotations

import pytest

from netstack.header import icmpv6
from netstack.header.ipv6 import IPv6Extension, IPv6Header, build_extensions, build_tlv_options
from netstack.header.numbers import IPPROTO_DSTOPTS, IPPROTO_ICMPV6, IPPROTO_UDP
from netstack.header.udp import build_udp
from netstack.transport.udp import UDPEndpoint
from olm.dns.upstream import UpstreamConfigError, parse_upstream

from stackutil import HOST6, STACK6, a, make_stack

UNSPECIFIED6 = bytes(16)


def test_no_parameter_problem_about_an_icmpv6_error_behind_extension_headers() -> None:
    # fuzz_stack: an ICMPv6 error (here the unassigned error type 33) behind a Destination
    # Options header carrying an unknown option of action 3 drew a Parameter Problem, an
    # ICMPv6 error about an ICMPv6 error (RFC 4443 section 2.4(e.1)). The check looked only at
    # the fixed header's Next Header.
    stack, link, _ = make_stack()
    src, dst = a(HOST6), a(STACK6)
    message = icmpv6.ICMPv6Message(33, 220, 0x12345678, b"quoted").build(src, dst)
    options = build_tlv_options([(0xC2, b"\0\0\0\0")])  # action 3 (RFC 8200 section 4.2)
    first, chain = build_extensions([IPv6Extension(IPPROTO_DSTOPTS, options)], IPPROTO_ICMPV6)
    link.inject(IPv6Header(src=src, dst=dst, next_header=first).pack(chain + message))
    assert link.drain() == []
    assert stack.counters.get("icmpv6.error_suppressed.icmp_error") == 1


def test_icmpv6_error_about_an_echo_request_behind_extension_headers_is_still_sent() -> None:
    # The other side of the fix above: an informational message behind the same header does
    # get its Parameter Problem.
    _, link, _ = make_stack()
    src, dst = a(HOST6), a(STACK6)
    message = icmpv6.echo_request(1, 2, b"ping").build(src, dst)
    options = build_tlv_options([(0xC2, b"\0\0\0\0")])
    first, chain = build_extensions([IPv6Extension(IPPROTO_DSTOPTS, options)], IPPROTO_ICMPV6)
    link.inject(IPv6Header(src=src, dst=dst, next_header=first).pack(chain + message))
    out = link.drain()
    assert len(out) == 1
    reply = icmpv6.ICMPv6Message.parse(out[0][40:], dst, src)
    assert (reply.type, reply.code) == (icmpv6.PARAMETER_PROBLEM, icmpv6.UNRECOGNIZED_OPTION)


def test_echo_request_from_the_unspecified_address_is_not_answered() -> None:
    # fuzz_stack: an Echo Request from :: was answered with an Echo Reply to ::, a packet to
    # the unspecified address (RFC 4291 section 2.5.2: never a destination).
    stack, link, _ = make_stack()
    dst = a(STACK6)
    message = icmpv6.echo_request(7, 8, b"x").build(UNSPECIFIED6, dst)
    link.inject(IPv6Header(src=UNSPECIFIED6, dst=dst, next_header=IPPROTO_ICMPV6).pack(message))
    assert link.drain() == []
    assert stack.counters.get("icmpv6.unspecified_source") == 1
    assert stack.counters.get("icmpv6.in.echo_request") == 0


def test_udp_from_the_unspecified_address_is_dropped() -> None:
    # fuzz_stack, same root cause: a datagram from ::, delivered, made the echo endpoint answer
    # to ::. Like 0.0.0.0 for IPv4 (RFC 1122 section 3.2.1.3), it is no source to answer.
    stack, link, _ = make_stack()
    got: list[bytes] = []
    ep = UDPEndpoint(stack, lambda payload, *_: got.append(payload))
    ep.bind(UNSPECIFIED6, 7)
    dst = a(STACK6)
    datagram = build_udp(UNSPECIFIED6, dst, 1000, 7, b"hello")
    link.inject(IPv6Header(src=UNSPECIFIED6, dst=dst, next_header=IPPROTO_UDP).pack(datagram))
    assert got == []
    assert stack.counters.get("ipv6.malformed.bad_source") == 1


def test_a_query_for_the_root_name_with_local_data() -> None:
    # fuzz_dns: a query for "." (the root, one zero octet: "NS ." is an everyday query) reached
    # the local data's walk of parent names, which read past the end of the name
    # (IndexError); the deny list was the first to look.
    from olm.dns.local import Outcome
    from olm.dns.localfiles import build_local_data, parse_records

    local = build_local_data(
        parse_records(enumerate([{"name": "a.test", "type": "A", "rdata": "192.0.2.1"}], 1), "t"),
        zones=["test"],
        deny=["*.denied.test"],
    )
    assert local.lookup(b"\x00", 2).outcome is Outcome.NOT_OURS
    assert local.lookup(b"\x00", 255).outcome is Outcome.NOT_OURS


def test_a_long_upstream_name_is_refused_without_backtracking() -> None:
    # fuzz_config: OLM_UPSTREAMS of a 66-character name of digits ending in .0.0.1 hung the
    # host-name check (one regular expression over the whole name, nested quantifiers: its
    # backtracking grows exponentially with the name). Labels are now checked one by one.
    for host in ["1" + "2" * 60 + "7.0.0.1", "a" * 62 + "!", ("a" * 30 + ".") * 8 + "-"]:
        with pytest.raises(UpstreamConfigError, match="not an IP address or host name"):
            parse_upstream(f"tls://{host}")
    assert parse_upstream("tls://" + "a" * 63 + ".example").host == "a" * 63 + ".example"
