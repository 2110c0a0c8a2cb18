"""DNS over TCP and over TLS to one upstream, on a few persistent, pipelined connections.

RFC 7766 (TCP) and RFC 7858 (TLS): a small pool of connections is kept open and reused; each
carries many queries at once, each with its own ID, answered in any order and matched by ID and
question (RFC 7766 section 6.2.1.1). A connection idle for ``idle_timeout`` is closed (section
6.2.3). When the server closes a connection or it fails mid-stream, the queries waiting on it
are sent again on a fresh connection, with a fresh ID, within their deadline: never lost, and
never answered twice (a query is one Future, settled once).

TLS is verified (certificate and name, TLS 1.2 or later: :mod:`olm.dns.upstream.tls`) and a
reconnect resumes the last session. A connection may go through a SOCKS5 proxy (python-socks).
A failed verification is counted apart and is a failed try: never a fall back to plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Final

from netstack.counters import Counters
from olm.dns.answer import Answer
from olm.dns.upstream.address import Upstream
from olm.dns.upstream.base import Query, new_id
from olm.dns.upstream.bootstrap import Bootstrap
from olm.dns.upstream.connect import IdleSweep, address_of, open_connection, remember_session
from olm.dns.upstream.tls import client_context
from olm.dns.wire import U16, WireError

__all__ = ["ConnectionLost", "StreamTransport"]

log = logging.getLogger("olm.dns.upstream")

#: Times in a row a query is sent again on connections that died without answering anything:
#: a server that accepts and closes at once is given up on, one that answers some and closes
#: (a connection limit, RFC 7766 section 6.2.3) is followed for as long as the deadline allows.
_FRUITLESS: Final = 3


class ConnectionLost(ConnectionError):
    """The connection a query waited on is gone; the query may be sent again."""


class _Connection:
    """One open connection and the queries waiting on it, by ID."""

    def __init__(
        self,
        transport: StreamTransport,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.transport = transport
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, tuple[Query, asyncio.Future[Answer]]] = {}
        self.closed = False
        self.loop = asyncio.get_running_loop()
        self.last_used = self.loop.time()
        self.remembered = False
        self.answered = 0
        self._out: list[bytes] = []  # messages written this event-loop turn, sent together
        self.task = asyncio.ensure_future(self._read())

    def send(self, query: Query) -> asyncio.Future[Answer]:
        """Write ``query`` with an ID no other waiting query of this connection has."""
        qid = new_id()
        while qid in self.pending:
            qid = new_id()
        future: asyncio.Future[Answer] = self.loop.create_future()
        self.pending[qid] = (query, future)
        wire = query.wire(qid)
        out = self._out
        if not out:
            self.loop.call_soon(self._flush)
        out.append(U16.pack(len(wire)))
        out.append(wire)
        self.last_used = self.loop.time()
        return future

    def _flush(self) -> None:
        """Write the messages of this turn at once: one TLS record and one send for a burst."""
        out = self._out
        if out and not self.closed:
            self.writer.write(b"".join(out))
        out.clear()

    def forget(self, qid_future: asyncio.Future[Answer]) -> None:
        """Stop waiting for the query of ``qid_future`` (its try ended another way)."""
        for qid, (_, future) in list(self.pending.items()):
            if future is qid_future:
                del self.pending[qid]

    async def _read(self) -> None:
        reader = self.reader
        buffer = bytearray()
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return  # closed by the server: the waiting queries go elsewhere
                buffer += chunk
                self.last_used = self.loop.time()
                if not self.remembered:
                    self.transport.remember(self.writer)
                    self.remembered = True
                # Every whole message in the buffer (RFC 1035 4.2.2: a two-byte length first).
                start = 0
                while len(buffer) - start >= 2:
                    length = (buffer[start] << 8) | buffer[start + 1]
                    end = start + 2 + length
                    if end > len(buffer):
                        break
                    self._received(bytes(buffer[start + 2 : end]))
                    start = end
                del buffer[:start]
        except OSError:
            pass  # failed: the waiting queries go elsewhere
        finally:
            self.close()

    def _received(self, data: bytes) -> None:
        """Settle the query ``data`` answers; count and ignore anything else."""
        counters = self.transport.counters
        if len(data) < 12:
            counters.inc("malformed_ignored")
            return
        qid = (data[0] << 8) | data[1]
        waiting = self.pending.get(qid)
        if waiting is None:
            counters.inc("late_ignored")
            return
        query, future = waiting
        if not query.matches(data, qid):
            counters.inc("spoofed_ignored")
            return
        try:
            answer = query.answer(data)
        except WireError:
            counters.inc("malformed_ignored")
            return
        del self.pending[qid]
        self.answered += 1
        if not future.done():
            future.set_result(answer)

    def close(self) -> None:
        """Close the connection; queries still waiting learn it (ConnectionLost)."""
        if self.closed:
            return
        self.closed = True
        pending, self.pending = self.pending, {}
        for _, future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost("the upstream connection closed"))
                future.exception()  # seen, also if nobody awaits it any more
        self.writer.transport.abort()
        if asyncio.current_task() is not self.task:
            self.task.cancel()
        self.transport.dropped(self)


class StreamTransport:
    """Pipelined TCP or TLS exchanges with one upstream over a few persistent connections.

    Counters (on the node given): ``tcp_connections`` or ``tls_connections``, ``tls_resumed``,
    ``tls_verify_failed``, ``resent`` (queries sent again after their connection died),
    ``idle_closed``, and ``spoofed_ignored``, ``malformed_ignored``, ``late_ignored``.
    """

    def __init__(
        self,
        upstream: Upstream,
        counters: Counters,
        *,
        bootstrap: Bootstrap | None = None,
        connections: int = 2,
        idle_timeout: float = 30.0,
    ) -> None:
        if upstream.scheme not in ("tcp", "tls", "udp"):
            raise ValueError(f"{upstream}: not a TCP or TLS upstream")
        self.upstream = upstream
        self.counters = counters
        self.bootstrap = bootstrap
        self.max_connections = connections
        self.idle_timeout = idle_timeout
        self.tls = upstream.scheme == "tls"
        # RFC 7858 section 3.2 and RFC 9461: ALPN "dot"; servers that know no ALPN ignore it.
        self.context: ssl.SSLContext | None = (
            client_context(upstream.ca_file, ["dot"], resuming=True) if self.tls else None
        )
        self._connections: list[_Connection] = []
        self._connecting: asyncio.Future[_Connection] | None = None
        self._idle = IdleSweep(idle_timeout, self._close_idle)
        self._closed = False

    # -- connections ------------------------------------------------------------------------

    async def _open(self, timeout: float) -> _Connection:
        upstream = self.upstream
        async with asyncio.timeout(timeout):
            address = await address_of(upstream, self.bootstrap)
            reader = asyncio.StreamReader()
            transport, protocol = await open_connection(
                lambda: asyncio.StreamReaderProtocol(reader),
                upstream,
                address,
                self.context,
                self.counters,
            )
        writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())
        self.counters.inc("tls_connections" if self.tls else "tcp_connections")
        connection = _Connection(self, reader, writer)
        self._connections.append(connection)
        self._idle.arm()
        return connection

    def remember(self, writer: asyncio.StreamWriter) -> None:
        """Keep a connection's TLS session for the next one."""
        remember_session(self.context, self.upstream, writer.transport)

    def dropped(self, connection: _Connection) -> None:
        """Forget a connection that closed: it is no longer chosen."""
        if connection in self._connections:
            self._connections.remove(connection)

    async def _connection(self, timeout: float) -> _Connection:
        """Return an open connection: the least busy, or a new one while the pool has room."""
        open_ones = [c for c in self._connections if not c.closed]
        if open_ones:
            best = min(open_ones, key=lambda c: len(c.pending))
            if not best.pending or len(open_ones) >= self.max_connections:
                return best
        if self._connecting is not None:  # one connect at a time: the others share it
            return await asyncio.shield(self._connecting)
        self._connecting = asyncio.ensure_future(self._open(timeout))
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    def _close_idle(self, now: float) -> bool:
        """Close the connections idle for ``idle_timeout``; return whether any is left."""
        for connection in list(self._connections):
            if not connection.pending and now - connection.last_used >= self.idle_timeout:
                self.counters.inc("idle_closed")
                connection.close()
        return bool(self._connections)

    # -- one exchange -----------------------------------------------------------------------

    async def exchange(self, query: Query, timeout: float) -> Answer:
        """Ask once; sent again on a fresh connection if the connection dies before the answer.

        Raises TimeoutError at the try's timeout (cut to the query's deadline), OSError when
        no connection can be made (a failed certificate check included).
        """
        if self._closed:
            raise ConnectionError("transport closed")
        loop = asyncio.get_running_loop()
        until = loop.time() + query.timeout(timeout, loop.time())
        fruitless = 0
        while True:
            left = until - loop.time()
            if left <= 0:
                raise TimeoutError
            connection = await self._connection(left)
            try:
                future = connection.send(query)
            except (OSError, RuntimeError) as exc:  # the transport closed under us
                connection.close()
                fruitless += 1
                if fruitless > _FRUITLESS:
                    raise ConnectionLost(str(exc)) from None
                continue
            try:
                async with asyncio.timeout_at(until):
                    return await asyncio.shield(future)
            except ConnectionLost:
                fruitless = 0 if connection.answered else fruitless + 1
                if fruitless > _FRUITLESS:
                    raise
                self.counters.inc("resent")
            finally:
                if not future.done():
                    connection.forget(future)
                    future.cancel()

    def close(self) -> None:
        """Close every connection; queries waiting on them fail."""
        self._closed = True
        self._idle.stop()
        for connection in list(self._connections):
            with contextlib.suppress(Exception):
                connection.close()
