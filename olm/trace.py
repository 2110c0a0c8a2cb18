"""``olm trace``: one query followed through every layer, live, while someone asks for it.

The :class:`Tracer` costs nothing while nobody traces: it is not in any path. The first
``olm trace`` session puts it in three places, and the last one to leave takes it out again:

* a **tap** between the TUN link and what the link delivers to (the FilteredDevice, or the
  stack's NIC): it times each packet from the moment it is read, decodes its IP and UDP or TCP
  header with :mod:`netstack.header` (the checks the stack makes: checksums, fragments), and
  notes the rule the filter applies;
* the same tap on the NIC's way out, to see the reply leave for the TUN;
* an :class:`~olm.dns.observe.Observer` on the engine, so each query carries a
  :class:`~olm.dns.observe.QueryTrace` through the handlers (their verdicts) and the upstream
  group (each try: scheme, address, ID, source port, round-trip time, TC retry).

What the stack decided between the packet and the DNS frontend is read from the counter tree
(DESIGN.md rule 4, "counters are the trace"): the counters a packet moved are its verdicts.

A UDP query's trace ends when its reply is written to the TUN (or, on kernel sockets, when the
reply is ready). A TCP trace is its connection's: the handshake, the queries, the replies and
the close, ending when the connection reaches TIME-WAIT or CLOSED. A trace is shown when its
first query matches the session's filters (``name``, ``client``, ``proto``); packets before that
are held back and shown then, so the handshake is not lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from dnslib import QTYPE

from netstack.counters import Counters
from netstack.errors import ParseError
from netstack.header.ipv4 import (
    IPV4_MIN_HEADER_LEN,
    IPV4_PROTOCOL_AT,
    IPV4_SRC,
    IPv4Header,
    is_fragment,
)
from netstack.header.ipv6 import IPV6_HEADER_LEN, IPV6_NEXT_HEADER_AT, IPV6_SRC, IPv6Header
from netstack.header.numbers import IPPROTO_TCP, IPPROTO_UDP
from netstack.header.tcp import TCPHeader, flags_str, tcp_checksum_ok
from netstack.header.udp import UDP_DST_PORT_AT, UDP_HEADER_LEN, UDPHeader, udp_checksum_ok
from olm.dns.observe import Event, QueryTrace
from olm.dns.request import Request
from olm.dns.wire import RCODE_NAMES

__all__ = ["Session", "Tracer"]

_clock = time.perf_counter
#: A UDP trace whose reply never reaches the TUN (dropped, no reply) ends after this long.
_REPLY_WAIT: Final = 2.0
#: A TCP trace whose connection never closes is ended after this long without a segment.
_IDLE_TCP: Final = 15.0
#: Traces kept waiting for their first query (TCP handshakes), at most.
_MAX_PENDING: Final = 1024
_ENDED: Final = frozenset({"TIME-WAIT", "TIME_WAIT", "CLOSED"})


@dataclass
class Session:
    """One ``olm trace`` client: its filters, how many traces it wants, and its queue."""

    name: str | None = None
    client: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    proto: str | None = None
    count: int = 0  # 0: until the client leaves
    pcap: bool = False
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    shown: int = 0

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Session:
        """Make a session from a control request's arguments; ValueError names a bad one."""
        name = args.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError("name must be a string")
        client = args.get("client")
        network = None
        if client is not None:
            if not isinstance(client, str):
                raise ValueError("client must be an address or prefix")
            network = ipaddress.ip_network(client, strict=False)
        proto = args.get("proto")
        if proto not in (None, "udp", "tcp"):
            raise ValueError("proto must be udp or tcp")
        count = args.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError("count must be a non-negative integer")
        return cls(
            name=name.lower().rstrip(".") if name else None,
            client=network,
            proto=proto,
            count=count,
            pcap=bool(args.get("pcap", False)),
        )

    def matches(self, name: str, client: bytes, proto: str) -> bool:
        """Whether a query for ``name`` from ``client`` over ``proto`` is one to show."""
        if self.proto is not None and proto != self.proto:
            return False
        if self.name is not None:
            name = name.lower().rstrip(".")
            if name != self.name and not name.endswith("." + self.name):
                return False
        if self.client is not None:
            try:
                if ipaddress.ip_address(client) not in self.client:
                    return False
            except ValueError:
                return False
        return True


