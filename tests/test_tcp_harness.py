"""A deterministic two-stack harness for TCP tests, and tests of the harness itself.

Two stacks share one ManualClock and are joined by a Wire; stack A's link may be wrapped in a
FaultEndpoint. ``Pair.run`` alternates pumping the wire and advancing the clock to the next
timer, so a whole conversation (with losses and timeouts) runs in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netstack.clock import ManualClock
from netstack.link.channel import ChannelEndpoint, Wire
from netstack.link.fault import FaultEndpoint
from netstack.stack import Stack, parse_address
from netstack.transport.tcp import State, TCPConfig, TCPEndpoint, TCPListener, TCPProtocol

A4, B4 = "10.0.0.1", "10.0.0.2"
A6, B6 = "fd00::1", "fd00::2"


def make_host(clock: ManualClock, v4: str, v6: str, link: Any, seed: int) -> Stack:
    """A stack with one NIC on ``link``, both families, default routes (no TCP yet)."""
    st = Stack(clock, seed=seed)
    st.create_nic("eth0", link)
    st.add_address("eth0", f"{v4}/24")
    st.add_address("eth0", f"{v6}/64")
    st.add_route("0.0.0.0/0", "eth0")
    st.add_route("::/0", "eth0")
    return st


def add_tcp(stack: Stack, config: TCPConfig | None = None) -> TCPProtocol:
    """Replace the stack's TCP protocol with one using ``config``."""
    tcp = TCPProtocol(stack, config)
    stack.tcp = tcp
    stack.register_transport(tcp)
    return tcp


@dataclass
class Recorder:
    """Collects what an endpoint's callbacks report."""

    data: bytearray = field(default_factory=bytearray)
    eof: bool = False
    closed: bool = False
    error: BaseException | None = None
    established: bool = False

    def attach(self, ep: TCPEndpoint) -> TCPEndpoint:
        ep.on_data = self.data.extend
        ep.on_eof = self._eof
        ep.on_close = self._close
        ep.on_established = self._established
        return ep

    def _eof(self) -> None:
        assert not self.eof, "EOF reported twice"
        self.eof = True

    def _close(self, exc: BaseException | None) -> None:
        assert not self.closed, "close reported twice"
        self.closed = True
        self.error = exc

    def _established(self) -> None:
        self.established = True


class Pair:
    """Stacks A and B joined by a wire, each with TCP; A's link optionally faulty."""

    def __init__(
        self,
        *,
        config_a: TCPConfig | None = None,
        config_b: TCPConfig | None = None,
        mtu: int = 1500,
        fault: dict[str, Any] | None = None,
        seed: int = 1,
    ) -> None:
        self.clock = ManualClock()
        self.link_a = ChannelEndpoint(mtu=mtu)
        self.link_b = ChannelEndpoint(mtu=mtu)
        self.wire = Wire(self.link_a, self.link_b)
        outer: Any = self.link_a
        self.fault: FaultEndpoint | None = None
        if fault:
            self.fault = FaultEndpoint(self.link_a, self.clock, seed=seed, **fault)
            outer = self.fault
        self.a = make_host(self.clock, A4, A6, outer, seed)
        self.b = make_host(self.clock, B4, B6, self.link_b, seed + 1000)
        self.tcp_a = add_tcp(self.a, config_a)
        self.tcp_b = add_tcp(self.b, config_b)

    def run(self, until: Callable[[], bool] | None = None, limit: float = 36000.0) -> bool:
        """Pump and advance time until ``until()`` holds or nothing is left to do.

        Returns whether ``until`` held (True when it is None and the run went idle).
        """
        clock = self.clock
        end = clock.now() + limit
        for _ in range(1_000_000):
            self.wire.pump()
            if until is not None and until():
                return True
            deadline = clock.next_deadline()
            if deadline is None or deadline > end:
                return until is None
            clock.advance_to(deadline)
        raise AssertionError("simulation did not settle")

    def listen(self, port: int = 80, backlog: int = 16, v6: bool = False) -> TCPListener:
        return self.tcp_b.listen(parse_address(B6 if v6 else B4), port, backlog)

    def connect(self, port: int = 80, v6: bool = False, **kw: Any) -> TCPEndpoint:
        return self.tcp_a.connect(parse_address(B6 if v6 else B4), port, **kw)

    def established_pair(
        self, port: int = 80, v6: bool = False, **kw: Any
    ) -> tuple[TCPEndpoint, TCPEndpoint, Recorder, Recorder]:
        """Connect A to a listener on B and return (client, server, their recorders)."""
        listener = self.listen(port, v6=v6)
        rec_a, rec_b = Recorder(), Recorder()
        client = rec_a.attach(self.connect(port, v6=v6, **kw))
        accepted: list[TCPEndpoint] = []

        def on_connection() -> None:
            ep = listener.accept()
            assert ep is not None
            accepted.append(rec_b.attach(ep))

        listener.on_connection = on_connection
        assert self.run(lambda: bool(accepted) and client.state is State.ESTABLISHED)
        listener.close()
        return client, accepted[0], rec_a, rec_b

    def idle(self) -> bool:
        """True when no connection, listener or timer is left on either side."""
        return len(self.tcp_a.demux) == 0 and len(self.tcp_b.demux) == 0 and self.clock.pending == 0


def test_pair_connects_and_exchanges_both_ways() -> None:
    """RFC 9293 section 3.5: three-way handshake, then data both ways, then orderly close."""
    pair = Pair()
    client, server, rec_a, rec_b = pair.established_pair()
    assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED
    client.send(b"hello")
    server.send(b"world")
    assert pair.run(lambda: rec_a.data == b"world" and rec_b.data == b"hello")
    client.close()
    server.close()
    assert pair.run()
    assert rec_a.closed and rec_b.closed and rec_a.error is None and rec_b.error is None
    assert pair.idle()
