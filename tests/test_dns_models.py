"""Stateful Hypothesis models of the DNS-over-TCP server and of the upstream exchange.

1. :class:`TcpServerMachine` drives :class:`olm.dns.tcp.TcpServer` over a real loopback TCP
   connection (the kernel's asyncio streams) inside one event loop per example. The loop's
   clock is virtual (:class:`VirtualClockLoop`): the handler's delays and the server's idle
   and message timeouts only expire when a rule advances the clock, so the model knows which
   timers may have fired without depending on real time.
2. :func:`test_resolver_answers_once_and_never_with_a_spoofed_reply` runs the engine's
   forwarding (:class:`olm.dns.upstream.UpstreamGroup`, UDP transports with their socket pools
   and TCP on TC=1) against fake upstreams on 127.0.0.1 that lose, delay,
   duplicate, spoof (ID, question, QR) or truncate their replies as Hypothesis chooses, and
   compares the client's single answer with what a model of RFC 5452 acceptance predicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from dnslib import QTYPE, RCODE, RR, A, DNSQuestion, DNSRecord
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from netstack.clock import AsyncioClock
from netstack.counters import Counters
from olm.config import Settings
from olm.dns.cache import CacheSettings
from olm.dns.engine import Engine
from olm.dns.pipeline import Pipeline
from olm.dns.request import Request
from olm.dns.tcp import TcpServer

T = TypeVar("T")
LOOPBACK = "127.0.0.1"

# -- 1. DNS over TCP ---------------------------------------------------------------------------

IDLE_TIMEOUT = 4.0
MESSAGE_TIMEOUT = 2.0
MAX_INFLIGHT = 2
#: Margin for the real time that passes while the virtual clock is not being advanced.
SLACK = 0.25


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock a test can move forward at once.

    ``time()`` is the monotonic clock plus ``offset``: real I/O still flows, and every timer
    (``call_later``, ``asyncio.timeout``, ``asyncio.sleep``) due before the new time fires on
    the next iteration after :meth:`advance`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        """The loop's (virtual) time."""
        return super().time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.offset += seconds


def frame(message: bytes) -> bytes:
    """Prefix ``message`` with its two-byte length (RFC 1035 section 4.2.2)."""
    return struct.pack("!H", len(message)) + message


class FakeHandler:
    """Answers a message ``<id:2><delay:1>...`` after ``delay`` virtual seconds with b"R" + it.

    Tracks how many answers run at once (the per-connection in-flight bound) and since when
    none has been running (from then on the server is surely reading).
    """

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.quiet_since = 0.0

    def __call__(self, message: bytes, peer: object) -> Coroutine[Any, Any, bytes | None]:
        return self.answer(message)

    async def answer(self, message: bytes) -> bytes | None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(message[2])
            return b"R" + message
        finally:
            self.running -= 1
            if self.running == 0:
                self.quiet_since = asyncio.get_running_loop().time()


