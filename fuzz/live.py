"""A live stack for harnesses: one NIC on a channel link, a ManualClock, sockets listening.

The stack holds 10.0.0.2/24 and fd00::2/64 with default routes through the NIC, and in both
families: a UDPSocket bound to port 53 (its receive queue has the stack's limit), a UDPSocket
bound to port 5300 and connected to the host's port 5353 (so ICMP errors reach it), and an echo
endpoint on port 7 that answers every datagram, with one large enough to need fragmenting when
the payload starts with ``F``. TCP: a listener on port 80 in both families whose connections
echo what they receive, and one IPv4 connection the stack opened to the host, taken through
its handshake before the input starts, whose incoming data is echoed as well.
"""

from __future__ import annotations

from collections.abc import Callable

from fuzz.invariants import check_drained, check_invariants
from fuzz.packets import (
    CONNECTED_PORT,
    ECHO_PORT,
    HOST4,
    PEER_PORT,
    SINK_PORT,
    STACK4,
    TCP_LISTEN_PORT,
    TCP_LOCAL_PORT,
    TCP_PEER_PORT,
    Advance,
    Inject,
    Op,
    TcpToConnection,
)
from netstack.adapters import UDPSocket
from netstack.clock import ManualClock
from netstack.errors import ParseError, StackError
from netstack.header.ipv4 import IPv4Header
from netstack.header.numbers import IPPROTO_TCP
from netstack.header.tcp import ACK, FIN, RST, SYN, TCPHeader, TCPOptions, build_tcp
from netstack.link.channel import ChannelEndpoint
from netstack.ports import unspecified
from netstack.stack import Stack, StackOptions
from netstack.transport.tcp.endpoint import TCPEndpoint
from netstack.transport.tcp.listener import TCPListener
from netstack.transport.udp import DatagramCallback, UDPEndpoint


def small_limits() -> StackOptions:
    """Limits small enough that a short input reaches every bound."""
    return StackOptions(
        reassembly_memory=6000,
        reassembly_datagrams=3,
        icmp_rate=5.0,
        icmp_burst=4,
        udp_receive_queue=3,
        pmtu_entries=2,
    )


DRAIN_SECONDS = 3600.0
"""A clock step longer than every timeout the stack has: afterwards nothing may be held."""

BIG_ECHO = 3000
"""Size of the answer to an ``F`` datagram: more than one 1500-byte packet holds."""

PEER_ISS = 0xFFFFFF00
"""The host's initial sequence number on the established connection: it wraps soon."""


