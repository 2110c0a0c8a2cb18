"""UDP through the stack: demultiplexing, checksums, ICMP errors, sockets and callbacks."""

from __future__ import annotations

import asyncio
import errno

import pytest

from netstack.adapters import UDPSocket, create_datagram_endpoint
from netstack.header import icmpv4, icmpv6
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Header
from netstack.header.udp import UDPHeader
from netstack.link.channel import ChannelEndpoint, Wire
from netstack.stack import Stack
from netstack.transport.udp import UDPEndpoint

from stackutil import HOST4, HOST6, STACK4, STACK6, a, make_stack, udp_packet


def _collecting_endpoint(stack: Stack, addr: str, port: int) -> tuple[UDPEndpoint, list]:
    got: list[tuple[bytes, bytes, int, bytes]] = []
    ep = UDPEndpoint(stack, lambda p, s, sp, d: got.append((p, s, sp, d)))
    ep.bind(a(addr), port)
    return ep, got


@pytest.mark.parametrize(("src", "dst"), [(HOST4, STACK4), (HOST6, STACK6)])
def test_datagram_reaches_bound_endpoint(src: str, dst: str) -> None:
    stack, link, _ = make_stack()
    _, got = _collecting_endpoint(stack, dst, 53)
    link.inject(udp_packet(src, dst, 5353, 53, b"hello"))
    assert got == [(b"hello", a(src), 5353, a(dst))]
    assert stack.counters.get("udp.delivered") == 1


def test_demux_prefers_connected_then_address_then_wildcard() -> None:
    import random

    from netstack.ports import Demux

    demux: Demux[str] = Demux(random.Random(0))
    demux.register_bound(bytes(4), 53, "wildcard")
    demux.register_bound(a(STACK4), 53, "address")
    demux.register_connected(a(STACK4), 53, a(HOST4), 9999, "connected")
    assert demux.lookup(a(STACK4), 53, a(HOST4), 9999) == "connected"
    assert demux.lookup(a(STACK4), 53, a(HOST4), 1111) == "address"
    assert demux.lookup(a("10.0.0.3"), 53, a(HOST4), 9999) == "wildcard"
    assert demux.lookup(a(STACK6), 53, a(HOST6), 9999) is None  # no IPv6 wildcard
    assert demux.lookup(a(STACK4), 54, a(HOST4), 9999) is None


def test_connected_endpoint_takes_only_its_peer() -> None:
    stack, link, _ = make_stack()
    _, got_addr = _collecting_endpoint(stack, STACK4, 53)
    conn_got: list = []
    conn = UDPEndpoint(stack, lambda *x: conn_got.append(x))
    conn.bind(a(STACK4), 5000)
    conn.connect(a(HOST4), 9999)
    link.inject(udp_packet(HOST4, STACK4, 9999, 5000, b"c"))
    link.inject(udp_packet(HOST4, STACK4, 1111, 5000, b"stranger"))
    link.inject(udp_packet(HOST4, STACK4, 1111, 53, b"b"))
    assert [x[0] for x in conn_got] == [b"c"]
    assert [x[0] for x in got_addr] == [b"b"]
    assert stack.counters.get("udp.no_port") == 1


def test_ephemeral_ports_are_distinct() -> None:
    stack, _, _ = make_stack()
    ports = set()
    for _ in range(200):
        ep = UDPEndpoint(stack)
        ep.bind(a(STACK4), 0)
        ports.add(ep.local_port)
    assert len(ports) == 200
    assert all(32768 <= p <= 60999 for p in ports)


def test_bind_conflicts_are_refused() -> None:
    stack, _, _ = make_stack()
    _collecting_endpoint(stack, "0.0.0.0", 53)
    with pytest.raises(Exception, match="in use"):
        _collecting_endpoint(stack, STACK4, 53)
    # The other family's wildcard is a different socket (IPV6_V6ONLY semantics).
    _collecting_endpoint(stack, "::", 53)


@pytest.mark.parametrize(("src", "dst"), [(HOST4, STACK4), (HOST6, STACK6)])
def test_bad_checksum_is_dropped_and_counted(src: str, dst: str) -> None:
    stack, link, _ = make_stack()
    _, got = _collecting_endpoint(stack, dst, 53)
    packet = bytearray(udp_packet(src, dst, 5353, 53, b"hello"))
    packet[-1] ^= 0x01
    link.inject(bytes(packet))
    assert got == []
    assert stack.counters.get("udp.malformed.bad_checksum") == 1


def test_zero_checksum_allowed_on_ipv4_only() -> None:
    stack, link, _ = make_stack()
    _, got4 = _collecting_endpoint(stack, STACK4, 53)
    _, got6 = _collecting_endpoint(stack, STACK6, 53)
    for src, dst in ((HOST4, STACK4), (HOST6, STACK6)):
        packet = bytearray(udp_packet(src, dst, 1, 53, b"x"))
        hl = 20 if len(a(src)) == 4 else 40
        packet[hl + 6 : hl + 8] = b"\0\0"  # RFC 768: zero means "no checksum" (IPv4 only)
        link.inject(bytes(packet))
    assert [g[0] for g in got4] == [b"x"]
    assert got6 == []  # RFC 8200 section 8.1
    assert stack.counters.get("udp.malformed.zero_checksum") == 1


