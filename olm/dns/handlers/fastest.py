"""The fastest-address handler: of several A or AAAA records, the one that connects first.

As SmartDNS's speed check and AdGuard's dnsproxy ``fastest_addr``: when an answer carries two
or more addresses of the asked type, a TCP connection is opened to each (on each of ``ports``,
at most ``max_probes`` connections in all, all at once) and the first to connect wins. The
answer is rewritten with the winner first (``mode="first"``) or alone (``mode="only"``). It is
never held beyond ``budget`` seconds: with no winner by then it goes out as it came. Results
are kept per address for ``cache_ttl`` seconds, so an answer already seen needs no probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Sequence
from typing import Final, Literal

from netstack.counters import Counters
from olm.dns.answer import NOERROR, Answer, learn
from olm.dns.handlers import Handler, Pending, Result
from olm.dns.request import Request
from olm.dns.wire import (
    HEADER,
    TYPE_A,
    TYPE_AAAA,
    U16,
    WireError,
    expand_records,
    records,
    skip_name,
)

__all__ = ["FastestAddress"]

_ADDRESS_SIZE: Final = {TYPE_A: 4, TYPE_AAAA: 16}
_FAMILY: Final = {4: socket.AF_INET, 16: socket.AF_INET6}
_TYPE_RRSIG: Final = 46
#: Entries in the per-address result cache at most.
_CACHE_SIZE: Final = 4096
#: Close with RST: a probe carried nothing, and leaves no TIME_WAIT behind (socket(7) SO_LINGER).
_LINGER_RESET: Final = struct.pack("ii", 1, 0)

Mode = Literal["first", "only"]


class FastestAddress(Handler):
    """Puts first (or alone) the address of an answer that accepts a TCP connection first.

    Answers pass unchanged unless they are NOERROR with two or more distinct addresses of the
    asked type (A or AAAA), and are neither signed (TSIG) nor truncated. The winner takes the
    place of the first address record: records before it (a CNAME chain) keep theirs, since
    stub resolvers read a chain in order. With ``mode="only"`` the other address records are
    dropped, unless the answer carries RRSIGs (a smaller RRset would no longer validate): then
    it is only reordered, which DNSSEC allows (RFC 4034 section 6.3 sorts an RRset before
    checking it). Probes go port by port (every address on the first port, then on the next),
    up to ``max_probes``. A cached success is used as it is; addresses known to fail are not
    probed again until their entry expires.

    Counters: ``probed`` (answers whose addresses were probed), ``reordered`` (answers
    rewritten), ``cached`` (answers decided from cached results alone), ``no_winner``
    (answers left as they came: nothing connected within the budget).
    """

    name = "fastest"

    def __init__(
        self,
        counters: Counters,
        *,
        ports: Sequence[int] = (443, 80),
        budget: float = 0.2,
        mode: Mode = "first",
        max_probes: int = 8,
        cache_ttl: float = 60.0,
    ) -> None:
        super().__init__(counters)
        if not ports or not all(0 < p < 65536 for p in ports):
            raise ValueError("ports must be one or more numbers from 1 to 65535")
        if budget <= 0 or max_probes < 1 or cache_ttl < 0:
            raise ValueError("budget and max_probes must be positive, cache_ttl not negative")
        if mode not in ("first", "only"):
            raise ValueError("mode must be 'first' or 'only'")
        self.ports = tuple(ports)
        self.budget = budget
        self.mode = mode
        self.max_probes = max_probes
        self.cache_ttl = cache_ttl
        #: Address (RDATA bytes) -> (expiry, connect latency in seconds, or None: failed).
        self.results: dict[bytes, tuple[float, float | None]] = {}

    def handle(self, request: Request) -> Result:
        """Pass the request on; choose among the addresses of the answer that comes back."""
        result = self.next.handle(request)
        if result is None:
            return None
        if isinstance(result, Answer):
            return self._choose(request.qtype, result)
        return self._after(request.qtype, result)

    async def _after(self, qtype: int, pending: Pending) -> Answer | None:
        answer = await pending
        if answer is None:
            return None
        chosen = self._choose(qtype, answer)
        return chosen if isinstance(chosen, Answer) else await chosen

    def _choose(self, qtype: int, answer: Answer) -> Answer | Pending:
        """Return the answer rewritten from cached results, or the coroutine that probes."""
        addresses = _addresses(answer, qtype)
        if len(addresses) < 2:
            return answer
        now = time.monotonic()
        known = self._known(addresses, now)
        best = _best(known)
        if best is not None or len(known) == len(addresses):
            self.counters.inc("cached")
            return self._rewrite(answer, qtype, best)
        unknown = [a for a in addresses if a not in known]
        return self._probe_then_rewrite(answer, qtype, unknown)

    async def _probe_then_rewrite(
        self, answer: Answer, qtype: int, addresses: list[bytes]
    ) -> Answer:
        self.counters.inc("probed")
        winner = await self._probe(addresses)
        return self._rewrite(answer, qtype, winner)

    def _known(self, addresses: list[bytes], now: float) -> dict[bytes, float | None]:
        known: dict[bytes, float | None] = {}
        results = self.results
        for address in addresses:
            entry = results.get(address)
            if entry is None:
                continue
            if entry[0] <= now:
                del results[address]
            else:
                known[address] = entry[1]
        return known

    def _remember(self, address: bytes, latency: float | None) -> None:
        results = self.results
        now = time.monotonic()
        if address not in results and len(results) >= _CACHE_SIZE:
            for key in [k for k, (expires, _) in results.items() if expires <= now]:
                del results[key]
            while len(results) >= _CACHE_SIZE:
                del results[next(iter(results))]  # the oldest entry
        results.pop(address, None)
        results[address] = (now + self.cache_ttl, latency)

    async def _probe(self, addresses: list[bytes]) -> bytes | None:
        """Connect to ``addresses`` at once; return the first that connects within the budget.

        Every connection still trying is cancelled, and its socket closed, before this returns.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + self.budget
        targets = [(a, p) for p in self.ports for a in addresses][: self.max_probes]
        tasks = {loop.create_task(_connect(a, p)): a for a, p in targets}
        tries = {a: 0 for a in addresses}
        for address, _ in targets:
            tries[address] += 1
        pending = set(tasks)
        winner: bytes | None = None
        fastest = 0.0
        try:
            while pending and winner is None:
                left = end - loop.time()
                if left <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    address = tasks[task]
                    if task.exception() is None:
                        latency = task.result()
                        if winner is None or latency < fastest:
                            winner, fastest = address, latency
                        self._remember(address, latency)
                    else:
                        tries[address] -= 1
                        if tries[address] == 0:
                            self._remember(address, None)  # every port refused
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if winner is None:
            # Not connected within the budget: as good as failed, for this budget.
            for address, left_tries in tries.items():
                if left_tries:
                    self._remember(address, None)
        return winner

    def _rewrite(self, answer: Answer, qtype: int, winner: bytes | None) -> Answer:
        """Return ``answer`` with ``winner`` first (or alone); unchanged without a winner."""
        if winner is None:
            self.counters.inc("no_winner")
            return answer
        try:
            rewritten = _rebuild(answer, qtype, winner, self.mode == "only")
        except WireError:
            return answer
        if rewritten is not answer:
            self.counters.inc("reordered")
        return rewritten