class TcpServerMachine(RuleBasedStateMachine):
    """A client that writes queries in arbitrary pieces, waits, half-closes or aborts."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualClockLoop()
        self.handler = FakeHandler()
        self.counters = Counters()
        self.server = TcpServer(
            self.handler,
            idle_timeout=IDLE_TIMEOUT,
            message_timeout=MESSAGE_TIMEOUT,
            max_inflight=MAX_INFLIGHT,
            counters=self.counters,
        )
        self.listener = self.run(asyncio.start_server(self.server.handle_connection, LOOPBACK, 0))
        port = self.listener.sockets[0].getsockname()[1]
        self.reader, self.writer = self.run(asyncio.open_connection(LOOPBACK, port))
        self.replies: list[bytes] = []
        self.server_closed = False
        self.collector = self.loop.create_task(self._collect())
        self.unsent = b""  # queued by `query`, not yet written
        self.written = b""  # every byte written so far
        self.complete: dict[int, bytes] = {}  # id -> message, for messages written whole
        self.next_id = 1
        self.half_closed = False
        self.aborted = False
        self.last_event = self.loop.time()  # last write, or last reply seen
        self.message_start: float | None = None  # when the incomplete message began
        self.handler.quiet_since = self.loop.time()
        self.settle()

    # -- plumbing ------------------------------------------------------------------------------

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` to completion on this example's loop."""
        return self.loop.run_until_complete(awaitable)

    async def _collect(self) -> None:
        """Read replies until the server closes the connection."""
        try:
            while True:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
                self.replies.append(await self.reader.readexactly(n))
                self.last_event = self.loop.time()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.server_closed = True

    def settle(self) -> None:
        """Let loopback I/O and due timers run until nothing changes (bounded)."""

        async def quiet() -> None:
            previous = None
            for _ in range(60):
                await asyncio.sleep(0.002)
                state = (len(self.replies), self.server_closed, self.counters.snapshot())
                if state == previous:
                    return
                previous = state

        self.run(quiet())

    @property
    def connected(self) -> bool:
        return not (self.server_closed or self.aborted)

    # -- rules ---------------------------------------------------------------------------------

    @precondition(lambda self: self.connected and not self.half_closed)
    @rule(delay=st.integers(0, 3), tag=st.binary(max_size=6), cut=st.integers(0, 16))
    def query(self, delay: int, tag: bytes, cut: int) -> None:
        """Queue a query answered after ``delay`` virtual seconds; write ``cut`` queued bytes."""
        message = struct.pack("!HB", self.next_id, delay) + tag
        self.next_id += 1
        self.unsent += frame(message)
        if cut:
            self.feed(cut)

    @precondition(lambda self: self.connected and not self.half_closed and self.unsent)
    @rule(size=st.integers(1, 40))
    def feed(self, size: int) -> None:
        """Write the next ``size`` queued bytes: a prefix, a split body, or several queries."""
        chunk, self.unsent = self.unsent[:size], self.unsent[size:]
        self.writer.write(chunk)
        self.written += chunk
        self._reparse()
        self.last_event = self.loop.time()
        self.settle()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 5.0]))
    def advance(self, seconds: float) -> None:
        """Move time on: answers finish, idle or partial-message timeouts may expire.

        Always possible, also after the connection ended (then nothing may happen).
        """
        self.loop.advance(seconds)
        self.settle()

    @precondition(lambda self: self.connected and not self.half_closed)
    @rule(now=st.integers(0, 3))
    def half_close(self, now: int) -> None:
        """Send FIN after the last query (RFC 7766 section 6.2.4): replies still come.

        Only one draw in four acts, so that examples go on long enough to matter.
        """
        if now:
            return
        self.writer.write_eof()
        self.half_closed = True
        self.settle()

    @precondition(lambda self: self.connected)
    @rule(now=st.integers(0, 3))
    def abort(self, now: int) -> None:
        """Reset the connection; nothing more can be answered (one draw in four acts)."""
        if now:
            return
        self.writer.transport.abort()
        self.aborted = True
        self.settle()

    def _reparse(self) -> None:
        """Update the set of complete messages and the start of an incomplete one."""
        data, at = self.written, 0
        while at + 2 <= len(data):
            (n,) = struct.unpack_from("!H", data, at)
            if at + 2 + n > len(data):
                break
            message = data[at + 2 : at + 2 + n]
            self.complete.setdefault(struct.unpack_from("!H", message)[0], message)
            at += 2 + n
        if at == len(data):
            self.message_start = None
        elif self.message_start is None:
            self.message_start = self.loop.time()

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def replies_answer_complete_queries_once(self) -> None:
        ids = [struct.unpack_from("!H", reply, 1)[0] for reply in self.replies]
        assert len(ids) == len(set(ids)), f"a query answered twice: {ids}"
        for qid, reply in zip(ids, self.replies, strict=True):
            assert reply == b"R" + self.complete[qid]  # never a reply to a partial message

    @invariant()
    def inflight_bound_holds(self) -> None:
        assert self.handler.peak <= MAX_INFLIGHT

    @invariant()
    def no_premature_close(self) -> None:
        """The server closes only on EOF or after a timer that may have expired."""
        if not self.server_closed or self.aborted or self.half_closed:
            return
        now = self.loop.time()
        timed_out_message = (
            self.message_start is not None and now - self.message_start >= MESSAGE_TIMEOUT - SLACK
        )
        idle = now - self.last_event >= IDLE_TIMEOUT - SLACK
        assert timed_out_message or idle, (now, self.message_start, self.last_event)

    @invariant()
    def timers_close_the_connection(self) -> None:
        """A partial-message or idle timer that surely expired has closed the connection.

        With no answer running the server is reading, and its timer started no later than
        ``quiet_since`` or the event that armed it (the first byte of the incomplete message,
        or the last message or reply).
        """
        if not self.connected or self.half_closed or self.handler.running:
            return
        now = self.loop.time()
        if self.message_start is not None:
            started = max(self.message_start, self.handler.quiet_since)
            assert now - started < MESSAGE_TIMEOUT + SLACK, "partial message never timed out"
        else:
            started = max(self.last_event, self.handler.quiet_since)
            assert now - started < IDLE_TIMEOUT + SLACK, "idle connection never closed"

    def teardown(self) -> None:
        try:
            if not self.aborted:
                # Let everything finish: answers, then the idle timer or the EOF.
                for _ in range(12):
                    if self.server_closed:
                        break
                    self.loop.advance(IDLE_TIMEOUT / 2)
                    self.settle()
                assert self.server_closed
                timeouts = self.counters.get("tcp.message_timeout")
                if timeouts == 0:
                    # Nothing was cut off: every complete query got its one reply.
                    assert len(self.replies) == len(self.complete)
                    assert self.counters.get("tcp.messages") == len(self.complete)
                assert self.counters.get("tcp.replies") == len(self.replies)
            else:
                for _ in range(12):
                    if self.server.active == 0:
                        break
                    self.loop.advance(IDLE_TIMEOUT / 2)
                    self.settle()
                assert self.counters.get("tcp.replies") <= len(self.complete)
            assert self.server.active == 0
            for name in ("message_timeout", "idle_timeout", "eof_mid_message", "replies"):
                if self.counters.get(f"tcp.{name}"):
                    event(name)
            if self.handler.peak == MAX_INFLIGHT:
                event("in-flight bound reached")
        finally:
            self.collector.cancel()
            self.writer.transport.abort()
            self.run(self.server.close())
            self.listener.close()
            self.run(self.listener.wait_closed())
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()


TcpServerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestTcpServerModel = TcpServerMachine.TestCase


# -- 2. The upstream exchange ------------------------------------------------------------------

TRY_TIMEOUT = 0.25
DEADLINE = 0.65
GOOD_IP = "192.0.2.1"
SPOOF_IP = "203.0.113.66"
#: Decisions closer than this to a timer are not predicted (the example is discarded).
MARGIN = 0.07

#: What a fake upstream sends for one UDP query. ``good``, ``servfail`` and ``truncated``
#: match the query (source, ID, QR, question), the rest must be ignored (RFC 5452 section 9.1).
UDP_KINDS = ("good", "servfail", "truncated", "spoof_id", "spoof_question", "not_response", "short")
#: How the same upstream serves the TCP retry after a truncated answer (RFC 7766 section 5).
TCP_KINDS = ("good", "spoof_then_good", "close", "silent")


@dataclass(frozen=True, slots=True)
class Emission:
    """One datagram a fake upstream sends ``delay`` seconds after the query arrived."""

    delay: float
    kind: str


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one fake upstream does for the (single) query of an example."""

    udp: tuple[Emission, ...]
    tcp: str


def _reply(query: DNSRecord, kind: str) -> bytes:
    """Build the datagram of ``kind`` for ``query``."""
    reply = query.reply()
    if kind == "short":
        return b"\x00\x01\x81"
    if kind == "servfail":
        reply.header.rcode = RCODE.SERVFAIL
        return bytes(reply.pack())
    if kind == "truncated":
        reply.header.tc = 1
        return bytes(reply.pack())
    ip = GOOD_IP if kind == "good" else SPOOF_IP
    reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(ip), ttl=60))
    if kind == "spoof_id":
        reply.header.id = (query.header.id + 1) & 0xFFFF
    elif kind == "spoof_question":
        # A new question: query.reply() shares the query's DNSQuestion object.
        reply.questions = [DNSQuestion("elsewhere.test", query.q.qtype, query.q.qclass)]
    elif kind == "not_response":
        reply.header.qr = 0
    return bytes(reply.pack())


class FakeUpstream(asyncio.DatagramProtocol):
    """A UDP and TCP upstream on one loopback port that follows a :class:`Plan`."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.transport: asyncio.DatagramTransport | None = None
        self.server: asyncio.Server | None = None
        self.port = 0
        self.handles: list[asyncio.TimerHandle] = []

    async def start(self) -> None:
        """Listen on the same free port for UDP and TCP (bounded retries)."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(LOOPBACK, 0)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                self.server = await asyncio.start_server(self._tcp, LOOPBACK, port)
            except OSError:
                transport.close()
                continue
            self.port = port
            return
        raise RuntimeError("no free port for UDP and TCP")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = DNSRecord.parse(data)
        loop = asyncio.get_running_loop()
        for emission in self.plan.udp:
            packet = _reply(query, emission.kind)
            self.handles.append(loop.call_later(emission.delay, self._send, packet, addr))

    def _send(self, packet: bytes, addr: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(packet, addr)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            query = DNSRecord.parse(await reader.readexactly(n))
            kind = self.plan.tcp
            if kind == "silent":
                await asyncio.sleep(10)
            if kind == "spoof_then_good":
                writer.write(frame(_reply(query, "spoof_id")))
            if kind in ("good", "spoof_then_good"):
                writer.write(frame(_reply(query, "good")))
                await writer.drain()
                await reader.read()  # until the resolver closes
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    async def stop(self) -> None:
        for handle in self.handles:
            handle.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1)


def _by_deadline(at: float, outcome: str) -> str | None:
    """``outcome`` if reached at ``at`` before the deadline, SERVFAIL after, None if too close."""
    if at < DEADLINE - MARGIN:
        return outcome
    if at > DEADLINE + MARGIN:
        return "servfail"
    return None


def predict(plans: list[Plan]) -> str | None:
    """Predict the client's answer: ``good``, ``servfail``, or None if too close to a timer.

    Sequential policy (RFC 5452 acceptance, docs/dns.md): each try is one UDP exchange that
    ends at the first matching reply or after TRY_TIMEOUT; a SERVFAIL answer or a failed TCP
    retry moves on to the next upstream; the whole resolution is cut at DEADLINE.
    """
    now = 0.0
    for plan in plans:
        matching = [e for e in plan.udp if e.kind in ("good", "servfail", "truncated")]
        first = min(matching, key=lambda e: e.delay, default=None)
        if first is None or first.delay >= TRY_TIMEOUT:
            now += TRY_TIMEOUT
        else:
            now += first.delay
            if first.kind == "good":
                return _by_deadline(now, "good")
            if first.kind == "truncated":
                if plan.tcp in ("good", "spoof_then_good"):
                    return _by_deadline(now, "good")
                if plan.tcp == "silent":
                    now += TRY_TIMEOUT
        verdict = _by_deadline(now, "go on")
        if verdict != "go on":
            return verdict  # "servfail" past the deadline, None too close to it
    return "servfail"  # every upstream failed: SERVFAIL, before or at the deadline


emissions = st.lists(
    st.builds(Emission, st.sampled_from([0.0, 0.03, 0.5]), st.sampled_from(UDP_KINDS)),
    max_size=4,
)
plans = st.builds(
    Plan,
    emissions.map(
        # Distinct send times keep the order of the datagrams the order of the list.
        lambda es: tuple(Emission(e.delay + 0.004 * i, e.kind) for i, e in enumerate(es))
    ),
    st.sampled_from(TCP_KINDS),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plans, min_size=1, max_size=3), st.integers(0, 0xFFFF))
def test_resolver_answers_once_and_never_with_a_spoofed_reply(
    upstream_plans: list[Plan], client_id: int
) -> None:
    expected = predict(upstream_plans)
    assume(expected is not None)
    query = DNSRecord.question("www.example.test", "A")
    query.header.id = client_id
    wire = bytes(query.pack())

    async def main() -> tuple[list[bytes], Counters]:
        fakes = [FakeUpstream(plan) for plan in upstream_plans]
        for fake in fakes:
            await fake.start()
        counters = Counters("dns")
        config = Settings(
            upstreams=[f"{LOOPBACK}:{fake.port}" for fake in fakes],
            timeout=TRY_TIMEOUT,
            deadline=DEADLINE,
            cache=CacheSettings(enabled=False),
        )
        clock = AsyncioClock()
        pipeline = Pipeline(config, clock, counters)
        engine = Engine(pipeline.build(config), clock, counters, pipeline.gate)
        answers: list[bytes] = []

        async def collect(pending: Coroutine[Any, Any, bytes | None]) -> None:
            out = await pending
            if out is not None:
                answers.append(out)

        try:
            out = engine.handle(Request(wire))
            assert out is not None and not isinstance(out, bytes)
            engine.spawn(collect(out))
            async with asyncio.timeout(DEADLINE + 2):
                while engine.waiting:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # a second answer would arrive now
        finally:
            await engine.close()
            pipeline.close()
            for fake in fakes:
                await fake.stop()
        return answers, counters

    answers, counters = asyncio.run(main())
    assert len(answers) == 1  # exactly one answer, whatever the upstreams did
    reply = DNSRecord.parse(answers[0])
    assert reply.header.id == client_id
    assert str(reply.q.qname) == "www.example.test."
    addresses = [str(rr.rdata) for rr in reply.rr]
    assert SPOOF_IP not in addresses  # never a spoofed answer
    if expected == "good":
        assert reply.header.rcode == RCODE.NOERROR
        assert addresses == [GOOD_IP]
    else:
        assert reply.header.rcode == RCODE.SERVFAIL
        assert addresses == []
        assert counters.get("forward.servfail") == 1


def test_prediction_of_a_plain_spoof_then_answer() -> None:
    """The model itself: a spoofed datagram before the real one changes nothing."""
    plan = Plan((Emission(0.0, "spoof_id"), Emission(0.03, "good")), "good")
    assert predict([plan]) == "good"
    lost = Plan((), "good")
    assert predict([lost, plan]) == "good"
    assert predict([lost, lost, lost]) == "servfail"
