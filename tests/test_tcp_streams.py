"""asyncio streams over stack TCP: the standard StreamReader/StreamWriter, two stacks, one loop."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from netstack.adapters import TCPTransport, open_connection, start_server
from netstack.clock import AsyncioClock
from netstack.link.channel import ChannelEndpoint
from netstack.stack import Stack
from netstack.transport.tcp import TCPConfig
from tests.test_tcp_harness import A4, A6, B4, B6, add_tcp, make_host


class LoopWire:
    """Moves packets between two channels from the event loop, as soon as they are written."""

    def __init__(self, loop: asyncio.AbstractEventLoop, a: ChannelEndpoint, b: ChannelEndpoint):
        self.loop = loop
        self.a, self.b = a, b
        self.scheduled = False
        self.moved = 0
        a.on_write = b.on_write = self.kick

    def kick(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.pump)

    def pump(self) -> None:
        self.scheduled = False
        for _ in range(10_000):  # bounded: stacks answer, so keep going until quiet
            batch_a, batch_b = self.a.drain(), self.b.drain()
            if not batch_a and not batch_b:
                return
            self.moved += len(batch_a) + len(batch_b)
            self.b.inject_many(batch_a)
            self.a.inject_many(batch_b)
        self.kick()


def _two_stacks(config: TCPConfig | None = None) -> tuple[Stack, Stack, LoopWire]:
    loop = asyncio.get_running_loop()
    clock = AsyncioClock(loop)
    la, lb = ChannelEndpoint(), ChannelEndpoint()
    a = make_host(clock, A4, A6, la, 1)  # type: ignore[arg-type]
    b = make_host(clock, B4, B6, lb, 2)  # type: ignore[arg-type]
    add_tcp(a, config)
    add_tcp(b, config)
    return a, b, LoopWire(loop, la, lb)


def _pattern(n: int, salt: int) -> bytes:
    block = hashlib.sha256(salt.to_bytes(4, "big")).digest() * 64
    return (block * (n // len(block) + 1))[:n]


@pytest.mark.parametrize(("server_host", "v6"), [(B4, False), (B6, True)])
def test_one_megabyte_each_way_with_pipelined_writes_and_half_close(
    server_host: str, v6: bool
) -> None:
    """Both directions carry 1 MB in small pipelined writes; write_eof is a TCP half close."""
    size = 1_000_000
    up, down = _pattern(size, 1), _pattern(size, 2)

    async def main() -> None:
        a, b, wire = _two_stacks()
        got_on_server = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Send while receiving: the server's writes overlap the client's.
            async def send() -> None:
                for i in range(0, size, 10_000):
                    writer.write(down[i : i + 10_000])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            data = await reader.read()  # until the client's FIN
            got_on_server.set_result(data)
            await sender
            writer.close()
            await writer.wait_closed()

        server = await start_server(b, handle, server_host, 8080)
        reader, writer = await open_connection(a, server_host, 8080)
        assert writer.get_extra_info("peername") == (server_host, 8080)
        assert writer.can_write_eof()
        for i in range(0, size, 7_000):
            writer.writelines([up[i : i + 3_000], up[i + 3_000 : i + 7_000]])
            await writer.drain()
        writer.write_eof()
        received = await reader.read()
        assert await got_on_server == up
        assert received == down
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        assert wire.moved > 1400  # at least one segment per MSS each way went over the wire

    asyncio.run(asyncio.wait_for(main(), 60))


def test_drain_waits_for_the_peer_to_read() -> None:
    """Back-pressure: with a reader that does not read, drain() blocks once buffers fill."""

    async def main() -> None:
        config = TCPConfig(send_buffer=16 * 1024, receive_buffer=16 * 1024)
        a, b, _ = _two_stacks(config)
        release = asyncio.Event()
        total = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal total
            await release.wait()
            total = len(await reader.read())
            writer.close()

        await start_server(b, handle, B4, 9000, backlog=4)
        reader, writer = await open_connection(a, B4, 9000)
        writer.write(b"x" * 4_000_000)
        drain = asyncio.ensure_future(writer.drain())
        for _ in range(50):
            await asyncio.sleep(0)
        assert not drain.done()  # the buffers are full: the writer must wait
        transport = writer.transport
        assert isinstance(transport, TCPTransport)
        assert transport.get_write_buffer_size() > 0
        release.set()
        await drain
        writer.write_eof()
        assert await reader.read() == b""
        await writer.wait_closed()
        assert total == 4_000_000

    asyncio.run(asyncio.wait_for(main(), 60))


def test_connection_refused_when_nobody_listens() -> None:
    """RFC 9293 section 3.10.7.1: the RST for a closed port makes connect fail."""

    async def main() -> None:
        a, _, _ = _two_stacks()
        with pytest.raises(ConnectionRefusedError):
            await open_connection(a, B4, 1)
        assert a.counters.get("tcp.rst.received") == 1

    asyncio.run(asyncio.wait_for(main(), 10))


def test_abort_resets_the_peer_reader() -> None:
    """RFC 9293 section 3.10.5: abort sends RST; the peer's reader sees ConnectionResetError."""

    async def main() -> None:
        a, b, _ = _two_stacks()
        peer_error: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read()
            except ConnectionResetError as exc:
                peer_error.set_result(exc)
            else:
                peer_error.set_result(None)

        server = await start_server(b, handle, None, 7)
        assert server.sockets[0].getsockname() == ("0.0.0.0", 7)
        _, writer = await open_connection(a, B4, 7)
        writer.write(b"some")
        await writer.drain()
        writer.transport.abort()
        assert isinstance(await peer_error, ConnectionResetError)
        server.close()

    asyncio.run(asyncio.wait_for(main(), 10))
