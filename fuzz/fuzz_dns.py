"""Fuzz the DNS engine's handling of a client message, from raw bytes to the reply it sends.

The first byte chooses the transport (UDP or TCP) and what the fake upstream does (answer
small, answer large enough to need truncation, answer NXDOMAIN with a SOA, or fail); the rest
is the client's message. The chain is the real one (sanitise, admission, local records with a
wildcard, a zone, a CNAME out and a CNAME loop, a blocklist, fake-IP, the cache) with the
forward handler replaced by a fake that answers without I/O, under a ManualClock that moves a
second per input, so cached answers age, expire and are served again.

Oracle (RFC 8906, RFC 1035, RFC 6891): no exception escapes; ``internal_error`` never moves;
a message is dropped only if it has no readable header or is a response (QR=1); every reply
parses, has QR=1, RA=1 and the query's ID, fits the client's limit over UDP (512, or the EDNS
size), and carries an RCODE from the set the proxy may send; the cache stays within its
bounds and nothing is left waiting.
"""

from __future__ import annotations

import asyncio
import struct

from dnslib import RCODE

from fuzz.common import fuzz_main
from netstack.clock import ManualClock
from netstack.counters import Counters
from olm.dns.answer import SERVFAIL, Answer, error_answer, learn
from olm.dns.blocklist import Blocklists, DomainSet, wire_name
from olm.dns.cache import Cache, CacheSettings
from olm.dns.engine import Engine
from olm.dns.fakeip import FakeIpPool
from olm.dns.handlers import Handler, Result, link
from olm.dns.handlers.admission import Admission, Gate
from olm.dns.handlers.block import Block
from olm.dns.handlers.cache import CacheHandler
from olm.dns.handlers.fake_ip import FakeIp
from olm.dns.handlers.records import Records
from olm.dns.handlers.sanitise import Sanitise
from olm.dns.localfiles import build_local_data, parse_records
from olm.dns.request import TCP, UDP, Request
from olm.dns.wire import WireError, records, skip_name

_ALLOWED_RCODES = {
    RCODE.NOERROR,
    RCODE.FORMERR,
    RCODE.SERVFAIL,
    RCODE.NXDOMAIN,
    RCODE.NOTIMP,
    RCODE.REFUSED,
    16,  # BADVERS (extended RCODE, RFC 6891 section 6.1.3)
}


class FakeForward(Handler):
    """An upstream that answers at once, as the input's first byte says."""

    name = "forward"
    mode = 0

    def handle(self, request: Request) -> Result:
        """Answer without I/O: small, large, NXDOMAIN, or a failure."""
        return self._answer(request)

    async def _answer(self, request: Request) -> Answer:
        mode = self.mode % 4
        if mode == 3:
            return error_answer(request, SERVFAIL)
        # Built as wire bytes: the question may hold octets dnslib cannot read (legal, RFC 2181
        # section 11), and the engine must carry them through unchanged.
        records: list[bytes] = []
        rcode, authority = 0, 0
        if mode == 2:
            rcode, authority = 3, 1  # NXDOMAIN with a SOA (RFC 2308)
            soa = b"\x02ns\x00\x05admin\x00" + struct.pack("!IIIII", 1, 60, 60, 60, 30)
            records.append(b"\x00" + struct.pack("!HHIH", 6, 1, 60, len(soa)) + soa)
        elif mode == 1:
            for i in range(40):  # about 2.5 kB: truncated over UDP
                text = (f"{i:04} " * 12).encode()
                rdata = bytes([len(text)]) + text
                records.append(_POINTER + struct.pack("!HHIH", 16, 1, 5, len(rdata)) + rdata)
        else:
            records.append(_POINTER + struct.pack("!HHIH", 1, 1, 3, 4) + bytes([192, 0, 2, 1]))
            records.append(_POINTER + struct.pack("!HHIH", 28, 1, 7, 16) + bytes(15) + b"\x01")
        answers = len(records) - authority
        # The engine must put the client's ID back and drop AA.
        header = struct.pack("!HHHHHH", 0x4242, 0x8580 | rcode, 1, answers, authority, 0)
        return learn(header + request.question + b"".join(records))


