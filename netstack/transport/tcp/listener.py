"""Passive opens: a listening endpoint with a bounded backlog and SYN cookies.

RFC 9293 section 3.10.7.2 (LISTEN state), RFC 4987 section 3.6 (SYN cookies), RFC 5961
(RSTs are never answered). Half-open connections are real endpoints in SYN-RECEIVED registered
under their 4-tuple, so the listener itself only sees first SYNs, cookie ACKs and strays.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from netstack.addresses import format_endpoint
from netstack.errors import StackError
from netstack.header.seqnum import seq_add
from netstack.header.tcp import ACK, FIN, RST, SYN, TCPHeader, TCPOptions
from netstack.ports import unspecified
from netstack.protocols import Route
from netstack.transport.tcp.endpoint import Ports, State, TCPEndpoint, Transport
from netstack.transport.tcp.segment import mss_for_mtu

if TYPE_CHECKING:
    from netstack.transport.tcp.isn import ISNFunction, SynCookies


class ListenerPorts(Ports, Protocol):
    """What a listener needs of the demultiplexer: what its connections need, and to leave."""

    def unregister_bound(self, local: bytes, port: int, endpoint: TCPListener) -> None:
        """Stop receiving segments for (local, port)."""


class ListenerTransport(Transport, Protocol):
    """What a listener needs of the TCP protocol (a :class:`.protocol.TCPProtocol`).

    What its connections need (it creates them), and the ISNs, SYN cookies and resets it
    answers SYNs and strays with.
    """

    isn: ISNFunction
    cookies: SynCookies

    @property
    def demux(self) -> ListenerPorts:
        """The demultiplexer."""

    def reply_rst(self, hdr: TCPHeader, data_len: int, local: bytes, remote: bytes) -> None:
        """Answer a stray segment with a RST."""


_COOKIE_WINDOW = 192.0
"""Seconds after the last cookie was sent during which ACKs are checked as cookies."""


class TCPListener:
    """A socket in LISTEN: turns SYNs into connections and queues them for :meth:`accept`.

    At most ``backlog`` connections wait half-open and at most ``backlog`` wait to be accepted.
    Beyond that a SYN is answered with a SYN cookie (when enabled) or dropped; both counted
    (``listen.backlog_full``, ``syn_cookies.sent``, ``listen.syn_dropped``).
    ``on_connection()`` is called whenever a connection joins the accept queue.
    """

    def __init__(
        self,
        protocol: ListenerTransport,
        addr: bytes,
        port: int,
        backlog: int,
        on_connection: Callable[[], None] | None = None,
    ) -> None:
        self.protocol = protocol
        self.counters = protocol.counters
        self.local_addr = addr
        self.local_port = port
        self.backlog = max(backlog, 1)
        self.on_connection = on_connection
        self.state = State.LISTEN
        self.half_open: dict[TCPEndpoint, None] = {}
        self.accept_queue: deque[TCPEndpoint] = deque()
        self._cookies_sent_at: float | None = None

    def __repr__(self) -> str:
        return f"<TCPListener :{self.local_port} {self.state.value}>"

    # -- application interface ---------------------------------------------------------------

    def accept(self) -> TCPEndpoint | None:
        """Take the oldest established connection, or None when none is waiting."""
        while self.accept_queue:
            ep = self.accept_queue.popleft()
            ep.listener = None
            if ep.state is not State.CLOSED:
                return ep
        return None

    def close(self) -> None:
        """Stop listening; reset every connection not yet accepted."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        demux = self.protocol.demux
        demux.unregister_bound(self.local_addr, self.local_port, self)
        demux.release(self.local_addr, self.local_port)
        children = list(self.half_open) + list(self.accept_queue)
        self.half_open.clear()
        self.accept_queue.clear()
        for child in children:
            child.listener = None
            child.abort()

    # -- children ----------------------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether the accept queue can take one more connection."""
        return len(self.accept_queue) < self.backlog

    def child_established(self, child: TCPEndpoint) -> None:
        """Move a connection that completed its handshake to the accept queue."""
        self.half_open.pop(child, None)
        self.accept_queue.append(child)
        self.counters.inc("listen.accepted")

    def announce(self) -> None:
        """Tell the application a connection is waiting (called outside segment processing)."""
        if self.on_connection is not None and self.accept_queue:
            self.on_connection()

    def child_closed(self, child: TCPEndpoint, was: State) -> None:
        """Forget a connection that died before it was accepted."""
        if child in self.half_open:
            del self.half_open[child]
            self.counters.inc("listen.half_open_dropped")
        elif child in self.accept_queue:
            self.accept_queue.remove(child)
            self.counters.inc("listen.unaccepted_dropped")

    # -- segments (RFC 9293 section 3.10.7.2) --------------------------------------------------

    def segment_arrived(
        self, hdr: TCPHeader, data: memoryview, local: bytes, remote: bytes
    ) -> None:
        """Process a segment addressed to the listening port and no connection."""
        c = self.counters
        protocol = self.protocol
        flags = hdr.flags
        if flags & RST:
            c.inc("listen.rst_ignored")  # "An incoming RST should be ignored"
            return
        if flags & ACK:
            if not flags & SYN and self._cookie_ack(hdr, data, local, remote):
                return
            # "Any acknowledgment is bad if it arrives on a connection still in the LISTEN
            # state. An acceptable reset segment should be formed for any arriving ACK-bearing
            # segment."
            c.inc("listen.bad_ack")
            protocol.reply_rst(hdr, len(data), local, remote)
            return
        if not flags & SYN:
            c.inc("listen.dropped")
            return
        if flags & FIN:
            # SYN+FIN is never sent by a real stack, only by scanners fingerprinting us. RFC 9293
            # would process the SYN and queue the FIN; like Linux we drop it and hold no state.
            c.inc("listen.syn_fin_dropped")
            return
        try:
            route = protocol.stack.find_route(remote, local)
        except StackError:
            c.inc("listen.no_route")
            return
        if len(self.half_open) >= self.backlog or len(self.accept_queue) >= self.backlog:
            c.inc("listen.backlog_full")
            if protocol.config.syn_cookies:
                self._send_cookie(hdr, route, local, remote)
            else:
                c.inc("listen.syn_dropped")
            return
        child = TCPEndpoint(protocol)
        iss = protocol.isn(local, hdr.dst_port, remote, hdr.src_port)
        child.open_passive(self, route, hdr, iss)
        self.half_open[child] = None
        if len(data):
            c.inc("segments.syn_data_ignored")

    def _send_cookie(self, hdr: TCPHeader, route: Route, local: bytes, remote: bytes) -> None:
        """Answer a SYN statelessly: the SYN-ACK's sequence number is the cookie."""
        protocol = self.protocol
        our_mss = mss_for_mtu(route.mtu, len(remote))
        config = protocol.config
        default = config.default_mss if len(remote) == 4 else config.default_mss_v6
        peer_mss = hdr.options.mss if hdr.options.mss is not None else default
        cookie, _ = protocol.cookies.make(
            local, hdr.dst_port, remote, hdr.src_port, hdr.seq, min(peer_mss, our_mss)
        )
        reply = TCPHeader(
            hdr.dst_port,
            hdr.src_port,
            cookie,
            seq_add(hdr.seq, 1),
            SYN | ACK,
            min(config.receive_buffer, 0xFFFF),
            0,
            TCPOptions(mss=our_mss),
        )
        protocol.output(route, reply, b"")
        self._cookies_sent_at = protocol.stack.clock.now()
        self.counters.inc("syn_cookies.sent")

    def _cookie_ack(self, hdr: TCPHeader, data: memoryview, local: bytes, remote: bytes) -> bool:
        """Complete a connection from the ACK of a SYN cookie; False if it is not one."""
        protocol = self.protocol
        sent_at = self._cookies_sent_at
        if sent_at is None or protocol.stack.clock.now() - sent_at > _COOKIE_WINDOW:
            return False
        mss = protocol.cookies.check(
            local,
            hdr.dst_port,
            remote,
            hdr.src_port,
            seq_add(hdr.seq, -1),
            seq_add(hdr.ack, -1),
        )
        c = self.counters
        if mss is None:
            c.inc("syn_cookies.invalid")
            return False
        if not self.has_room():
            c.inc("listen.accept_queue_full")
            return True  # drop: the peer's data or next ACK retries
        try:
            route = protocol.stack.find_route(remote, local)
        except StackError:
            c.inc("listen.no_route")
            return True
        c.inc("syn_cookies.accepted")
        child = TCPEndpoint(protocol)
        child.open_from_cookie(self, route, hdr, mss)
        self.half_open[child] = None
        child.segment_arrived(hdr, data)
        return True

    def is_wildcard(self) -> bool:
        """Whether the listener takes connections to every local address of its family."""
        return self.local_addr == unspecified(len(self.local_addr))

    def info(self) -> dict[str, Any]:
        """Describe the listener as ``ss -tln`` would.

        As in ``ss``, ``recv_q`` is the accept queue's length and ``send_q`` the backlog;
        ``half_open`` counts connections still in SYN-RECEIVED (each also listed on its own).
        """
        return {
            "proto": "tcp",
            "state": self.state.value,
            "local": format_endpoint(self.local_addr, self.local_port),
            "peer": "*:*",
            "recv_q": len(self.accept_queue),
            "send_q": self.backlog,
            "backlog": self.backlog,
            "half_open": len(self.half_open),
        }
