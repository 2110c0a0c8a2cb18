"""DNS over TCP to one upstream: a fresh connection per exchange (RFC 7766, RFC 1035 4.2.2).

Used for answers that came truncated over UDP, and as the ``tcp`` scheme. Each exchange opens a
connection, sends the query with its two-byte length prefix and reads replies until one
matches; replies that do not match are counted and skipped.
"""

from __future__ import annotations

import asyncio
from typing import Final

from netstack.counters import Counters
from olm.dns.answer import Answer
from olm.dns.upstream.address import Upstream
from olm.dns.upstream.base import Query, new_id
from olm.dns.wire import U16, WireError

__all__ = ["TcpTransport"]

_LENGTH: Final = U16


class TcpTransport:
    """TCP exchanges with one upstream, one connection each.

    Counters (on the node given): ``tcp_connections``, ``spoofed_ignored``,
    ``malformed_ignored``.
    """

    def __init__(self, upstream: Upstream, counters: Counters) -> None:
        self.upstream = upstream
        self.counters = counters
        #: Where to connect (the UDP transport sets its bootstrap address for a host name).
        self.target: tuple[str, int] = (upstream.host, upstream.port)
        self._writers: set[asyncio.StreamWriter] = set()

    async def exchange(self, query: Query, timeout: float) -> Answer:
        """Ask once over a new connection; raise TimeoutError or OSError on failure."""
        qid = new_id()
        wire = query.wire(qid)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(query.timeout(timeout, loop.time())):
            reader, writer = await asyncio.open_connection(*self.target)
            self.counters.inc("tcp_connections")
            self._writers.add(writer)
            try:
                writer.write(_LENGTH.pack(len(wire)) + wire)
                await writer.drain()
                while True:
                    try:
                        (length,) = _LENGTH.unpack(await reader.readexactly(2))
                        data = await reader.readexactly(length)
                    except asyncio.IncompleteReadError:
                        raise ConnectionError("upstream closed the TCP connection") from None
                    if len(data) < 12:
                        self.counters.inc("malformed_ignored")
                    elif not query.matches(data, qid):
                        self.counters.inc("spoofed_ignored")
                    else:
                        try:
                            return query.answer(data)
                        except WireError:
                            self.counters.inc("malformed_ignored")
            finally:
                self._writers.discard(writer)
                writer.close()

    def close(self) -> None:
        """Abort the connections of exchanges in progress."""
        for writer in list(self._writers):
            writer.transport.abort()