_POINTER = b"\xc0\x0c"  # the question's name (RFC 1035 section 4.1.4)
_CLOCK = ManualClock()
_COUNTERS = Counters("dns")
_GATE = Gate(64)
_CACHE = Cache(CacheSettings(size=50, max_bytes=40_000, serve_stale=True), _COUNTERS.child("cache"))
_FORWARD = FakeForward(_COUNTERS)
_LOCAL = build_local_data(
    parse_records(
        enumerate(
            [
                {"name": "*.wild.test", "type": "A", "rdata": "192.0.2.1"},
                {"name": "a.wild.test", "type": "TXT", "rdata": "x"},
                {"name": "out.wild.test", "type": "CNAME", "rdata": "elsewhere.example"},
                {"name": "loop.test", "type": "CNAME", "rdata": "loop.test"},
                {"name": "mx.test", "type": "MX", "rdata": {"preference": 1, "exchange": "a.test"}},
            ],
            1,
        ),
        "fuzz",
    ),
    zones=["wild.test"],
    deny=["*.denied.test"],
)
_BLOCK = Blocklists([("fuzz", DomainSet.build([wire_name("ads.test")]))])
_ENGINE = Engine(
    link(
        [
            Sanitise(_COUNTERS),
            Admission(_COUNTERS, _GATE),
            Records(_COUNTERS, _LOCAL, _CLOCK),
            Block(_COUNTERS, _BLOCK, ["nxdomain"], 60),
            FakeIp(_COUNTERS, FakeIpPool("198.18.0.0/28"), ["fake.test"]),
            CacheHandler(_COUNTERS, _CACHE, _CLOCK, _GATE),
            _FORWARD,
        ],
        _COUNTERS,
    ),
    _CLOCK,
    _COUNTERS,
    _GATE,
)
_LOOP = asyncio.new_event_loop()


async def _ask(message: bytes, transport: str) -> bytes | None:
    out = _ENGINE.handle(
        Request(message, b"\x0a\x00\x00\x01", 5353, b"\x0a\x1e\x1e\x1e", transport)
    )
    if out is None or isinstance(out, bytes):
        return out
    return await out


def _udp_limit(message: bytes) -> int:
    """What the client may receive over UDP: 512, or its EDNS size if it sent one OPT."""
    try:
        qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHH", message, 4)
        off = 12
        for _ in range(qdcount):
            off = skip_name(message, off) + 4
        opts = [
            r
            for r in records(message, off, (ancount, nscount, arcount))
            if r.rtype == 41 and r.section == 2
        ]
    except (WireError, struct.error):
        return 512
    if len(opts) != 1:
        return 512
    size = struct.unpack_from("!H", message, opts[0].start + 3)[0]
    return max(512, min(size, 65535))


def test_one_input(data: bytes) -> None:
    """Hand one client message to the engine and check the reply it produces."""
    if not data:
        return
    control, message = data[0], data[1:]
    tcp = bool(control & 0x80)
    _FORWARD.mode = control
    _CLOCK.advance(1.0)
    reply = _LOOP.run_until_complete(_ask(message, TCP if tcp else UDP))
    _LOOP.run_until_complete(asyncio.sleep(0))  # let background refreshes land
    assert _COUNTERS.get("internal_error") == 0, "the engine hit an unexpected exception"
    assert len(_CACHE) <= 50 and _CACHE.bytes <= 40_000, "the cache outgrew its bounds"
    if reply is None:
        assert len(message) < 12 or message[2] & 0x80, "a readable query got no answer"
        return
    assert len(message) >= 12
    assert reply[:2] == message[:2], "the reply must carry the query's ID"
    assert reply[2] & 0x80, "the reply must have QR=1"
    assert reply[3] & 0x80, "the reply must have RA=1"
    if not tcp:
        assert len(reply) <= _udp_limit(message), "a UDP reply exceeded the client's limit"
    # Checked on the wire: the reply may echo a name dnslib cannot read.
    _, flags, _, ancount, nscount, arcount = struct.unpack_from("!HHHHHH", reply)
    rcode = flags & 0xF
    end = 0
    start = skip_name(reply, 12) + 4 if reply[4:6] == b"\x00\x01" else 12
    for record in records(reply, start, (ancount, nscount, arcount)):
        end = record.end
        if record.rtype == 41:
            rcode |= (record.ttl >> 24) << 4
    assert end == 0 or end == len(reply), "bytes after the last record"
    assert rcode in _ALLOWED_RCODES, f"unexpected RCODE {rcode}"


if __name__ == "__main__":
    fuzz_main(test_one_input, ("olm",))
