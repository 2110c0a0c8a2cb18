"""DNS over TCP connections (RFC 7766), written against asyncio StreamReader/StreamWriter.

One :class:`TcpServer` serves every connection of a listener: the kernel's
``asyncio.start_server`` and netstack's TCP listener both hand it reader/writer pairs.
Each connection may carry many length-prefixed queries (RFC 1035 section 4.2.2); they are
read as they arrive and answered in the order the answers come (RFC 7766 section 6.2.1.1): an
answer that is ready at once (a cache hit) is written at once, without a Task; one that must be
waited for gets a Task. Each reply is written whole in one ``write()``, so replies never
interleave.

Bounds: concurrent connections (beyond: closed at once), queries in flight per connection
(beyond: the connection is not read until one completes), the idle time with nothing in flight
(RFC 7766 section 6.2.3), the time a started message may take to arrive completely, and the
time a reply may take to be accepted by the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Final, NamedTuple

from netstack.counters import Counters

__all__ = ["MessageHandler", "Peer", "TcpServer"]

log = logging.getLogger(__name__)


class Peer(NamedTuple):
    """Who is at the other end of a connection: packed addresses and the client's port."""

    client: bytes
    port: int
    local: bytes


#: Answers one DNS message from ``peer``: reply bytes now, None for no reply (the message is
#: dropped), or a coroutine whose result is one of those.
MessageHandler = Callable[[bytes, Peer], bytes | Coroutine[Any, Any, bytes | None] | None]

_MAX_MESSAGE: Final = 0xFFFF


