"""The fastest-address handler against TCP listeners the tests start on 127.0.0.x.

All of 127.0.0.0/8 is loopback on Linux: a listener bound to 127.0.0.3 answers there only, and
a connection to 127.0.0.2 on the same port is refused at once. A listener whose accept queue
is full (backlog 0, one connection queued) drops further SYNs: connecting to it hangs.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, RRSIG, SOA, A, DNSRecord

from netstack.counters import Counters
from olm.dns.answer import Answer, learn, render
from olm.dns.handlers import Handler, Result, link
from olm.dns.handlers.fastest import FastestAddress
from olm.dns.request import Request

from fakedns import run

NAME = "www.example.com"


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.3 (none on 127.0.0.2 or .4); its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.3", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def free_port() -> int:
    """A port nobody listens on, on any 127.0.0.x."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def make_answer(
    addresses: list[str],
    *,
    qtype: str = "A",
    cname: str | None = None,
    rcode: int = RCODE.NOERROR,
    ttl: int = 60,
) -> Answer:
    reply = DNSRecord.question(NAME, qtype).reply()
    reply.header.rcode = rcode
    owner = NAME
    if cname is not None:
        reply.add_answer(RR(NAME, QTYPE.CNAME, rdata=CNAME(cname), ttl=300))
        owner = cname
    for address in addresses:
        rdata = AAAA(address) if ":" in address else A(address)
        reply.add_answer(RR(owner, getattr(QTYPE, qtype), rdata=rdata, ttl=ttl))
    if rcode == RCODE.NXDOMAIN:
        soa = SOA("ns.example.com", "admin.example.com", (1, 2, 3, 4, 30))
        reply.add_auth(RR("example.com", QTYPE.SOA, rdata=soa, ttl=30))
    return learn(bytes(reply.pack()))


class Next(Handler):
    """The rest of the chain: a fixed answer, now or from a coroutine."""

    name = "next"

    def __init__(self, counters: Counters, answer: Answer, wait: bool = True) -> None:
        super().__init__(counters)
        self.answer = answer
        self.wait = wait
        self.asked = 0

    def handle(self, request: Request) -> Result:
        self.asked += 1
        return self._later() if self.wait else self.answer

    async def _later(self) -> Answer:
        await asyncio.sleep(0)
        return self.answer


def chain(answer: Answer, *, wait: bool = True, **options: Any) -> tuple[FastestAddress, Next]:
    counters = Counters("dns")
    fastest = FastestAddress(counters, **options)
    rest = Next(counters, answer, wait)
    link([fastest, rest], counters)
    return fastest, rest


def request(qtype: str = "A") -> Request:
    query = DNSRecord.question(NAME, qtype)
    query.header.id = 0x3131
    return Request(bytes(query.pack()))


async def ask(handler: FastestAddress, qtype: str = "A") -> Answer:
    result = handler.handle(request(qtype))
    if not isinstance(result, Answer):
        assert result is not None
        result = await result
    assert isinstance(result, Answer)
    return result


def records(answer: Answer, qtype: str = "A") -> list[tuple[str, str, int]]:
    """The answer section as the client gets it: (type, data, ttl) per record."""
    parsed = DNSRecord.parse(render(answer, request(qtype), 0.0))
    return [(QTYPE[rr.rtype], str(rr.rdata), rr.ttl) for rr in parsed.rr]


def counts(handler: FastestAddress) -> dict[str, int]:
    return handler.counters.snapshot()


# -- the winner ------------------------------------------------------------------------------------


def test_listening_address_goes_first(listener: int) -> None:
    original = make_answer(["127.0.0.2", "127.0.0.3"], cname="web.example.com")
    fastest, _ = chain(original, ports=(listener,))

    async def main() -> None:
        got = await ask(fastest)
        # The CNAME keeps its place; the winner takes the first address's.
        assert records(got) == [
            ("CNAME", "web.example.com.", 300),
            ("A", "127.0.0.3", 60),
            ("A", "127.0.0.2", 60),
        ]
        assert got.ttl == original.ttl == 60 and got.positive
        assert counts(fastest) == {"probed": 1, "reordered": 1}

    run(main())


