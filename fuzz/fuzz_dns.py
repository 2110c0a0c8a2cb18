"""Fuzz the DNS proxy's handling of a client message, from raw bytes to the reply it would send.

The first byte chooses the transport (UDP or TCP) and what the fake upstream does (answer
small, answer large enough to need truncation, answer with an error RCODE, or fail); the rest
is the client's message. No I/O: the fake resolver answers at once, so the proxy's coroutine
finishes in a single step.

Oracle (RFC 8906, RFC 1035, RFC 6891): no exception escapes; ``internal_error`` never moves;
a message is dropped only if it has no readable header or is a response (QR=1); every reply
parses, has QR=1 and the query's ID, fits the client's limit over UDP (512, or the EDNS size),
and carries an RCODE from the set the proxy may send.
"""

from __future__ import annotations

from dnslib import AAAA, QTYPE, RCODE, RR, TXT, A, DNSRecord

from fuzz.common import fuzz_main
from netstack.counters import Counters
from olm.dns.message import Query
from olm.dns.proxy import DnsProxy
from olm.dns.upstream import Resolver, Upstream, UpstreamFailure

_ALLOWED_RCODES = {
    RCODE.NOERROR,
    RCODE.FORMERR,
    RCODE.SERVFAIL,
    RCODE.NXDOMAIN,
    RCODE.NOTIMP,
    RCODE.REFUSED,
    16,  # BADVERS (extended RCODE, RFC 6891 section 6.1.3)
}


class FakeResolver(Resolver):
    """An upstream that answers immediately, as the input's first byte says."""

    mode = 0

    async def resolve(self, query: Query) -> DNSRecord:
        """Answer without I/O: small, large, an error RCODE, or a failure."""
        mode = self.mode % 4
        if mode == 3:
            raise UpstreamFailure("timeout", "fake upstream gave up")
        reply = DNSRecord(q=query.question)
        reply.header.qr = 1
        reply.header.id = 0x4242  # the proxy must put the client's ID back
        if mode == 2:
            reply.header.rcode = RCODE.NXDOMAIN
        elif mode == 1:
            for i in range(40):  # about 2.5 kB: truncated over UDP
                reply.add_answer(RR(query.question.qname, QTYPE.TXT, rdata=TXT(f"{i:04} " * 12)))
        else:
            reply.add_answer(RR(query.question.qname, QTYPE.A, rdata=A("192.0.2.1")))
            reply.add_answer(RR(query.question.qname, QTYPE.AAAA, rdata=AAAA("2001:db8::1")))
        return reply


_RESOLVER = FakeResolver([Upstream("127.0.0.1", 53)], counters=Counters())


def _udp_limit(message: bytes) -> int:
    """What the client may receive over UDP: 512, or its EDNS size if it sent one OPT."""
    try:
        record = DNSRecord.parse(message)
    except Exception:
        return 512
    opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    if len(opts) != 1:
        return 512
    return max(512, min(int(opts[0].rclass), 65535))


def test_one_input(data: bytes) -> None:
    """Hand one client message to the proxy and check the reply it produces."""
    if not data:
        return
    control, message = data[0], data[1:]
    tcp = bool(control & 0x80)
    _RESOLVER.mode = control
    counters = Counters("dns")
    proxy = DnsProxy(_RESOLVER, counters=counters)
    coro = proxy.handle(message, tcp=tcp)
    try:
        coro.send(None)
    except StopIteration as done:
        reply = done.value
    else:
        coro.close()
        raise AssertionError("the proxy waited on something: the fake resolver never does")
    assert counters.get("internal_error") == 0, "the proxy hit an unexpected exception"
    assert proxy.inflight == 0
    if reply is None:
        assert len(message) < 12 or message[2] & 0x80, "a readable query got no answer"
        return
    assert len(message) >= 12
    assert reply[:2] == message[:2], "the reply must carry the query's ID"
    assert reply[2] & 0x80, "the reply must have QR=1"
    if not tcp:
        assert len(reply) <= _udp_limit(message), "a UDP reply exceeded the client's limit"
    parsed = DNSRecord.parse(reply)
    rcode = parsed.header.rcode
    opts = [rr for rr in parsed.ar if rr.rtype == QTYPE.OPT]
    if opts:
        rcode |= (opts[0].ttl >> 24) << 4
    assert rcode in _ALLOWED_RCODES, f"unexpected RCODE {rcode}"


if __name__ == "__main__":
    fuzz_main(test_one_input, ("olm",))