class LiveStack:
    """A stack under test plus what it takes to feed it and check it after every step."""

    def __init__(
        self, options: StackOptions | None = None, *, seed: int = 1, mtu: int = 1500
    ) -> None:
        self.clock = ManualClock()
        self.stack = Stack(self.clock, options, seed=seed)
        self.link = ChannelEndpoint(mtu=mtu)
        self.nic = self.stack.create_nic("eth0", self.link)
        self.stack.add_address("eth0", "10.0.0.2/24")
        self.stack.add_address("eth0", "fd00::2/64")
        self.stack.add_route("0.0.0.0/0", "eth0")
        self.stack.add_route("::/0", "eth0")
        self.sockets: list[UDPSocket] = []
        self.echoes: list[UDPEndpoint] = []
        self.echo_refused = 0
        for wildcard, local, peer in (
            ("0.0.0.0", "10.0.0.2", "10.0.0.1"),
            ("::", "fd00::2", "fd00::1"),
        ):
            sink = UDPSocket(self.stack)
            sink.bind((wildcard, SINK_PORT))
            connected = UDPSocket(self.stack)
            connected.bind((local, CONNECTED_PORT))
            connected.connect((peer, PEER_PORT))
            self.sockets += [sink, connected]
            echo = UDPEndpoint(self.stack)
            echo.on_datagram = self._echo_callback(echo)
            echo.bind(unspecified(4 if wildcard == "0.0.0.0" else 16), ECHO_PORT)
            self.echoes.append(echo)
        self.injected = 0
        self.emitted: list[bytes] = []
        self.tcp_endpoints: list[TCPEndpoint] = []
        self.listeners: list[TCPListener] = []
        for family in (4, 16):
            listener = self.stack.tcp.listen(unspecified(family), TCP_LISTEN_PORT, backlog=4)
            listener.on_connection = self._accept_callback(listener)
            self.listeners.append(listener)
        self.connection = self._open_connection()

    # -- TCP ------------------------------------------------------------------------------------

    def _serve(self, ep: TCPEndpoint) -> None:
        """Echo what ``ep`` receives; close when the peer does."""
        self.tcp_endpoints.append(ep)

        def echo(data: bytes) -> None:
            ep.send(data)

        ep.on_data = echo
        ep.on_eof = ep.close

    def _accept_callback(self, listener: TCPListener) -> Callable[[], None]:
        def accept() -> None:
            while (ep := listener.accept()) is not None:
                self._serve(ep)

        return accept

    def _open_connection(self) -> TCPEndpoint:
        """Open a connection to the host and answer its SYN by hand, so it is established."""
        ep = self.stack.tcp.connect(HOST4, TCP_PEER_PORT, local_port=TCP_LOCAL_PORT)
        self._serve(ep)
        (syn,) = self.link.drain()
        hdr = TCPHeader.parse(syn[IPv4Header.parse(syn).header_length :])
        self.peer_next = (PEER_ISS + 1) & 0xFFFFFFFF
        self.stack_next = (hdr.seq + 1) & 0xFFFFFFFF
        options = TCPOptions(mss=1460, window_scale=7, sack_permitted=True, timestamp=(1, 0))
        synack = TCPHeader(
            TCP_PEER_PORT, TCP_LOCAL_PORT, PEER_ISS, self.stack_next, SYN | ACK, 65535, 0, options
        )
        self.inject(self._tcp4(synack, b""))
        self.link.drain()  # the ACK that completes the handshake
        if ep.state.name != "ESTABLISHED":
            raise AssertionError(f"handshake left the connection in {ep.state}")
        return ep

    @staticmethod
    def _tcp4(hdr: TCPHeader, payload: bytes) -> bytes:
        segment = build_tcp(HOST4, STACK4, hdr, payload)
        return IPv4Header(src=HOST4, dst=STACK4, protocol=IPPROTO_TCP).pack(segment)

    def _segment_to_connection(self, op: TcpToConnection) -> bytes:
        seq = (self.peer_next + op.seq_delta) & 0xFFFFFFFF
        ack = (self.stack_next + op.ack_delta) & 0xFFFFFFFF
        hdr = TCPHeader(TCP_PEER_PORT, TCP_LOCAL_PORT, seq, ack, op.flags, op.window, 0, op.options)
        try:
            packet = self._tcp4(hdr, op.payload)
        except ValueError:  # options that no longer fit in 40 bytes, a payload too large
            hdr.options = TCPOptions()
            packet = self._tcp4(hdr, op.payload[:1400])
        if op.seq_delta == 0 and not op.flags & (RST | SYN):
            # The host moves on as if the stack took the segment.
            step = len(op.payload) + (1 if op.flags & FIN else 0)
            self.peer_next = (self.peer_next + step) & 0xFFFFFFFF
        return packet

    def _track_stack_sequence(self, packets: list[bytes]) -> None:
        """Note the next sequence number the stack will send on the connection."""
        for packet in packets:
            if packet[0] >> 4 != 4 or len(packet) < 40 or packet[9] != IPPROTO_TCP:
                continue
            try:
                ip = IPv4Header.parse(packet)
                seg = TCPHeader.parse(packet[ip.header_length :])
            except ParseError:
                continue
            if seg.src_port == TCP_LOCAL_PORT and seg.dst_port == TCP_PEER_PORT:
                length = ip.total_length - ip.header_length - seg.header_length
                length += 1 if seg.flags & (SYN | FIN) else 0
                self.stack_next = (seg.seq + length) & 0xFFFFFFFF

    def _echo_callback(self, echo: UDPEndpoint) -> DatagramCallback:
        def answer(payload: bytes, remote: bytes, port: int, local: bytes) -> None:
            if payload[:1] == b"F":
                payload = (payload * (BIG_ECHO // len(payload) + 1))[:BIG_ECHO]
            try:
                echo.sendto(payload, remote, port)
            except StackError:
                # Port 0 and the like: the application's refusal, not the stack's failure.
                self.echo_refused += 1

        return answer

    def inject(self, packet: bytes) -> None:
        """Deliver one packet; any exception escaping the receive path propagates."""
        self.injected += 1
        self.link.inject(packet)

    def apply(self, op: Op) -> None:
        """Carry out one operation, then check every invariant."""
        if isinstance(op, Inject):
            self.inject(op.packet)
        elif isinstance(op, TcpToConnection):
            self.inject(self._segment_to_connection(op))
        else:
            self.clock.advance(op.seconds)
        self.emitted = self.link.drain()
        self._track_stack_sequence(self.emitted)
        check_invariants(self, self.emitted)

    def run(self, ops: list[Op]) -> None:
        """Apply ``ops`` in order, then let every timeout pass and check nothing is held."""
        for op in ops:
            self.apply(op)
        # Reset what is still open: afterwards no timer may be left (nothing held forever).
        for ep in self.tcp_endpoints:
            ep.abort()
        for listener in self.listeners:
            listener.close()
        self.clock.advance(DRAIN_SECONDS)
        self.emitted = self.link.drain()
        check_invariants(self, self.emitted)
        check_drained(self)


__all__ = ["BIG_ECHO", "DRAIN_SECONDS", "Advance", "Inject", "LiveStack", "small_limits"]
