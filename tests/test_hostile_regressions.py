"""Regressions found by tests/test_kernel_malformed.py, reproduced without privileges.

Each test names the hostile case that found the bug and runs it through the smallest piece of
code that had it.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from dnslib import RCODE, DNSRecord

from netstack.clock import AsyncioClock
from netstack.counters import Counters
from olm.config import Settings
from olm.dns.answer import render
from olm.dns.engine import Engine
from olm.dns.message import Rejection, judge
from olm.dns.pipeline import Pipeline
from olm.dns.request import TCP, UDP, Request

_HEADER = struct.Struct("!HHHHHH")


def _query(qid: int, labels: list[bytes]) -> bytes:
    """A query whose name is ``labels`` written raw, each after its length octet."""
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return _HEADER.pack(qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


# hostile_dns.py "label_64": length octet 0x40 is label type 0b01, not a length of 64
# (RFC 1035 section 3.1 allows 63; RFC 6891 section 5 reserves the type).
LABEL_64 = _query(0x1111, [b"a" * 64])
# hostile_dns.py "name_over_255": five 63-octet labels make a 321-octet name (RFC 1035 2.3.4).
NAME_321 = _query(0x2222, [b"a" * 63] * 5)
# The longest legal name: 255 octets on the wire (3 * 64 + 62 + 1).
NAME_255 = _query(0x3333, [b"a" * 63] * 3 + [b"b" * 61])


@pytest.mark.parametrize("message", [LABEL_64, NAME_321], ids=["label_64", "name_over_255"])
def test_names_dnslib_cannot_encode_are_formerr(message: bytes) -> None:
    """dnslib parses these names but refuses to pack them; they must be FORMERR, not silence."""
    request = Request(message)
    assert not request.ok
    verdict = judge(request)
    assert isinstance(verdict, Rejection)
    assert verdict.reason == "formerr"
    assert verdict.answer is not None
    reply = DNSRecord.parse(render(verdict.answer, request, 0.0))
    assert reply.header.rcode == RCODE.FORMERR
    assert reply.header.id == _HEADER.unpack_from(message)[0]
    assert reply.questions == []  # the question cannot be echoed: it cannot be encoded


def test_longest_legal_name_is_still_a_query() -> None:
    request = Request(NAME_255)
    assert request.ok
    assert request.qend == len(NAME_255) and request.name.count(".") == 4


@pytest.mark.parametrize("message", [LABEL_64, NAME_321], ids=["label_64", "name_over_255"])
def test_proxy_answers_unencodable_names_without_asking_upstream(message: bytes) -> None:
    """Before the fix the upstream query failed to pack: no reply, internal_error counted."""

    async def main() -> tuple[bytes | None, Counters]:
        counters = Counters("dns")
        # Port 9 on loopback: never contacted, as the query must be rejected before.
        config = Settings(upstreams=["127.0.0.1:9"], timeout=0.2, deadline=0.5)
        clock = AsyncioClock()
        pipeline = Pipeline(config, clock, counters)
        engine = Engine(pipeline.build(config), clock, counters, pipeline.gate)
        udp = engine.handle(Request(message, transport=UDP))
        tcp = engine.handle(Request(message, transport=TCP))
        assert isinstance(udp, bytes) and udp == tcp  # answered at once, no waiting
        return udp, counters

    reply, counters = asyncio.run(main())
    assert reply is not None
    assert DNSRecord.parse(reply).header.rcode == RCODE.FORMERR
    assert counters.get("sanitise.formerr") == 2
    assert counters.get("internal_error") == 0
    assert counters.get("upstream.queries") == 0
