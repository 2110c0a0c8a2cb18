"""Small services ``olm stack`` can run on the stack: echo (RFC 862) and discard (RFC 863)."""

from __future__ import annotations

import asyncio
import contextlib


class EchoProtocol(asyncio.DatagramProtocol):
    """UDP echo: sends every datagram back to where it came from (RFC 862)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to answer on."""
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Echo ``data`` to ``addr``."""
        if self.transport is not None:
            self.transport.sendto(data, addr)


async def tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """TCP echo: return every byte until the peer closes its side, then close ours (RFC 862)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def tcp_discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """TCP discard: read and drop everything until the peer closes (RFC 863)."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
