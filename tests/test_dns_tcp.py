"""DNS over TCP connections (RFC 7766) served on the kernel's loopback with a fake handler.

The handler is not DNS: a message is one delay byte (hundredths of a second) and a tag, and the
reply is b"R" + the message, so framing, concurrency and timeouts are tested on their own. A delay
of 0 is answered at once, as the engine answers a cache hit: bytes, not a coroutine.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.counters import Counters
from olm.dns.tcp import Peer, TcpServer

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(10):
            return await coro

    return asyncio.run(bounded())


def handler(message: bytes, peer: Peer) -> bytes | Coroutine[Any, Any, bytes] | None:
    assert peer.client == b"\x7f\x00\x00\x01" and peer.local == b"\x7f\x00\x00\x01"
    if not message:
        return None
    if message[0] == 0:
        return b"R" + message
    return delayed(message)


async def delayed(message: bytes) -> bytes:
    await asyncio.sleep(message[0] / 100)
    return b"R" + message


def frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


async def serve(**kwargs: Any) -> tuple[TcpServer, asyncio.Server, int, Counters]:
    counters = Counters()
    tcp = TcpServer(handler, counters=counters, **kwargs)
    server = await asyncio.start_server(tcp.handle_connection, LOOPBACK, 0)
    return tcp, server, server.sockets[0].getsockname()[1], counters


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    (n,) = struct.unpack("!H", await reader.readexactly(2))
    return await reader.readexactly(n)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(100) == b""
    except ConnectionResetError:
        return True


async def stop(tcp: TcpServer, server: asyncio.Server) -> None:
    await tcp.close()
    server.close()
    await server.wait_closed()


def test_pipelined_queries_split_at_every_byte_boundary() -> None:
    messages = [b"\x00one", b"\x00second", b"\x00x"]
    stream = b"".join(frame(m) for m in messages)

    async def main() -> None:
        tcp, server, port, counters = await serve()
        for cut in range(1, len(stream)):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.write(stream[:cut])
            await writer.drain()
            await asyncio.sleep(0.002)
            writer.write(stream[cut:])
            replies = {await read_reply(reader) for _ in messages}
            assert replies == {b"R" + m for m in messages}
            writer.close()
        assert counters.get("tcp.messages") == 3 * (len(stream) - 1)
        await stop(tcp, server)

    run(main())


def test_replies_come_out_of_order_as_they_complete() -> None:
    async def main() -> None:
        tcp, server, port, _ = await serve()
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(frame(b"\x14slow") + frame(b"\x00fast"))
        assert await read_reply(reader) == b"R\x00fast"
        assert await read_reply(reader) == b"R\x14slow"
        writer.close()
        await stop(tcp, server)

    run(main())


def test_inflight_bound_per_connection_serialises() -> None:
    async def main() -> None:
        tcp, server, port, _ = await serve(max_inflight=1)
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(frame(b"\x0aslow") + frame(b"\x00fast"))
        assert await read_reply(reader) == b"R\x0aslow"
        assert await read_reply(reader) == b"R\x00fast"
        writer.close()
        await stop(tcp, server)

    run(main())


def test_half_close_still_gets_replies() -> None:
    async def main() -> None:
        tcp, server, port, _ = await serve()
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(frame(b"\x05a") + frame(b"\x00b"))
        writer.write_eof()  # RFC 7766 6.2.4: the client may half-close after its last query
        assert {await read_reply(reader), await read_reply(reader)} == {b"R\x05a", b"R\x00b"}
        assert await closed_by_peer(reader)
        await stop(tcp, server)

    run(main())


def test_idle_timeout_closes_but_not_while_a_query_is_in_flight() -> None:
    async def main() -> None:
        tcp, server, port, counters = await serve(idle_timeout=0.1)
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        assert await closed_by_peer(reader)
        assert counters.get("tcp.idle_timeout") == 1
        writer.close()
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(frame(b"\x1elong"))  # 0.3 s, three idle periods
        assert await read_reply(reader) == b"R\x1elong"
        assert await closed_by_peer(reader)
        assert counters.get("tcp.idle_timeout") == 2
        assert counters.get("tcp.replies") == 1
        writer.close()
        await stop(tcp, server)

    run(main())


def test_partial_message_timeout_closes() -> None:
    async def main() -> None:
        tcp, server, port, counters = await serve(message_timeout=0.1, idle_timeout=5)
        for partial in (b"\x00", frame(b"\x00abc")[:-1]):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.write(partial)
            assert await closed_by_peer(reader)
            writer.close()
        assert counters.get("tcp.message_timeout") == 2
        assert counters.get("tcp.messages") == 0
        await stop(tcp, server)

    run(main())


def test_connection_bound_closes_extra_connections_at_once() -> None:
    async def main() -> None:
        tcp, server, port, counters = await serve(max_connections=1)
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(frame(b"\x00hi"))
        assert await read_reply(reader) == b"R\x00hi"
        reader2, writer2 = await asyncio.open_connection(LOOPBACK, port)
        assert await closed_by_peer(reader2)
        assert counters.get("tcp.refused_connections") == 1
        assert tcp.active == 1
        writer.close()
        writer2.close()
        await stop(tcp, server)

    run(main())


def test_abrupt_close_mid_message_is_counted() -> None:
    async def main() -> None:
        tcp, server, port, counters = await serve()
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(frame(b"\x00ok") + frame(b"\x00cut")[:-2])
        assert await read_reply(reader) == b"R\x00ok"
        writer.close()
        for _ in range(100):
            if counters.get("tcp.eof_mid_message"):
                break
            await asyncio.sleep(0.01)
        assert counters.get("tcp.eof_mid_message") == 1
        assert tcp.active == 0
        await stop(tcp, server)

    run(main())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=5),
    st.lists(st.integers(min_value=1, max_value=60), max_size=6),
    st.booleans(),
)
def test_any_chunking_of_pipelined_messages(
    bodies: list[bytes], cuts: list[int], close_early: bool
) -> None:
    messages = [b"\x00" + body for body in bodies]
    stream = b"".join(frame(m) for m in messages)
    points = sorted({c for c in cuts if c < len(stream)})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]

    async def main() -> None:
        tcp, server, port, counters = await serve(message_timeout=1)
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        sent = chunks[:-1] if close_early and len(chunks) > 1 else chunks
        for chunk in sent:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0)
        sent_bytes = b"".join(sent)
        complete, end = [], 0
        for m in messages:
            end += len(frame(m))
            if end <= len(sent_bytes):
                complete.append(m)
        if sent is not chunks:
            writer.write_eof()
        replies = [await read_reply(reader) for _ in complete]
        assert sorted(replies) == sorted(b"R" + m for m in complete)
        writer.close()
        await stop(tcp, server)
        assert counters.get("tcp.messages") == len(complete)

    run(main())
