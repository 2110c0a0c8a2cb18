"""Upstream resolvers: addresses, the choice between them, and one query's exchange with one.

Queries leave through the host's own sockets (asyncio's datagram endpoints and streams), never
through netstack. Each exchange follows RFC 5452: a fresh random 16-bit ID from :mod:`secrets`
and a fresh socket bound to an ephemeral port, and a reply counts only if its source address
and port, its ID and its question all match; anything else is ignored and counted while the
real answer is awaited. A truncated UDP answer (TC=1) is asked again over TCP from the same
upstream (RFC 7766 section 5, two-byte length prefix per RFC 1035 section 4.2.2).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import secrets
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dnslib import RCODE, DNSBuffer, DNSQuestion, DNSRecord

from netstack.counters import Counters
from olm.dns.message import HEADER_LEN, MessageError, Query, parse_message, upstream_query

__all__ = [
    "Policy",
    "Resolver",
    "Upstream",
    "UpstreamConfigError",
    "UpstreamFailure",
    "parse_upstream",
    "resolv_conf_upstreams",
]

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("!HHH")  # ID, flags, QDCOUNT
_LENGTH: Final = struct.Struct("!H")
_QR: Final = 0x8000
_TC: Final = 0x0200

#: Answers that mean "this upstream could not help": try the next one (RFC 1035 section 4.1.1).
_FAILURE_RCODES: Final = frozenset({RCODE.FORMERR, RCODE.SERVFAIL, RCODE.NOTIMP, RCODE.REFUSED})

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UpstreamConfigError(ValueError):
    """An upstream address is malformed, or no usable upstream could be found."""


class UpstreamFailure(Exception):
    """No good answer came from an upstream (or from any); ``reason`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Policy(enum.StrEnum):
    """How the upstreams of one query are chosen."""

    SEQUENTIAL = "sequential"  # in configured order, next one on failure
    RACE = "race"  # all at once, first good answer wins
    ROUND_ROBIN = "round-robin"  # start one further along each query, then fail over in order


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream resolver: an IP address literal and a port."""

    host: str
    port: int = 53

    @property
    def address(self) -> _IPAddress:
        """The host as an :mod:`ipaddress` object."""
        return ipaddress.ip_address(self.host)

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_upstream(text: str) -> Upstream:
    """Parse ``host[:port]`` (IPv6 as ``[addr]:port`` or a bare address) into an Upstream.

    The host must be an IP address: resolving a name would need a resolver, which may be us.
    """
    text = text.strip()
    port = 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise UpstreamConfigError(f"{text!r}: missing ']' after an IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise UpstreamConfigError(f"{text!r}: expected ':port' after ']'")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(text, port_text)
    else:
        host = text  # IPv4 without port, or a bare IPv6 address
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UpstreamConfigError(
            f"{text!r}: not an IP address (write host[:port], IPv6 as [addr]:port)"
        ) from None
    return Upstream(str(address), port)


def _port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UpstreamConfigError(f"{text!r}: port must be a number from 1 to 65535")
    return int(port_text)


def resolv_conf_upstreams(
    path: str | Path = "/etc/resolv.conf", exclude: Iterable[str] = ()
) -> list[Upstream]:
    """Return the nameservers of a resolv.conf(5) file, skipping the addresses in ``exclude``.

    ``exclude`` holds the proxy's own service addresses, which would make the proxy its own
    upstream. Raises :class:`UpstreamConfigError` when the file yields no usable nameserver.
    """
    excluded = {ipaddress.ip_address(a) for a in exclude}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UpstreamConfigError(
            f"no upstreams configured and {path} cannot be read: {exc.strerror}"
        ) from None
    found: list[Upstream] = []
    skipped: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue  # comments (# or ;), other options, blank lines
        try:
            upstream = Upstream(str(ipaddress.ip_address(fields[1])))
        except ValueError:
            skipped.append(fields[1])
            continue
        if upstream.address in excluded:
            skipped.append(fields[1])
            continue
        if upstream not in found:
            found.append(upstream)
    if not found:
        why = f" (skipped: {', '.join(skipped)})" if skipped else ""
        raise UpstreamConfigError(
            f"no upstreams configured and no usable nameserver in {path}{why}; "
            "set upstreams in the configuration"
        )
    return found


def _same_question(data: bytes, question: DNSQuestion) -> bool:
    """Whether the single question of reply ``data`` is ``question`` (RFC 5452 section 9.1).

    The name compares case-insensitively (DNS names are, RFC 4343), type and class exactly.
    """
    try:
        buffer = DNSBuffer(data)
        buffer.offset = HEADER_LEN
        got = DNSQuestion.parse(buffer)
    except Exception:  # dnslib raises several types on garbage
        return False
    return bool(
        got.qtype == question.qtype
        and got.qclass == question.qclass
        and got.qname == question.qname  # DNSLabel equality ignores case
    )


class _Exchange:
    """What one outstanding upstream query accepts as its answer."""

    __slots__ = ("counters", "qid", "question")

    def __init__(self, qid: int, question: DNSQuestion, counters: Counters) -> None:
        self.qid = qid
        self.question = question
        self.counters = counters

    def accept(self, data: bytes) -> DNSRecord | None:
        """Return the parsed answer if ``data`` answers this exchange, else count and ignore it."""
        if len(data) < HEADER_LEN:
            self.counters.inc("malformed_ignored")
            return None
        qid, flags, qdcount = _HEADER.unpack_from(data)
        if qid != self.qid or not flags & _QR or qdcount != 1:
            self.counters.inc("spoofed_ignored")
            return None
        if not _same_question(data, self.question):
            self.counters.inc("spoofed_ignored")
            return None
        try:
            return parse_message(data)
        except MessageError:
            self.counters.inc("malformed_ignored")
            return None


def _consume_exception(future: asyncio.Future[DNSRecord]) -> None:
    """Retrieve a finished future's exception so an unawaited failure is not reported."""
    if not future.cancelled():
        future.exception()


class _UdpClient(asyncio.DatagramProtocol):
    """A one-query datagram protocol: resolves ``answer`` with the first acceptable reply."""

    def __init__(self, exchange: _Exchange, upstream: Upstream) -> None:
        self.exchange = exchange
        self.source = (upstream.address, upstream.port)
        self.answer: asyncio.Future[DNSRecord] = asyncio.get_running_loop().create_future()
        # The socket may fail or close after the exchange stopped waiting (a timeout, another
        # upstream won the race): mark any such exception as seen, so asyncio does not log it.
        self.answer.add_done_callback(_consume_exception)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Check the source (RFC 5452 section 9.1), then the ID and question."""
        try:
            source = (ipaddress.ip_address(addr[0]), addr[1])
        except (ValueError, IndexError, TypeError):
            source = None
        if source != self.source:
            self.exchange.counters.inc("spoofed_ignored")
            return
        record = self.exchange.accept(data)
        if record is not None and not self.answer.done():
            self.answer.set_result(record)

    def error_received(self, exc: Exception) -> None:
        """Fail the exchange at once on an ICMP error (port unreachable...)."""
        if not self.answer.done():
            self.answer.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail a still-waiting exchange when the socket goes away."""
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionError("socket closed"))


class Resolver:
    """Sends a client's query to the configured upstreams following a :class:`Policy`.

    ``timeout`` bounds each try (one UDP exchange, and the TCP retry separately), ``deadline``
    the whole resolution. Counters (under the given node's ``upstream`` child): ``queries``,
    ``answers``, ``timeout``, ``error``, ``rcode_failure``, ``spoofed_ignored``,
    ``malformed_ignored``, ``tc_retry_tcp``, ``deadline``, ``all_failed``.
    """

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        policy: Policy | str = Policy.SEQUENTIAL,
        timeout: float = 2.0,
        deadline: float = 5.0,
        counters: Counters | None = None,
    ) -> None:
        if not upstreams:
            raise UpstreamConfigError("at least one upstream is needed")
        if timeout <= 0 or deadline <= 0:
            raise ValueError("timeout and deadline must be positive")
        self.upstreams = list(upstreams)
        self.policy = Policy(policy)
        self.timeout = timeout
        self.deadline = deadline
        self.counters = (counters or Counters()).child("upstream")
        self._next = 0

    async def resolve(self, query: Query) -> DNSRecord:
        """Return the first good upstream answer to ``query``, or raise :class:`UpstreamFailure`.

        A good answer is any answer whose RCODE is not FORMERR, SERVFAIL, NOTIMP or REFUSED.
        """
        try:
            async with asyncio.timeout(self.deadline):
                if self.policy is Policy.RACE:
                    return await self._race(query)
                return await self._in_turn(query, self._order())
        except TimeoutError:
            self.counters.inc("deadline")
            raise UpstreamFailure("deadline", f"no answer within {self.deadline} s") from None

    def _order(self) -> list[Upstream]:
        """Return the upstreams in the order this query tries them."""
        ups = self.upstreams
        if self.policy is Policy.ROUND_ROBIN:
            start = self._next
            self._next = (start + 1) % len(ups)
            return ups[start:] + ups[:start]
        return ups

    async def _in_turn(self, query: Query, order: list[Upstream]) -> DNSRecord:
        last: UpstreamFailure | None = None
        for upstream in order:
            try:
                return await self.exchange(upstream, query)
            except UpstreamFailure as failure:
                last = failure
        self.counters.inc("all_failed")
        raise UpstreamFailure("all_failed", str(last) if last else "")

    async def _race(self, query: Query) -> DNSRecord:
        tasks = {asyncio.ensure_future(self.exchange(u, query)) for u in self.upstreams}
        last: BaseException | None = None
        try:
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        return task.result()
                    last = exc
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
        self.counters.inc("all_failed")
        raise UpstreamFailure("all_failed", str(last) if last else "")

    async def exchange(self, upstream: Upstream, query: Query) -> DNSRecord:
        """Ask one upstream: over UDP, and again over TCP if the UDP answer is truncated."""
        counters = self.counters
        counters.inc("queries")
        try:
            answer = await self._udp(upstream, query)
            if answer.header.tc:
                counters.inc("tc_retry_tcp")
                answer = await self._tcp(upstream, query)
        except TimeoutError:
            counters.inc("timeout")
            log.info("upstream %s: no answer within %s s", upstream, self.timeout)
            raise UpstreamFailure("timeout", str(upstream)) from None
        except OSError as exc:
            counters.inc("error")
            log.info("upstream %s: %s", upstream, exc)
            raise UpstreamFailure("error", f"{upstream}: {exc}") from None
        rcode = answer.header.rcode
        if rcode in _FAILURE_RCODES:
            counters.inc("rcode_failure")
            log.info("upstream %s answered %s", upstream, RCODE.get(rcode))
            raise UpstreamFailure("rcode", f"{upstream}: {RCODE.get(rcode)}")
        counters.inc("answers")
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "upstream %s answered %s %s", upstream, query.question.qname, RCODE.get(rcode)
            )
        return answer

    async def _udp(self, upstream: Upstream, query: Query) -> DNSRecord:
        """One UDP exchange on a fresh socket with a fresh ID (RFC 5452 sections 9.2 and 10)."""
        loop = asyncio.get_running_loop()
        qid = secrets.randbelow(0x10000)
        exchange = _Exchange(qid, query.question, self.counters)
        # Connecting binds a new socket to a kernel-chosen (randomised) ephemeral port.
        transport, client = await loop.create_datagram_endpoint(
            lambda: _UdpClient(exchange, upstream), remote_addr=(upstream.host, upstream.port)
        )
        try:
            transport.sendto(upstream_query(query, qid))
            async with asyncio.timeout(self.timeout):
                return await client.answer
        finally:
            transport.close()

    async def _tcp(self, upstream: Upstream, query: Query) -> DNSRecord:
        """One TCP exchange (RFC 7766), a fresh connection and ID; non-matching replies skipped."""
        qid = secrets.randbelow(0x10000)
        exchange = _Exchange(qid, query.question, self.counters)
        wire = upstream_query(query, qid)
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
            try:
                writer.write(_LENGTH.pack(len(wire)) + wire)
                await writer.drain()
                while True:
                    try:
                        (length,) = _LENGTH.unpack(await reader.readexactly(2))
                        data = await reader.readexactly(length)
                    except asyncio.IncompleteReadError:
                        raise ConnectionError("upstream closed the TCP connection") from None
                    record = exchange.accept(data)
                    if record is not None:
                        return record
            finally:
                writer.close()