def test_closed_port_gets_icmpv4_port_unreachable_quoting_the_datagram() -> None:
    stack, link, _ = make_stack()
    original = udp_packet(HOST4, STACK4, 4000, 9, b"knock")
    link.inject(original)
    out = link.drain()
    assert len(out) == 1
    ip = IPv4Header.parse(out[0])
    assert (ip.src, ip.dst, ip.protocol) == (a(STACK4), a(HOST4), 1)
    msg = icmpv4.ICMPv4Message.parse(out[0][ip.header_length :])
    assert (msg.type, msg.code) == (icmpv4.DEST_UNREACHABLE, icmpv4.PORT_UNREACHABLE)
    assert msg.payload == original
    assert stack.counters.get("udp.no_port") == 1


def test_closed_port_gets_icmpv6_port_unreachable() -> None:
    _, link, _ = make_stack()
    original = udp_packet(HOST6, STACK6, 4000, 9, b"knock")
    link.inject(original)
    (out,) = link.drain()
    ip = IPv6Header.parse(out)
    msg = icmpv6.ICMPv6Message.parse(out[40:], ip.src, ip.dst)
    assert (msg.type, msg.code) == (icmpv6.DEST_UNREACHABLE, icmpv6.PORT_UNREACHABLE)
    assert msg.payload == original


def test_icmp_errors_are_rate_limited() -> None:
    from netstack.stack import StackOptions

    stack, link, clock = make_stack(options=StackOptions(icmp_rate=10, icmp_burst=5))
    for i in range(20):
        link.inject(udp_packet(HOST4, STACK4, 4000 + i, 9, b"x"))
    assert len(link.drain()) == 5
    assert stack.counters.get("icmpv4.error_rate_limited") == 15
    clock.advance(1.0)  # 10 tokens a second, capped at the burst of 5
    for i in range(20):
        link.inject(udp_packet(HOST4, STACK4, 4000 + i, 9, b"x"))
    assert len(link.drain()) == 5


def test_sendto_builds_a_valid_datagram() -> None:
    stack, link, _ = make_stack()
    ep = UDPEndpoint(stack)
    ep.bind(a(STACK4), 53)
    assert ep.sendto(b"answer", a(HOST4), 5353)
    (out,) = link.drain()
    ip = IPv4Header.parse(out)
    udp = UDPHeader.parse(out[20:])
    assert (ip.src, ip.dst) == (a(STACK4), a(HOST4))
    assert (udp.src_port, udp.dst_port, udp.length) == (53, 5353, 14)
    assert out[28:] == b"answer"


def _two_stacks(mtu: int = 1500) -> tuple[Stack, Stack, Wire]:
    from netstack.clock import ManualClock

    clock = ManualClock()
    stacks = []
    links = []
    for i, (v4, v6) in enumerate((("10.0.0.1", "fd00::1"), ("10.0.0.2", "fd00::2"))):
        st = Stack(clock, seed=i)
        link = ChannelEndpoint(mtu=mtu)
        st.create_nic("eth0", link)
        st.add_address("eth0", f"{v4}/24")
        st.add_address("eth0", f"{v6}/64")
        st.add_route("0.0.0.0/0", "eth0")
        st.add_route("::/0", "eth0")
        stacks.append(st)
        links.append(link)
    return stacks[0], stacks[1], Wire(links[0], links[1])


@pytest.mark.parametrize(("client", "server"), [(HOST4, STACK4), (HOST6, STACK6)])
@pytest.mark.parametrize("size", [1, 1400, 4000, 65000])
def test_udp_sockets_between_two_stacks(client: str, server: str, size: int) -> None:
    """Datagrams larger than the MTU are fragmented by the sender and reassembled (RFC 791/8200)."""
    st_a, st_b, wire = _two_stacks()

    async def main() -> None:
        srv = UDPSocket(st_b)
        srv.bind((server, 7))
        cli = UDPSocket(st_a)
        cli.connect((server, 7))
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        cli.send(payload)
        wire.pump()
        data, peer = await srv.recvfrom()
        assert data == payload
        assert peer == cli.getsockname()
        srv.sendto(data[::-1], peer)
        wire.pump()
        assert await cli.recv() == payload[::-1]
        cli.close()
        srv.close()

    asyncio.run(main())
    frag_counter = "ipv4.fragments_sent" if ":" not in client else "ipv6.fragments_sent"
    assert (st_a.counters.get(frag_counter) > 0) == (size > 1472)