def test_mode_only_keeps_the_winner_alone(listener: int) -> None:
    answer = make_answer(["127.0.0.2", "127.0.0.4", "127.0.0.3"], cname="web.example.com")
    fastest, _ = chain(answer, ports=(listener,), mode="only")

    async def main() -> None:
        assert records(await ask(fastest)) == [
            ("CNAME", "web.example.com.", 300),
            ("A", "127.0.0.3", 60),
        ]
        assert counts(fastest) == {"probed": 1, "reordered": 1}

    run(main())


def test_winner_already_first_is_left_as_it_is(listener: int) -> None:
    answer = make_answer(["127.0.0.3", "127.0.0.2"])
    fastest, _ = chain(answer, ports=(listener,))

    async def main() -> None:
        assert await ask(fastest) is answer
        assert counts(fastest) == {"probed": 1}

    run(main())


def test_mode_only_with_rrsig_only_reorders(listener: int) -> None:
    """Dropping records would break the RRset's signature; reordering does not (RFC 4034 6.3)."""
    reply = DNSRecord.question(NAME).reply()
    for address in ("127.0.0.2", "127.0.0.3"):
        reply.add_answer(RR(NAME, rdata=A(address), ttl=60))
    sig = RRSIG(QTYPE.A, 13, 3, 60, 1_900_000_000, 1_700_000_000, 1, "example.com", b"s" * 64)
    reply.add_answer(RR(NAME, QTYPE.RRSIG, rdata=sig, ttl=60))
    fastest, _ = chain(learn(bytes(reply.pack())), ports=(listener,), mode="only")

    async def main() -> None:
        got = [(kind, data.split()[0]) for kind, data, _ in records(await ask(fastest))]
        assert got == [("A", "127.0.0.3"), ("A", "127.0.0.2"), ("RRSIG", "A")]
        assert counts(fastest) == {"probed": 1, "reordered": 1}

    run(main())


def test_cached_results_need_no_second_probe(listener: int) -> None:
    answer = make_answer(["127.0.0.2", "127.0.0.3"])
    fastest, rest = chain(answer, ports=(listener,))

    async def main() -> None:
        first = await ask(fastest)
        assert [data for _, data, _ in records(first)] == ["127.0.0.3", "127.0.0.2"]
        # The same answer again, now at once from the rest of the chain: decided from the
        # cache, it is rewritten at once too (an Answer, no coroutine).
        rest.wait = False
        second = fastest.handle(request())
        assert isinstance(second, Answer)
        assert records(second) == records(first)
        assert counts(fastest) == {"probed": 1, "reordered": 2, "cached": 1}

    run(main())


def test_cache_entries_expire(listener: int) -> None:
    answer = make_answer(["127.0.0.2", "127.0.0.3"])
    fastest, _ = chain(answer, ports=(listener,), cache_ttl=0.05)

    async def main() -> None:
        await ask(fastest)
        await asyncio.sleep(0.1)
        await ask(fastest)
        assert counts(fastest) == {"probed": 2, "reordered": 2}

    run(main())


def test_max_probes_bounds_the_connections(listener: int, free_port: int) -> None:
    # Port by port, address by address: 127.0.0.2 on the first port is the only connection
    # allowed, and it is refused.
    answer = make_answer(["127.0.0.2", "127.0.0.3"])
    fastest, _ = chain(answer, ports=(listener, free_port), max_probes=1)

    async def main() -> None:
        assert await ask(fastest) is answer
        assert counts(fastest) == {"probed": 1, "no_winner": 1}
        # 127.0.0.3 was not tried, so not cached: the next answer probes it alone, as
        # 127.0.0.2 is known to fail.
        assert [data for _, data, _ in records(await ask(fastest))] == ["127.0.0.3", "127.0.0.2"]
        assert counts(fastest) == {"probed": 2, "no_winner": 1, "reordered": 1}

    run(main())