def _packed(host: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    """Return the peer of a connection from netstack's endpoint or the kernel socket's names."""
    endpoint = writer.get_extra_info("tcp_endpoint")
    if endpoint is not None:
        return Peer(endpoint.remote_addr, endpoint.remote_port, endpoint.local_addr)
    try:
        host, port = writer.get_extra_info("peername")[:2]
        local = writer.get_extra_info("sockname")[0]
        return Peer(_packed(host), port, _packed(local))
    except (TypeError, ValueError, OSError):
        return Peer(b"", 0, b"")


class TcpServer:
    """Serves DNS-over-TCP connections with ``handler`` answering each message.

    Counters (under the given node's ``tcp`` child): ``connections``, ``refused_connections``,
    ``messages``, ``replies``, ``idle_timeout``, ``message_timeout``, ``write_timeout``,
    ``eof_mid_message``, ``reset``, ``handler_error``, ``oversized_reply``, ``waited``
    (messages whose answer needed a Task).
    """

    def __init__(
        self,
        handler: MessageHandler,
        *,
        idle_timeout: float = 10.0,
        message_timeout: float = 5.0,
        max_connections: int = 64,
        max_inflight: int = 16,
        counters: Counters | None = None,
    ) -> None:
        if idle_timeout <= 0 or message_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_connections < 1 or max_inflight < 1:
            raise ValueError("bounds must be at least 1")
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.max_connections = max_connections
        self.max_inflight = max_inflight
        self.counters = (counters or Counters()).child("tcp")
        self._connections: set[asyncio.Task[None]] = set()
        self._orphans: set[asyncio.Task[None]] = set()  # answers of connections that ended
        self.closing = False

    @property
    def active(self) -> int:
        """Number of connections being served now."""
        return len(self._connections)

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one connection until the peer closes it or a timeout or bound ends it."""
        if self.closing or len(self._connections) >= self.max_connections:
            self.counters.inc("refused_connections")
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.counters.inc("connections")
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            # Cancelled by close(): end quietly, as asyncio's servers on Python 3.11 log a
            # cancelled connection callback as an error.
            if not self.closing:
                raise
        finally:
            self._connections.discard(task)

    def adopt(self, tasks: set[asyncio.Task[None]]) -> None:
        """Keep the answers still running for a connection that ended, for close()."""
        for task in tasks:
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)

    async def close(self) -> None:
        """Cancel every connection being served and wait for them; refuse new ones after."""
        self.closing = True
        for task in list(self._orphans):
            task.cancel()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _End(enum.Enum):
    """How reading a connection ended."""

    CLEAN = "clean"  # EOF or idle timeout: finish what is in flight, then close
    ABORT = "abort"  # a message that did not complete in time: close at once


class _Connection:
    """The state of one served connection."""

    def __init__(
        self, server: TcpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.counters = server.counters
        self.reader = reader
        self.writer = writer
        self.peer = peer_of(writer)
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.room: asyncio.Future[None] | None = None  # set when a waiting answer ends
        self.last_activity = self.loop.time()
        self.aborted = False
        # The idle timer (RFC 7766 section 6.2.3): one timer per connection, armed while
        # waiting for a message and moved on lazily, rather than one per message.
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_expired = False
        self._reading: asyncio.Task[Any] | None = None  # the task waiting for a message
        # Above this many unsent bytes, wait for the peer to read (back-pressure).
        try:
            self._high_water = writer.transport.get_write_buffer_limits()[1]
        except (AttributeError, NotImplementedError):
            self._high_water = 0

    async def run(self) -> None:
        """Read messages and answer them; on EOF, finish what is in flight.

        RFC 7766 section 6.2.4: a client may half-close after its last query and still
        expect the replies, so an EOF waits for the outstanding answers.
        """
        graceful = False
        handler = self.server.handler
        peer = self.peer
        try:
            while True:
                if len(self.tasks) >= self.server.max_inflight:
                    # Back-pressure: read nothing more until one waiting answer is written.
                    self.room = self.loop.create_future()
                    await self.room
                message = await self._read_message()
                if isinstance(message, _End):
                    graceful = message is _End.CLEAN
                    break
                try:
                    result = handler(message, peer)
                except Exception:
                    self.counters.inc("handler_error")
                    log.exception("DNS-over-TCP handler failed")
                    continue
                if result is None:
                    continue
                if isinstance(result, bytes):
                    self._write(result)
                    await self._drain()
                    if self.aborted:
                        break
                    continue
                self.counters.inc("waited")
                task = asyncio.ensure_future(self._answer(result))
                self.tasks.add(task)
                task.add_done_callback(self._finished)
            if graceful and self.tasks:
                await asyncio.wait(set(self.tasks))
        except OSError:
            self.counters.inc("reset")
        finally:
            if self._idle_handle is not None:
                self._idle_handle.cancel()
            # Answers still being waited for are left to finish (bounded by the upstream
            # deadline): other clients may share their upstream exchange. Their replies find
            # the connection closed and are dropped. Only the server's close() cancels them.
            if self.server.closing:
                for task in self.tasks:
                    task.cancel()
            else:
                self.server.adopt(self.tasks)
            if graceful and not self.aborted:
                self.writer.close()
            else:
                self.writer.transport.abort()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        room = self.room
        if room is not None and not room.done():
            room.set_result(None)

    async def _read_message(self) -> bytes | _End:
        """Return the next message, or how the connection ends (EOF or idle, or an abort)."""
        reader = self.reader
        data = await self._buffered(reader, 0, 0)
        if data is not None:
            return data
        first = await self._first_byte()
        if first is None:
            return _End.CLEAN
        data = await self._buffered(reader, 1, first)
        if data is not None:
            return data
        try:
            async with asyncio.timeout(self.server.message_timeout):
                second = await reader.readexactly(1)
                length = (first << 8) | second[0]
                data = await reader.readexactly(length) if length else b""
        except TimeoutError:
            self.counters.inc("message_timeout")
            return _End.ABORT
        except asyncio.IncompleteReadError:
            # The peer can send no more, but may still read: the message is lost, the
            # queries before it are still answered.
            self.counters.inc("eof_mid_message")
            return _End.CLEAN
        self.counters.inc("messages")
        self.last_activity = self.loop.time()
        return data

    async def _buffered(self, reader: asyncio.StreamReader, have: int, first: int) -> bytes | None:
        """Take the message if it is already whole in the reader's buffer: no timer, no wait.

        ``have`` octets of its length prefix were read already (``first`` is the first).
        asyncio's StreamReader has no public way to ask what it holds, hence ``_buffer``.
        """
        buffered = getattr(reader, "_buffer", None)
        if buffered is None or len(buffered) < 2 - have:
            return None
        length = (first << 8) | buffered[0] if have else (buffered[0] << 8) | buffered[1]
        need = 2 - have + length
        if len(buffered) < need:
            return None
        data = (await reader.readexactly(need))[2 - have :]
        self.counters.inc("messages")
        self.last_activity = self.loop.time()
        return data

    async def _first_byte(self) -> int | None:
        """Wait for the first byte of a length prefix; None on EOF or idle timeout.

        The idle clock (RFC 7766 section 6.2.3) runs only while no query of this connection
        is in flight, from the later of the last message received and the last reply sent.
        """
        task = asyncio.current_task()
        self._reading = task
        if self._idle_handle is None:
            self._arm_idle()
        try:
            byte = await self.reader.readexactly(1)
        except asyncio.CancelledError:
            if self._idle_expired and task is not None:
                task.uncancel()
                return None
            raise
        except asyncio.IncompleteReadError:
            return None
        finally:
            self._reading = None
        return byte[0]

    def _arm_idle(self) -> None:
        idle = self.server.idle_timeout
        start = self.loop.time() if self.tasks else self.last_activity
        self._idle_handle = self.loop.call_at(start + idle, self._check_idle)

    def _check_idle(self) -> None:
        """End the wait for a message when idle long enough, else re-arm (the idle timer)."""
        self._idle_handle = None
        reading = self._reading
        if reading is None:
            return  # busy with a message; the next wait arms the timer again
        if self.tasks or self.last_activity + self.server.idle_timeout > self.loop.time():
            self._arm_idle()
            return
        self.counters.inc("idle_timeout")
        self._idle_expired = True
        reading.cancel()

    def _write(self, reply: bytes) -> None:
        """Write one reply whole with its length prefix (RFC 1035 section 4.2.2)."""
        if len(reply) > _MAX_MESSAGE:
            self.counters.inc("oversized_reply")
            return
        writer = self.writer
        if writer.is_closing():
            return
        writer.write(len(reply).to_bytes(2, "big") + reply)
        self.counters.inc("replies")
        self.last_activity = self.loop.time()

    async def _drain(self) -> None:
        """Wait while the peer does not take our replies; abort it after the idle timeout."""
        writer = self.writer
        if writer.transport.get_write_buffer_size() <= self._high_water or writer.is_closing():
            return
        try:
            async with asyncio.timeout(self.server.idle_timeout):
                await writer.drain()
        except TimeoutError:
            # A peer that does not read its replies: give up on the connection.
            self.counters.inc("write_timeout")
            self.aborted = True
            writer.transport.abort()
        except OSError:
            self.counters.inc("reset")
            self.aborted = True

    async def _answer(self, pending: Coroutine[Any, Any, bytes | None]) -> None:
        """Wait for one answer, then write it whole."""
        try:
            reply = await pending
        except Exception:
            self.counters.inc("handler_error")
            log.exception("DNS-over-TCP handler failed")
            return
        if reply is None:
            return
        self._write(reply)
        await self._drain()
