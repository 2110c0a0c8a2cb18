"""A two-minute tour of netstack with no root and no network: ``python3 -m netstack.demo``.

Two stacks, a "client" and a "server", are joined by an in-memory wire with a sniffer on each
side. The client pings the server, exchanges UDP datagrams with its echo service (one large
enough to be fragmented and reassembled), and knocks on a closed port, which answers with an
ICMP port unreachable that the client's socket reports as ECONNREFUSED. Every packet that
crosses the wire is printed as one line, and the counters of both stacks at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from netstack.adapters import UDPSocket, create_datagram_endpoint
from netstack.clock import ManualClock
from netstack.header import icmpv4
from netstack.header.numbers import IPPROTO_ICMP
from netstack.link.channel import ChannelEndpoint, Wire
from netstack.link.sniffer import SnifferEndpoint
from netstack.stack import Stack, parse_address


class _Echo(asyncio.DatagramProtocol):
    """UDP echo (RFC 862) on the server stack."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


def _host(
    name: str, v4: str, v6: str, clock: ManualClock, out: TextIO, seed: int
) -> tuple[Stack, ChannelEndpoint]:
    stack = Stack(clock, seed=seed)
    channel = ChannelEndpoint(mtu=1500)
    sniffer = SnifferEndpoint(channel, log=lambda line: print(f"  [{name:6}] {line}", file=out))
    stack.create_nic("eth0", sniffer)
    stack.add_address("eth0", f"{v4}/24")
    stack.add_address("eth0", f"{v6}/64")
    stack.add_route("0.0.0.0/0", "eth0")
    stack.add_route("::/0", "eth0")
    return stack, channel


async def tour(out: TextIO = sys.stdout) -> dict[str, int]:
    """Run the tour, printing to ``out``; return the server's counters."""
    clock = ManualClock()
    client, c_link = _host("client", "192.0.2.1", "2001:db8::1", clock, out, seed=1)
    server, s_link = _host("server", "192.0.2.2", "2001:db8::2", clock, out, seed=2)
    wire = Wire(c_link, s_link)
    await create_datagram_endpoint(server, _Echo, local_addr=("0.0.0.0", 7))
    await create_datagram_endpoint(server, _Echo, local_addr=("::", 7))

    print("1. ping 192.0.2.2 (ICMP echo, RFC 792)", file=out)
    request = icmpv4.echo_request(0x4242, 1, b"netstack demo")
    client.send(client.find_route(parse_address("192.0.2.2")), IPPROTO_ICMP, request.build())
    wire.pump()

    for n, (host, size) in enumerate(
        (("192.0.2.2", 11), ("2001:db8::2", 11), ("192.0.2.2", 3000)), start=2
    ):
        print(f"{n}. UDP echo to [{host}]:7 with {size} bytes", file=out)
        sock = UDPSocket(client)
        sock.connect((host, 7))
        payload = (b"hello, stack" * 300)[:size]
        sock.send(payload)
        wire.pump()
        data = await sock.recv()
        status = "identical" if data == payload else "DIFFERENT"
        print(f"   -> {len(data)} bytes back, {status}", file=out)
        sock.close()

    print("5. UDP to a closed port (ICMP port unreachable, RFC 1122 4.1.3.1)", file=out)
    sock = UDPSocket(client)
    sock.connect(("192.0.2.2", 9))
    sock.send(b"anyone?")
    wire.pump()
    try:
        await sock.recv()
        print("   -> unexpected answer", file=out)
    except ConnectionRefusedError as exc:
        print(f"   -> the socket reports: {exc.strerror}", file=out)
    sock.close()

    print("\nserver counters:", file=out)
    counters = server.counters.snapshot()
    for name, value in counters.items():
        print(f"  {name:45} {value}", file=out)
    return counters


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 -m netstack.demo``."""
    argparse.ArgumentParser(prog="python3 -m netstack.demo", description=__doc__).parse_args(argv)
    asyncio.run(tour())
    return 0


if __name__ == "__main__":
    sys.exit(main())