class _Trace:
    """One trace: a UDP query, or a TCP connection with its queries."""

    __slots__ = (
        "held",
        "ident",
        "key",
        "last",
        "packets",
        "proto",
        "query",
        "sessions",
        "state",
    )

    def __init__(self, ident: int, key: tuple[bytes, int, str], start: float) -> None:
        self.ident = ident
        self.key = key
        self.proto = key[2]
        self.query = QueryTrace(start)
        self.held: list[Event] | None = []  # events before the first query decides
        self.packets: list[tuple[float, bytes]] = []
        self.sessions: list[Session] = []
        self.state = ""
        self.last = start


class Tracer:
    """Follows packets and queries for the ``olm trace`` sessions attached.

    ``engines`` are the DNS engines to observe; ``link`` the TUN's link endpoint and
    ``dispatcher`` what it delivers to (None for ``olm serve``); ``nic`` the stack's NIC whose
    writes go out to the TUN; ``filtered`` the FilteredDevice, to name its rule.
    """

    def __init__(
        self,
        counters: Counters,
        *,
        engines: Iterable[Any] = (),
        stack: Any = None,
        link: Any = None,
        dispatcher: Any = None,
        nic: Any = None,
        filtered: Any = None,
    ) -> None:
        self.counters = counters
        self.engines = list(engines)
        self.stack = stack
        self.link = link
        self.dispatcher = dispatcher
        self.nic = nic
        self.filtered = filtered
        self.sessions: list[Session] = []
        self._traces: dict[tuple[bytes, int, str], _Trace] = {}
        self._next = 0
        self._current: tuple[_Trace, dict[str, int]] | None = None
        self._plain_link: Any = None
        self._sweeper: asyncio.TimerHandle | None = None

    # -- sessions ------------------------------------------------------------------------

    def subscribe(self, args: dict[str, Any]) -> Session:
        """Start a session (the first one puts the tracer in place)."""
        session = Session.from_args(args)
        if not self.sessions:
            self._attach()
        self.sessions.append(session)
        return session

    def unsubscribe(self, session: Session) -> None:
        """End a session (the last one takes the tracer out)."""
        if session in self.sessions:
            self.sessions.remove(session)
        for trace in self._traces.values():
            if session in trace.sessions:
                trace.sessions.remove(session)
        if not self.sessions:
            self._detach()

    @property
    def active(self) -> bool:
        """Whether anyone traces now."""
        return bool(self.sessions)

    def _attach(self) -> None:
        for engine in self.engines:
            engine.add_observer(self)
        if self.link is not None and self.dispatcher is not None:
            self.link.attach(_InTap(self, self.dispatcher))
        if self.nic is not None:
            self._plain_link = self.nic.link
            self.nic.link = _OutTap(self, self._plain_link)
        self._schedule_sweep()

    def _detach(self) -> None:
        for engine in self.engines:
            engine.remove_observer(self)
        if self.link is not None and self.dispatcher is not None:
            self.link.attach(self.dispatcher)
        if self.nic is not None and self._plain_link is not None:
            self.nic.link = self._plain_link
            self._plain_link = None
        self._traces.clear()
        self._current = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # -- packets in and out --------------------------------------------------------------

    def packet_in(self, packet: bytes, deliver: Any) -> None:
        """Follow one packet read from the TUN into the stack."""
        start = _clock()
        if self.engines:
            peeked = _peek_udp_query(packet)
            if peeked is not None and not any(s.matches(*peeked, "udp") for s in self.sessions):
                # A UDP query no session wants: step aside at the cost of reading its name.
                deliver(packet)
                return
        # The filter's decision first: it reads the packet before anything else does, and
        # stamping it after the tracer's own decode would charge that decode to the filter.
        rule = self.filtered.rule_for(packet) if self.filtered is not None else None
        ruled = _clock()
        decoded = _decode(packet)
        if decoded is None:
            deliver(packet)
            return
        client, port, proto, lines = decoded
        trace = self._trace_for((client, port, proto), start)
        if not self.engines and trace.held is not None:
            # No DNS here (olm stack): each datagram or connection is a trace of its own.
            trace.sessions = [
                s for s in self.sessions if s.name is None and s.matches("", client, proto)
            ]
            if not trace.sessions:
                self._traces.pop(trace.key, None)
                deliver(packet)
                return
            self._release(trace)
        stamp = start - trace.query.start
        self._add(trace, stamp, "tun", f"read {len(packet)} bytes{self._gso()}")
        if rule is not None:
            self._add(trace, ruled - trace.query.start, "filter", rule)
        for layer, text in lines:
            self._add(trace, _clock() - trace.query.start, layer, text)
        trace.packets.append((time.time(), packet))
        trace.last = start
        before = self._stack_counters()
        self._current = (trace, before)
        try:
            deliver(packet)
        finally:
            self._current = None
        if proto == "tcp":
            moved = _moved(before, self._stack_counters())
            self._add(trace, _clock() - trace.query.start, "stack", moved or "no counter moved")
            self._tcp_state(trace)
        elif trace.held is not None:
            # A UDP packet that made no query (not DNS, or dropped on the way): forget it.
            self._traces.pop(trace.key, None)

    def packet_out(self, packet: bytes) -> None:
        """Follow one packet the stack writes to the TUN."""
        if not self._traces:  # nothing followed: no packet out can belong to a trace
            return
        decoded = _decode(packet, outbound=True)
        if decoded is None:
            return
        client, port, proto, lines = decoded
        trace = self._traces.get((client, port, proto))
        if trace is None:
            return
        now = _clock()
        for layer, text in lines:
            self._add(trace, now - trace.query.start, layer, text)
        self._add(trace, _clock() - trace.query.start, "tun", f"write {len(packet)} bytes")
        trace.packets.append((time.time(), packet))
        trace.last = now
        if proto == "udp":
            self._end(trace)
        else:
            self._tcp_state(trace)

    def _gso(self) -> str:
        link = self.link
        inner = getattr(link, "inner", link)
        return ", vnet header (offload on)" if getattr(inner, "vnet_hdr", False) else ""

    def _stack_counters(self) -> dict[str, int]:
        stack = self.stack
        if stack is None:
            return {}
        return {
            name: value
            for name, value in stack.counters.items()
            if not name.startswith(("dns.", "control."))
        }

    def _tcp_state(self, trace: _Trace) -> None:
        """Note the connection's state change, and end the trace when it is over."""
        stack = self.stack
        if stack is None:
            return
        client, port, _ = trace.key
        state = ""
        for key, endpoint in stack.tcp.demux.connected.items():
            if key[2] == client and key[3] == port:
                state = _state_name(endpoint)
                break
        if not state:
            if not trace.state:  # a SYN the listener answered: no connection yet
                return
            state = "CLOSED"  # the connection is gone from the demultiplexer
        if state != trace.state:
            was = trace.state or "-"
            self._add(trace, _clock() - trace.query.start, "tcp", f"state {was} -> {state}")
            trace.state = state
        if state in _ENDED:
            self._end(trace)

    # -- the engine's observer -----------------------------------------------------------

    def begin(self, request: Request) -> QueryTrace | bool:
        """Take a query: give it the trace of its packet (or a new one) if it is shown."""
        key = (request.client, request.port, request.transport)
        current = self._current
        trace = self._traces.get(key)
        if trace is None:
            if not any(s.matches(request.name, request.client, key[2]) for s in self.sessions):
                return False  # shown to nobody: no trace at all
            trace = self._trace_for(key, _clock())
            self._add(
                trace,
                0.0,
                "frontend",
                f"{request.transport} from {_endpoint(request.client, request.port)} to "
                f"{_endpoint(request.local, 0).rsplit(':', 1)[0] or '*'} (kernel socket)",
            )
        if current is not None and current[0] is trace:
            moved = _moved(current[1], self._stack_counters())
            self._add(trace, _clock() - trace.query.start, "stack", moved or "no counter moved")
        if trace.held is not None:
            name = request.name
            shown = [s for s in self.sessions if s.matches(name, request.client, trace.proto)]
            if not shown:
                self._traces.pop(key, None)
                return False
            trace.sessions = shown
            self._release(trace)
        trace.query.event(
            "dns",
            f"query id {request.id} {request.name} {QTYPE[request.qtype]} over {request.transport}"
            f"{', EDNS payload ' + str(request.payload) if request.edns else ''}"
            f"{', DO' if request.do else ''}",
        )
        return trace.query

    def finished(
        self, request: Request, reply: bytes | None, elapsed: float, query: QueryTrace | None
    ) -> None:
        """Note the reply; end a UDP trace that will not see its reply leave through a TUN."""
        key = (request.client, request.port, request.transport)
        trace = self._traces.get(key)
        if trace is None or query is not trace.query:
            return
        if reply is None:
            query.event("dns", f"no reply (answered by {query.answered_by or '-'})")
        else:
            rcode = RCODE_NAMES.get(reply[3] & 0x0F, str(reply[3] & 0x0F))
            counts = int.from_bytes(reply[6:8]), int.from_bytes(reply[8:10])
            extra = int.from_bytes(reply[10:12])
            query.event(
                "dns",
                f"reply {rcode}, {counts[0]} answers, {counts[1]} authority, {extra} additional,"
                f" {len(reply)} bytes{', TC' if reply[2] & 0x02 else ''}"
                f", answered by {query.answered_by}"
                f"{' via ' + query.upstream if query.upstream else ''}"
                f" in {elapsed * 1e6:.1f} us",
            )
        if self.nic is None or (trace.proto == "udp" and reply is None):
            self._end(trace)  # no TUN to see the reply leave by: the trace ends here

    # -- traces --------------------------------------------------------------------------

    def _trace_for(self, key: tuple[bytes, int, str], start: float) -> _Trace:
        trace = self._traces.get(key)
        if trace is None:
            if len(self._traces) >= _MAX_PENDING:
                oldest = min(self._traces.values(), key=lambda t: t.last)
                self._traces.pop(oldest.key, None)
            self._next += 1
            trace = self._traces[key] = _Trace(self._next, key, start)
        return trace

    def _add(self, trace: _Trace, stamp: float, layer: str, text: str) -> None:
        event = (stamp, layer, text)
        if trace.held is not None:
            trace.held.append(event)
            return
        self._emit(trace, event)

    def _release(self, trace: _Trace) -> None:
        """Show the trace: send what was held back, then stream the rest live."""
        held = trace.held or []
        trace.held = None
        for event in held:
            self._emit(trace, event)
        trace.query.sink = lambda event: self._emit(trace, event)
        for session in trace.sessions:
            if session.pcap:
                for stamp, packet in trace.packets:
                    _put(session, _packet(trace, stamp, packet))
        trace.packets = _Shown(trace, self)

    def _emit(self, trace: _Trace, event: Event) -> None:
        stamp, layer, text = event
        item = {
            "event": {
                "trace": trace.ident,
                "us": round(stamp * 1e6, 1),
                "layer": layer,
                "text": text,
            }
        }
        for session in trace.sessions:
            _put(session, item)

    def _end(self, trace: _Trace) -> None:
        self._traces.pop(trace.key, None)
        if trace.held is not None:
            return
        self._emit(trace, (_clock() - trace.query.start, "trace", "end"))
        for session in trace.sessions:
            session.shown += 1
            if session.count and session.shown >= session.count:
                _put(session, None)

    def _schedule_sweep(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._sweeper = loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        """End traces whose reply or close never came."""
        now = _clock()
        for trace in list(self._traces.values()):
            wait = _REPLY_WAIT if trace.proto == "udp" else _IDLE_TCP
            if now - trace.last > wait:
                if trace.held is None:
                    self._emit(trace, (now - trace.query.start, "trace", "timed out"))
                self._end(trace)
        if self.sessions:
            self._schedule_sweep()


class _Shown(list[tuple[float, bytes]]):
    """The packets of a shown trace: each one appended goes at once to the pcap sessions."""

    def __init__(self, trace: _Trace, tracer: Tracer) -> None:
        super().__init__()
        self._trace = trace

    def append(self, item: tuple[float, bytes]) -> None:
        """Send the packet to the sessions that asked for pcap."""
        for session in self._trace.sessions:
            if session.pcap:
                _put(session, _packet(self._trace, item[0], item[1]))


class _InTap:
    """The tracer between the TUN link and its dispatcher."""

    __slots__ = ("_dispatcher", "_tracer")

    def __init__(self, tracer: Tracer, dispatcher: Any) -> None:
        self._tracer = tracer
        self._dispatcher = dispatcher

    def deliver_network_packet(self, packet: bytes) -> None:
        """Follow the packet in."""
        self._tracer.packet_in(packet, self._dispatcher.deliver_network_packet)


class _OutTap:
    """The tracer between the NIC and its link, on the way out."""

    __slots__ = ("_link", "_tracer")

    def __init__(self, tracer: Tracer, link: Any) -> None:
        self._tracer = tracer
        self._link = link

    @property
    def mtu(self) -> int:
        """The wrapped link's MTU."""
        mtu: int = self._link.mtu
        return mtu

    def attach(self, dispatcher: Any) -> None:
        """Attach to the wrapped link."""
        self._link.attach(dispatcher)

    def write_packets(self, packets: Iterable[bytes]) -> int:
        """Follow each packet out, then write them."""
        batch = list(packets)
        for packet in batch:
            with contextlib.suppress(Exception):  # tracing must never cost a packet
                self._tracer.packet_out(packet)
        written: int = self._link.write_packets(batch)
        return written

    def close(self) -> None:
        """Close the wrapped link."""
        self._link.close()


def _put(session: Session, item: dict[str, Any] | None) -> None:
    if session.count and session.shown > session.count:
        return
    session.queue.put_nowait(item)


def _packet(trace: _Trace, stamp: float, packet: bytes) -> dict[str, Any]:
    return {
        "packet": {
            "trace": trace.ident,
            "time": stamp,
            "data": base64.b64encode(packet).decode(),
        }
    }


def _moved(before: dict[str, int], after: dict[str, int]) -> str:
    return " ".join(
        f"{name}+{value - before.get(name, 0)}"
        for name, value in after.items()
        if value != before.get(name, 0)
    )


def _endpoint(address: bytes, port: int) -> str:
    if not address:
        return f"*:{port}"
    text = str(ipaddress.ip_address(address))
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _state_name(endpoint: Any) -> str:
    state = getattr(endpoint, "state", None)
    name = getattr(state, "name", str(state))
    return str(name).replace("_", "-")


def _peek_udp_query(packet: bytes) -> tuple[str, bytes] | None:
    """Return the question name and client address of a UDP DNS query, without parsing more.

    None for anything else, and for what this quick look does not read (IPv6 extension
    headers, labels of other than letters, digits, ``-`` and ``_``): those take the full path.
    """
    version = packet[0] >> 4 if packet else 0
    if version == 4:
        if len(packet) < IPV4_MIN_HEADER_LEN or packet[IPV4_PROTOCOL_AT] != IPPROTO_UDP:
            return None
        client = packet[IPV4_SRC]
        udp = (packet[0] & 0x0F) * 4
    elif version == 6:
        if len(packet) < IPV6_HEADER_LEN or packet[IPV6_NEXT_HEADER_AT] != IPPROTO_UDP:
            return None
        client = packet[IPV6_SRC]
        udp = IPV6_HEADER_LEN
    else:
        return None
    if int.from_bytes(packet[udp + UDP_DST_PORT_AT : udp + UDP_DST_PORT_AT + 2]) != 53:
        return None
    # RFC 1035 section 4.1.2: the question's name follows the 12-byte header, as labels.
    at = udp + UDP_HEADER_LEN + 12
    labels: list[str] = []
    while at < len(packet):
        length = packet[at]
        if length == 0:
            return ".".join(labels) + ".", client
        label = packet[at + 1 : at + 1 + length]
        plain = label.replace(b"-", b"").replace(b"_", b"")  # letters, digits, - and _ only
        if length > 63 or len(label) != length or not (plain.isalnum() or not plain):
            return None
        labels.append(label.decode())
        at += 1 + length
    return None


def _decode(
    packet: bytes, outbound: bool = False
) -> tuple[bytes, int, str, list[tuple[str, str]]] | None:
    """Decode a packet's IP and transport headers as the stack checks them.

    Return the client's address and port (the source inbound, the destination outbound), the
    transport, and one line per layer; None for a packet that is neither UDP nor TCP.
    """
    version = packet[0] >> 4 if packet else 0
    lines: list[tuple[str, str]] = []
    try:
        if version == 4:
            ip4 = IPv4Header.parse(packet)
            src, dst, proto = ip4.src, ip4.dst, ip4.protocol
            fragment = "fragment" if is_fragment(ip4) else "not fragmented"
            lines.append(
                (
                    "ipv4",
                    f"{ipaddress.ip_address(src)} -> {ipaddress.ip_address(dst)} ttl {ip4.ttl} "
                    f"id {ip4.ident} len {ip4.total_length}, header checksum ok, {fragment}"
                    f"{', DF' if ip4.dont_fragment else ''} (RFC 791 3.1)",
                )
            )
            payload = memoryview(packet)[ip4.header_length : ip4.total_length]
        elif version == 6:
            ip6 = IPv6Header.parse(packet)
            src, dst, proto = ip6.src, ip6.dst, ip6.next_header
            lines.append(
                (
                    "ipv6",
                    f"{ipaddress.ip_address(src)} -> {ipaddress.ip_address(dst)} hop limit "
                    f"{ip6.hop_limit} payload {ip6.payload_length} (RFC 8200 3)",
                )
            )
            payload = memoryview(packet)[IPV6_HEADER_LEN : IPV6_HEADER_LEN + ip6.payload_length]
        else:
            return None
        if proto == IPPROTO_UDP:
            udp = UDPHeader.parse(payload)
            ok = udp_checksum_ok(src, dst, payload)
            lines.append(
                (
                    "udp",
                    f"port {udp.src_port} -> {udp.dst_port} len {udp.length}, checksum "
                    f"{'ok' if ok else 'BAD'} (RFC 768)",
                )
            )
            client, port = (dst, udp.dst_port) if outbound else (src, udp.src_port)
            return client, port, "udp", lines
        if proto == IPPROTO_TCP:
            tcp = TCPHeader.parse(payload)
            ok = tcp_checksum_ok(src, dst, payload)
            data = len(payload) - tcp.header_length
            opts = tcp.options
            options = [
                *([f"mss {opts.mss}"] if opts.mss else []),
                *([f"wscale {opts.window_scale}"] if opts.window_scale is not None else []),
                *(["sackOK"] if opts.sack_permitted else []),
                *([f"sack {len(opts.sack_blocks)} blocks"] if opts.sack_blocks else []),
                *(["ts"] if opts.timestamp else []),
            ]
            lines.append(
                (
                    "tcp",
                    f"port {tcp.src_port} -> {tcp.dst_port} [{flags_str(tcp.flags)}] seq "
                    f"{tcp.seq} ack {tcp.ack} win {tcp.window} len {data}"
                    f"{' <' + ','.join(options) + '>' if options else ''}, checksum "
                    f"{'ok' if ok else 'BAD'} (RFC 9293 3.1)",
                )
            )
            client, port = (dst, tcp.dst_port) if outbound else (src, tcp.src_port)
            return client, port, "tcp", lines
    except ParseError:
        return None
    return None