def test_connected_socket_reports_port_unreachable() -> None:
    st_a, _, wire = _two_stacks()

    async def main() -> None:
        cli = UDPSocket(st_a)
        cli.connect((STACK4, 9))
        cli.send(b"anyone?")
        wire.pump()
        with pytest.raises(ConnectionRefusedError):
            await cli.recv()

    asyncio.run(main())
    assert st_a.counters.get("udp.control.port_unreachable") == 1


def test_waiting_reader_gets_the_error() -> None:
    st_a, _, wire = _two_stacks()

    async def main() -> None:
        cli = UDPSocket(st_a)
        cli.connect((STACK6, 9))
        task = asyncio.ensure_future(cli.recv())
        await asyncio.sleep(0)
        cli.send(b"anyone?")
        wire.pump()
        with pytest.raises(ConnectionRefusedError):
            await task

    asyncio.run(main())


def test_receive_queue_is_bounded_and_counted() -> None:
    stack, link, _ = make_stack()

    async def main() -> None:
        sock = UDPSocket(stack, queue_limit=3)
        sock.bind((STACK4, 53))
        for i in range(10):
            link.inject(udp_packet(HOST4, STACK4, 1000 + i, 53, bytes([i])))
        assert sock.queued == 3
        assert [await sock.recv() for _ in range(3)] == [b"\0", b"\1", b"\2"]

    asyncio.run(main())
    assert stack.counters.get("udp.receive_queue_full") == 7


def test_closed_socket_fails_pending_reader_and_releases_port() -> None:
    stack, _, _ = make_stack()

    async def main() -> None:
        sock = UDPSocket(stack)
        sock.bind((STACK4, 53))
        task = asyncio.ensure_future(sock.recv())
        await asyncio.sleep(0)
        sock.close()
        with pytest.raises(OSError) as info:
            await task
        assert info.value.errno == errno.EBADF
        again = UDPSocket(stack)
        again.bind((STACK4, 53))

    asyncio.run(main())


def test_datagram_protocol_callbacks() -> None:
    st_a, st_b, wire = _two_stacks()

    class Echo(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.transport: asyncio.DatagramTransport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.DatagramTransport)
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            assert self.transport is not None
            self.transport.sendto(data.upper(), addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.got: list[tuple[bytes, tuple[str, int]]] = []
            self.errors: list[Exception] = []

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.got.append((data, addr))

        def error_received(self, exc: Exception) -> None:
            self.errors.append(exc)

    async def main() -> None:
        srv_t, _ = await create_datagram_endpoint(st_b, Echo, local_addr=(STACK4, 7))
        cli_t, cli = await create_datagram_endpoint(st_a, Client, remote_addr=(STACK4, 7))
        assert srv_t.get_extra_info("sockname") == (STACK4, 7)
        cli_t.sendto(b"ping")
        wire.pump()
        assert cli.got == [(b"PING", (STACK4, 7))]
        srv_t.close()
        await asyncio.sleep(0)
        cli_t.sendto(b"again")
        wire.pump()
        assert len(cli.errors) == 1
        assert isinstance(cli.errors[0], ConnectionRefusedError)

    asyncio.run(main())


def test_no_route_is_an_os_error() -> None:
    from netstack.clock import ManualClock

    stack = Stack(ManualClock())
    stack.create_nic("eth0", ChannelEndpoint())
    stack.add_address("eth0", "10.0.0.2/24")
    sock = UDPSocket(stack)
    with pytest.raises(OSError) as info:
        sock.sendto(b"x", ("192.0.2.1", 53))
    assert info.value.errno == errno.ENETUNREACH


def test_oversized_datagram_is_emsgsize() -> None:
    """RFC 791 3.1: over IPv4 a UDP payload tops out at 65507 bytes (65527 over IPv6)."""
    stack, _, _ = make_stack()
    sock = UDPSocket(stack)
    sock.bind((STACK4, 5000))
    sock.sendto(bytes(65507), (HOST4, 9))
    with pytest.raises(OSError) as info:
        sock.sendto(bytes(65508), (HOST4, 9))
    assert info.value.errno == errno.EMSGSIZE


def test_a_second_concurrent_reader_is_refused() -> None:
    stack, _, _ = make_stack()

    async def main() -> None:
        sock = UDPSocket(stack)
        sock.bind((STACK4, 53))
        first = asyncio.ensure_future(sock.recv())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already waiting"):
            await sock.recv()
        first.cancel()

    asyncio.run(main())


def test_unconnected_transport_ignores_icmp_errors() -> None:
    """Only a connected endpoint hears of ICMP errors (like Linux without IP_RECVERR)."""
    st_a, _, wire = _two_stacks()

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.errors: list[Exception] = []

        def error_received(self, exc: Exception) -> None:
            self.errors.append(exc)

    async def main() -> None:
        t, client = await create_datagram_endpoint(st_a, Client, local_addr=("10.0.0.1", 4000))
        t.sendto(b"x", (STACK4, 9))
        wire.pump()
        assert client.errors == []

    asyncio.run(main())
    assert st_a.counters.get("udp.control_ignored_unconnected") == 1