def _best(known: dict[bytes, float | None]) -> bytes | None:
    """Return the address with the lowest known latency, None if none connected."""
    best: bytes | None = None
    lowest = 0.0
    for address, latency in known.items():
        if latency is not None and (best is None or latency < lowest):
            best, lowest = address, latency
    return best


def _addresses(answer: Answer, qtype: int) -> list[bytes]:
    """Return the distinct addresses of type ``qtype`` in a positive answer, in order."""
    size = _ADDRESS_SIZE.get(qtype)
    if (
        size is None
        or answer.rcode != NOERROR
        or answer.negative
        or answer.signed
        or answer.raw
        or answer.truncated
        or answer.qend <= 12
    ):
        return []
    wire = answer.wire
    found: list[bytes] = []
    try:
        ancount = HEADER.unpack_from(wire)[3]
        for record in records(wire, answer.qend, (ancount, 0, 0)):
            if record.rtype == qtype and record.end - record.rdata == size:
                address = wire[record.rdata : record.end]
                if address not in found:
                    found.append(address)
    except WireError:
        return []
    return found


def _rebuild(answer: Answer, qtype: int, winner: bytes, only: bool) -> Answer:
    """Return ``answer`` with ``winner`` in the place of the first address, or alone.

    The records are written out uncompressed (the names they pointed to may move) and the
    result learned again; TTLs, ``born``, the header bits and the EDE stay. Returns ``answer``
    itself when nothing would change.
    """
    wire = answer.wire
    expanded = expand_records(wire, answer.qend)
    section = [data for where, data in expanded if where == 0]
    kinds = []
    for data in section:
        end = skip_name(data, 0)
        kinds.append((U16.unpack_from(data, end)[0], data[end + 10 :]))
    first = next(i for i, (rtype, _) in enumerate(kinds) if rtype == qtype)
    won = next(i for i, kind in enumerate(kinds) if kind == (qtype, winner))
    chosen = section[won]
    if only and all(rtype != _TYPE_RRSIG for rtype, _ in kinds):
        section = [d for d, (rtype, _) in zip(section, kinds, strict=True) if rtype != qtype]
        section.insert(first, chosen)
    elif won == first:
        return answer
    else:
        del section[won]
        section.insert(first, chosen)
    _, flags, _, _, nscount, arcount = HEADER.unpack_from(wire)
    body = [data for where, data in expanded if where != 0]
    rebuilt = (
        HEADER.pack(0, flags, 1, len(section), nscount, arcount)
        + wire[12 : answer.qend]
        + b"".join(section)
        + b"".join(body)
    )
    learned = learn(rebuilt, answer.born)
    learned.bits = answer.bits
    learned.ede = answer.ede
    return learned


async def _connect(address: bytes, port: int) -> float:
    """Open a TCP connection to ``address`` and close it; return how long connecting took."""
    loop = asyncio.get_running_loop()
    family = _FAMILY[len(address)]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        start = loop.time()
        await loop.sock_connect(sock, (socket.inet_ntop(family, address), port))
        return loop.time() - start
    finally:
        sock.close()