# -- no winner: unchanged, within the budget ------------------------------------------------------


def test_no_listener_leaves_the_answer_unchanged(free_port: int) -> None:
    answer = make_answer(["127.0.0.2", "127.0.0.4"])
    fastest, _ = chain(answer, ports=(free_port,), budget=0.2)

    async def main() -> None:
        start = time.monotonic()
        assert await ask(fastest) is answer
        assert time.monotonic() - start < 0.2 + 0.1
        # Both refused: known failures, so the next answer is decided without probes.
        assert await ask(fastest) is answer
        assert counts(fastest) == {"probed": 1, "no_winner": 2, "cached": 1}

    run(main())


def test_connections_that_hang_end_at_the_budget(free_port: int) -> None:
    # A listener with a full accept queue: further SYNs are dropped, connecting hangs.
    full = socket.socket()
    full.bind(("127.0.0.5", 0))
    full.listen(0)
    port = full.getsockname()[1]
    queued = socket.create_connection(("127.0.0.5", port), timeout=1)
    answer = make_answer(["127.0.0.5", "127.0.0.6"])
    fastest, _ = chain(answer, ports=(port,), budget=0.15)

    async def main() -> None:
        start = time.monotonic()
        assert await ask(fastest) is answer
        assert time.monotonic() - start < 0.15 + 0.1
        # Every probe was cancelled (and its socket closed) before the answer came back.
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert counts(fastest) == {"probed": 1, "no_winner": 1}
        # Not connected within the budget counts as failed: the next one waits for nothing.
        assert await ask(fastest) is answer
        assert counts(fastest) == {"probed": 1, "no_winner": 2, "cached": 1}

    try:
        run(main())
    finally:
        queued.close()
        full.close()


# -- answers that pass unchanged ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "qtype"),
    [
        (make_answer(["127.0.0.3"]), "A"),
        (make_answer(["127.0.0.3", "127.0.0.3"]), "A"),  # one distinct address
        (make_answer([], rcode=RCODE.NXDOMAIN), "A"),
        (make_answer([]), "A"),  # NODATA
        (make_answer(["127.0.0.2", "127.0.0.3"], rcode=RCODE.SERVFAIL), "A"),
        (make_answer(["127.0.0.2", "127.0.0.3"]), "AAAA"),  # A records, AAAA asked
    ],
    ids=["single", "duplicate", "nxdomain", "nodata", "servfail", "other-type"],
)
def test_passes_unchanged(answer: Answer, qtype: str, listener: int) -> None:
    fastest, rest = chain(answer, wait=False, ports=(listener,))
    result = fastest.handle(request(qtype))
    assert result is answer and rest.asked == 1
    assert counts(fastest) == {}


def test_mx_answer_passes_unchanged(listener: int) -> None:
    reply = DNSRecord.question(NAME, "MX").reply()
    for pref in (10, 20):
        reply.add_answer(RR(NAME, QTYPE.MX, rdata=MX(f"mx{pref}.example.com", pref), ttl=60))
    answer = learn(bytes(reply.pack()))
    fastest, _ = chain(answer, ports=(listener,))

    async def main() -> None:
        assert await ask(fastest, "MX") is answer
        assert counts(fastest) == {}

    run(main())


def test_no_answer_passes_as_none(listener: int) -> None:
    class Drop(Handler):
        name = "drop"

        def handle(self, request: Request) -> Result:
            return None

    counters = Counters("dns")
    fastest = FastestAddress(counters, ports=(listener,))
    link([fastest, Drop(counters)], counters)
    assert fastest.handle(request()) is None


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        FastestAddress(Counters(), mode="fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FastestAddress(Counters(), ports=())
    with pytest.raises(ValueError):
        FastestAddress(Counters(), budget=0)
