"""The TCP transport of a stack: validation, demultiplexing, resets, ICMP, opens.

Inbound segments are checksummed, then matched exact 4-tuple first (connections, including
half-open ones), then listening (address, port), then wildcard port; a segment that matches
nothing is answered with a RST (RFC 9293 section 3.10.7.1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from netstack.errors import ParseError, StackError
from netstack.header.numbers import IPPROTO_TCP
from netstack.header.tcp import TCPHeader, build_tcp, tcp_checksum_ok
from netstack.ports import Demux, PortInUseError, unspecified
from netstack.protocols import HANDLED, MALFORMED, Control, Disposition, Route
from netstack.transport.tcp.config import TCPConfig
from netstack.transport.tcp.endpoint import TCPEndpoint
from netstack.transport.tcp.isn import ISNFunction, ISNGenerator, SynCookies
from netstack.transport.tcp.listener import TCPListener
from netstack.transport.tcp.segment import reset_for

if TYPE_CHECKING:
    from netstack.protocols import NetworkInterface as NIC
    from netstack.protocols import StackServices as Stack


class TCPProtocol:
    """TCP for one stack. Register it with ``stack.register_transport``.

    ``isn`` may be replaced (tests pin initial sequence numbers near 2**32 with it).
    """

    number = IPPROTO_TCP

    def __init__(self, stack: Stack, config: TCPConfig | None = None) -> None:
        self.stack = stack
        self.config = config or TCPConfig()
        self.counters = stack.counters.child("tcp")
        self.demux: Final[Demux[TCPEndpoint | TCPListener]] = Demux(
            stack.rng, stack.options.ephemeral_ports
        )
        self.isn: ISNFunction = ISNGenerator(stack.clock, stack.rng)
        self.cookies = SynCookies(stack.clock, stack.rng)
        self._ca_tokens = float(self.config.challenge_ack_burst)
        self._ca_stamp = stack.clock.now()

    # -- opening ---------------------------------------------------------------------------

    def connect(
        self,
        remote: bytes,
        port: int,
        *,
        local: bytes | None = None,
        local_port: int = 0,
        iss: int | None = None,
        nodelay: bool | None = None,
        on_established: Callable[[], None] | None = None,
    ) -> TCPEndpoint:
        """Start an active open to (remote, port); return the endpoint in SYN-SENT.

        ``local``/``local_port`` pick the source (default: the route's address, an ephemeral
        port); ``iss`` overrides the initial sequence number.
        """
        if not 0 < port <= 0xFFFF:
            raise StackError(f"bad port {port}")
        route = self.stack.find_route(remote, local)
        demux = self.demux
        lport = demux.reserve(route.local, local_port)
        if (route.local, lport, remote, port) in demux.connected:
            demux.release(route.local, lport)
            raise PortInUseError("4-tuple already in use")
        ep = TCPEndpoint(self, nodelay=nodelay)
        ep.on_established = on_established
        if iss is None:
            iss = self.isn(route.local, lport, remote, port)
        ep.open_active(route, lport, port, iss)
        return ep

    def listen(
        self,
        addr: bytes,
        port: int,
        backlog: int = 128,
        on_connection: Callable[[], None] | None = None,
    ) -> TCPListener:
        """Listen on (addr, port); ``addr`` may be the unspecified address, ``port`` 0."""
        if addr != unspecified(len(addr)) and not self.stack.is_local(addr):
            raise StackError("cannot listen on an address the stack does not hold")
        demux = self.demux
        port = demux.reserve(addr, port)
        listener = TCPListener(self, addr, port, backlog, on_connection)
        try:
            demux.register_bound(addr, port, listener)
        except StackError:
            demux.release(addr, port)
            raise
        self.counters.inc("listens")
        return listener

    # -- receive -----------------------------------------------------------------------------

    def handle_packet(
        self, nic: NIC, src: bytes, dst: bytes, payload: memoryview, packet: bytes
    ) -> Disposition:
        """Validate one inbound segment and hand it to its connection or listener.

        A segment nobody wants is TCP's own to answer (a RST, RFC 9293 section 3.10.7.1), so
        TCP never reports UNKNOWN_DESTINATION: the network layer sends no ICMP for it.
        """
        c = self.counters
        values = c.values
        values["segments.in"] = values.get("segments.in", 0) + 1
        try:
            hdr = TCPHeader.parse(payload)
        except ParseError as exc:
            c.inc("malformed." + exc.reason)
            return MALFORMED
        if not tcp_checksum_ok(src, dst, payload):
            c.inc("segments.bad_checksum")
            return MALFORMED
        if dst[0] == 0xFF if len(dst) == 16 else dst[0] >= 224:
            # RFC 1122 section 4.2.3.10: a TCP segment to a multicast or broadcast address is
            # silently discarded (no RST: that would answer a whole group).
            c.inc("segments.multicast_dropped")
            return HANDLED
        data = payload[hdr.header_length :]
        ep = self.demux.lookup(dst, hdr.dst_port, src, hdr.src_port)
        if ep is None:
            c.inc("segments.no_port")
            self.reply_rst(hdr, len(data), dst, src)
            return HANDLED
        if isinstance(ep, TCPListener):
            ep.segment_arrived(hdr, data, dst, src)
        else:
            ep.segment_arrived(hdr, data)
        return HANDLED

    def handle_control(
        self, control: Control, local: bytes, remote: bytes, header: bytes, info: int
    ) -> None:
        """Pass an ICMP error to the connection whose segment it quotes."""
        c = self.counters
        local_port = int.from_bytes(header[0:2], "big")
        remote_port = int.from_bytes(header[2:4], "big")
        seq = int.from_bytes(header[4:8], "big")
        ep = self.demux.connected.get((local, local_port, remote, remote_port))
        if ep is None or isinstance(ep, TCPListener):
            c.inc("icmp.no_connection")
            return
        c.inc(f"icmp.{control.value}")
        ep.icmp_error(control, seq, info)

    # -- send --------------------------------------------------------------------------------

    def output(self, route: Route, hdr: TCPHeader, payload: bytes) -> bool:
        """Checksum and send one segment along ``route``; False if the network layer refused.

        IPv4 segments carry Don't Fragment: TCP sizes its segments to the path MTU (RFC 1191).
        """
        segment = build_tcp(route.local, route.remote, hdr, payload)
        values = self.counters.values
        values["segments.out"] = values.get("segments.out", 0) + 1
        ok = self.stack.send(route, IPPROTO_TCP, segment, dont_fragment=True)
        if not ok:
            self.counters.inc("segments.send_failed")
        return ok

    def reply_rst(self, hdr: TCPHeader, data_len: int, local: bytes, remote: bytes) -> None:
        """Answer a stray segment with the RST of RFC 9293 section 3.10.7.1 (never a RST)."""
        reply = reset_for(hdr, data_len)
        if reply is None:
            return
        try:
            route = self.stack.find_route(remote, local)
        except StackError:
            self.counters.inc("rst.no_route")
            return
        self.counters.inc("rst.sent")
        self.output(route, reply, b"")

    def challenge_ack_allowed(self) -> bool:
        """Take a token from the challenge-ACK budget (RFC 5961 section 7)."""
        now = self.stack.clock.now()
        config = self.config
        tokens = min(
            float(config.challenge_ack_burst),
            self._ca_tokens + (now - self._ca_stamp) * config.challenge_ack_rate,
        )
        self._ca_stamp = now
        if tokens >= 1.0:
            self._ca_tokens = tokens - 1.0
            return True
        self._ca_tokens = tokens
        return False
