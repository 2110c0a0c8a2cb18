"""One TCP connection: the RFC 9293 state machine, segment dispatch, timers, ICMP and close.

The endpoint is sans-I/O: segments come in through :meth:`TCPEndpoint.segment_arrived` (called
by the protocol's demultiplexer), go out through the protocol's ``output``, and time comes from
timers on the stack's clock. The application sees a callback interface (``on_established``,
``on_data``, ``on_eof``, ``on_send_space``, ``on_close``) that the asyncio streams are built on.

The work is split by concern, each part owned by the endpoint: :class:`.Handshake` (opening),
:class:`.Receiver` (acceptability, trimming, queues, window, delayed ACK), :class:`.Sender`
(output, ACK processing, RTT and RTO, persist) with its congestion controller
(:mod:`.congestion`) and loss recovery (:mod:`.recovery`). The endpoint keeps the state
(:mod:`.state` has every transition), the RFC 9293 section 3.10.7 dispatch, the timers, ICMP and
the ways a connection ends.

Callbacks are delivered after a segment has been processed completely, never from the middle of
the state machine, so a callback may call back into the endpoint (write, close, abort).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from netstack.addresses import format_endpoint
from netstack.errors import StackError
from netstack.header.seqnum import SEQ_MASK, seq_gt, seq_leq, seq_lt, seq_sub
from netstack.header.tcp import (
    ACK,
    FIN,
    NO_OPTIONS,
    RST,
    SYN,
    URG,
    TCPHeader,
    TCPOptions,
)
from netstack.protocols import Control, Route
from netstack.transport.errors import control_error, os_error
from netstack.transport.tcp.congestion import CongestionControl
from netstack.transport.tcp.handshake import Handshake
from netstack.transport.tcp.receiver import Receiver
from netstack.transport.tcp.recovery import Phase
from netstack.transport.tcp.segment import (
    MIN_MSS,
    TIMESTAMP_OPTION_LEN,
    mss_for_mtu,
    segment_length,
)
from netstack.transport.tcp.sendbuffer import SendBuffer
from netstack.transport.tcp.sender import Sender
from netstack.transport.tcp.state import (
    OUTPUT_STATES,
    RECEIVING_STATES,
    WRITABLE_STATES,
    Event,
    State,
    next_state,
)
from netstack.transport.tcp.timers import RTTEstimator, Timer

if TYPE_CHECKING:
    from netstack.counters import Counters
    from netstack.protocols import StackServices
    from netstack.transport.tcp.config import TCPConfig

__all__ = ["State", "TCPEndpoint"]


class Ports(Protocol):
    """What a connection needs of the demultiplexer (the TCP protocol's ``Demux``)."""

    def register_connected(
        self, local: bytes, port: int, remote: bytes, remote_port: int, endpoint: TCPEndpoint
    ) -> None:
        """Receive segments for the exact 4-tuple."""

    def unregister_connected(
        self, local: bytes, port: int, remote: bytes, remote_port: int, endpoint: TCPEndpoint
    ) -> None:
        """Stop receiving segments for the 4-tuple."""

    def release(self, local: bytes, port: int) -> None:
        """Give back the local port."""


class Transport(Protocol):
    """What a connection needs of the TCP protocol (a :class:`.protocol.TCPProtocol`).

    The settings, counters and stack it shares with every connection, the demultiplexer it
    registers in, the one way out, and the budget for challenge ACKs (RFC 5961 section 7).
    """

    config: TCPConfig
    counters: Counters
    stack: StackServices

    @property
    def demux(self) -> Ports:
        """The demultiplexer."""

    def output(self, route: Route, hdr: TCPHeader, payload: bytes) -> bool:
        """Checksum and send one segment along ``route``; False if the network layer refused."""

    def challenge_ack_allowed(self) -> bool:
        """Take a token from the challenge-ACK budget."""


class Listener(Protocol):
    """What a connection needs of the listener that opened it (a :class:`.listener.TCPListener`).

    Room in the accept queue, and to be told when the connection is established, when the
    application may hear of it, and when it closes before it is accepted.
    """

    def has_room(self) -> bool:
        """Whether the accept queue can take one more connection."""

    def child_established(self, child: TCPEndpoint) -> None:
        """Queue a connection that completed its handshake for accept."""

    def announce(self) -> None:
        """Tell the application a connection is waiting."""

    def child_closed(self, child: TCPEndpoint, was: State) -> None:
        """Forget a connection that died before it was accepted."""


class TCPEndpoint:
    """A TCP connection. Create one with :meth:`TCPProtocol.connect` or accept one from a listener.

    Application interface: :meth:`send` (returns how many bytes the bounded send buffer took),
    :meth:`shutdown` (half close), :meth:`close`, :meth:`abort`, :meth:`pause_reading` and
    :meth:`resume_reading` (receive back-pressure: the advertised window shrinks while paused),
    and the callbacks:

    * ``on_established()``: the three-way handshake completed;
    * ``on_data(data)``: in-order bytes arrived (only while reading is not paused);
    * ``on_eof()``: the peer sent FIN and all its data has been delivered;
    * ``on_send_space()``: acknowledgements freed room in the send buffer;
    * ``on_close(error)``: the connection is over for the application: ``None`` after an
      orderly close, else the error (reset, refused, timed out, ICMP error). Called once.
    """

    def __init__(self, protocol: Transport, *, nodelay: bool | None = None) -> None:
        config = protocol.config
        self.protocol = protocol
        self.config = config
        self.counters = protocol.counters
        clock = protocol.stack.clock
        self.clock = clock
        self.state = State.CLOSED
        # Addresses.
        self.local_addr = b""
        self.local_port = 0
        self.remote_addr = b""
        self.remote_port = 0
        self.route: Route | None = None
        self.listener: Listener | None = None
        self.reserved = False  # holds its local port in the demultiplexer
        self.registered = False  # reachable by its 4-tuple
        # What the handshake settled (RFC 9293 3.7.1, RFC 7323, RFC 2018).
        self.peer_mss = config.default_mss
        self.ts_ok = False
        self.ts_recent = 0  # TS.Recent (RFC 7323 section 4.3)
        self.last_ack_sent = 0  # Last.ACK.sent (RFC 7323 section 4.3)
        self.sack_ok = False
        self.soft_error: Control | None = None  # an ICMP error that explains a later timeout
        # Timers.
        self.rexmit_timer = Timer(clock, self._on_rexmit_timer)
        self.delack_timer = Timer(clock, self._on_delack_timer)
        self.persist_timer = Timer(clock, self._on_persist_timer)
        self.keepalive_timer = Timer(clock, self._on_keepalive_timer)
        self.linger_timer = Timer(clock, self._on_linger_timer)  # TIME-WAIT, FIN-WAIT-2
        # The parts.
        self.handshake = Handshake(self)
        self.snd = Sender(self, protocol.stack.rng, self.rexmit_timer, self.persist_timer)
        self.rcv = Receiver(config, self.counters)
        if nodelay is not None:
            self.snd.nodelay = nodelay
        # Application side.
        self.app_closed = False
        self.reading_paused = False
        self.on_established: Callable[[], None] | None = None
        self.on_data: Callable[[bytes], None] | None = None
        self.on_eof: Callable[[], None] | None = None
        self.on_send_space: Callable[[], None] | None = None
        self.on_close: Callable[[BaseException | None], None] | None = None
        self._ev_established = False
        self._ev_eof = False
        self._eof_delivered = False
        self._ev_space = False
        self._close_pending = False
        self._close_error: BaseException | None = None
        self._close_delivered = False
        self._in_delivery = False

    def __repr__(self) -> str:
        return (
            f"<TCPEndpoint {self.local_port}->{self.remote_port} {self.state.value} "
            f"una={self.snd.una} nxt={self.snd.nxt} rcv={self.rcv.nxt}>"
        )

    # -- the variables of RFC 9293 section 3.3.1, by their RFC names --------------------------

    @property
    def iss(self) -> int:
        """ISS, our initial sequence number."""
        return self.snd.iss

    @property
    def irs(self) -> int:
        """IRS, the peer's initial sequence number."""
        return self.rcv.irs

    @property
    def snd_una(self) -> int:
        """SND.UNA: the oldest unacknowledged sequence number."""
        return self.snd.una

    @property
    def snd_nxt(self) -> int:
        """SND.NXT: the next new sequence number to send."""
        return self.snd.nxt

    @property
    def snd_wnd(self) -> int:
        """SND.WND: the peer's window, scaled."""
        return self.snd.wnd

    @property
    def rcv_nxt(self) -> int:
        """RCV.NXT: the next sequence number expected from the peer."""
        return self.rcv.nxt

    @property
    def rcv_adv(self) -> int:
        """The right edge of the window we advertised (RCV.NXT + RCV.WND at the last ACK)."""
        return self.rcv.adv

    @property
    def rcv_wscale(self) -> int:
        """Our window shift (RFC 7323 section 2.3)."""
        return self.rcv.wscale

    @property
    def mss(self) -> int:
        """Payload bytes per segment we send."""
        return self.snd.mss

    @property
    def cc(self) -> CongestionControl:
        """The congestion controller (``TCPConfig.congestion``)."""
        return self.snd.cc

    @property
    def rtt(self) -> RTTEstimator:
        """SRTT, RTTVAR and RTO (RFC 6298)."""
        return self.snd.rtt

    @property
    def sndbuf(self) -> SendBuffer:
        """Bytes queued from SND.UNA on, sent or not."""
        return self.snd.buf

    @property
    def fin_queued(self) -> bool:
        """The application shut down its sending side."""
        return self.snd.fin_queued

    @property
    def nodelay(self) -> bool:
        """Whether the Nagle algorithm is off (RFC 9293 section 3.7.4)."""
        return self.snd.nodelay

    @nodelay.setter
    def nodelay(self, value: bool) -> None:
        self.snd.nodelay = value

    # -- opening (the handshake does the work) -------------------------------------------------

    def _bind(self, route: Route, local_port: int, remote_port: int) -> None:
        self.route = route
        self.local_addr = route.local
        self.remote_addr = route.remote
        self.local_port = local_port
        self.remote_port = remote_port

    def open_active(self, route: Route, local_port: int, remote_port: int, iss: int) -> None:
        """Send a SYN and enter SYN-SENT (RFC 9293 section 3.10.1, active OPEN)."""
        self._bind(route, local_port, remote_port)
        self.handshake.open_active(iss)

    def open_passive(self, listener: Listener, route: Route, hdr: TCPHeader, iss: int) -> None:
        """Answer a listener's SYN with a SYN-ACK and enter SYN-RECEIVED (section 3.10.7.2)."""
        self._bind(route, hdr.dst_port, hdr.src_port)
        self.listener = listener
        self.handshake.open_passive(hdr, iss)

    def open_from_cookie(self, listener: Listener, route: Route, hdr: TCPHeader, mss: int) -> None:
        """Enter SYN-RECEIVED from a valid SYN cookie ACK (RFC 4987 section 3.6)."""
        self._bind(route, hdr.dst_port, hdr.src_port)
        self.listener = listener
        self.handshake.open_from_cookie(hdr, mss)

    def register(self) -> None:
        """Become reachable by the 4-tuple in the protocol's demultiplexer."""
        self.protocol.demux.register_connected(
            self.local_addr, self.local_port, self.remote_addr, self.remote_port, self
        )
        self.registered = True

    def move(self, event: Event) -> None:
        """Take the state transition ``event`` (see :data:`.state.TRANSITIONS`)."""
        self.state = next_state(self.state, event)

    # -- application interface ---------------------------------------------------------------

    @property
    def send_space(self) -> int:
        """Bytes :meth:`send` would take now."""
        if self.state not in WRITABLE_STATES or self.snd.fin_queued:
            return 0
        return self.snd.buf.space

    @property
    def unsent(self) -> int:
        """Bytes queued and not yet sent."""
        return self.snd.unsent

    @property
    def in_flight(self) -> int:
        """Sequence space sent and not yet acknowledged."""
        return seq_sub(self.snd.nxt, self.snd.una)

    @property
    def readable(self) -> int:
        """Bytes received in order and not yet delivered (held while reading is paused)."""
        return self.rcv.queued

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue data for sending; return how many bytes the send buffer took (maybe 0).

        Raises BrokenPipeError after :meth:`shutdown` or when the connection is over.
        """
        snd = self.snd
        if self.state not in WRITABLE_STATES or snd.fin_queued:
            raise os_error(errno.EPIPE)
        n = snd.buf.append(data)
        if n and self.state in OUTPUT_STATES:
            snd.output()
            self._flush_ack()
        return n

    def shutdown(self) -> None:
        """Close the sending side: a FIN follows the queued data (RFC 9293 section 3.10.4)."""
        state = self.state
        if self.snd.fin_queued or state not in WRITABLE_STATES:
            return
        if state is State.SYN_SENT:
            self.destroy(None)
            self._deliver()
            return
        self.snd.fin_queued = True
        if state is State.ESTABLISHED or state is State.CLOSE_WAIT:
            self.move(Event.CLOSE)
        # In SYN-RECEIVED the FIN waits for the handshake (RFC 9293 section 3.10.4).
        if self.state in OUTPUT_STATES:
            self.snd.output()
            self._flush_ack()

    def close(self) -> None:
        """Close both directions; the connection finishes in the background.

        Unread received data, or data arriving after this call, make the endpoint abort with a
        RST instead (RFC 1122 section 4.2.2.13).
        """
        if self.app_closed or self.state is State.CLOSED:
            self.app_closed = True
            return
        self.app_closed = True
        self.on_data = None
        if self.rcv.queued:
            self.counters.inc("close_with_unread_data")
            self.abort()
            return
        if self.state in (State.SYN_SENT, State.LISTEN):
            self.destroy(None)
            self._deliver()
            return
        self.shutdown()
        if self.state is State.FIN_WAIT_2:
            self._enter_orphan_fin_wait_2()
        self._deliver()

    def abort(self) -> None:
        """Reset the connection: send RST and forget it (RFC 9293 section 3.10.5)."""
        if self.state is State.CLOSED:
            return
        if self.state not in (State.SYN_SENT, State.TIME_WAIT):
            self.emit(self.snd.nxt, RST)
            self.counters.inc("rst.sent")
        self.counters.inc("aborts")
        self.rcv.queue.clear()
        self.rcv.queued = 0
        self.destroy(None)
        self._deliver()

    def pause_reading(self) -> None:
        """Stop calling ``on_data``; received data queues and the advertised window shrinks."""
        self.reading_paused = True

    def resume_reading(self) -> None:
        """Deliver queued data and resume; send a window update if the window reopened."""
        self.reading_paused = False
        if self.state is State.CLOSED:
            return
        rcv = self.rcv
        was_closed_window = seq_sub(rcv.adv, rcv.nxt) < rcv.mss
        self._deliver()
        if self._alive() and was_closed_window and rcv.queued == 0:
            # RFC 9293 section 3.8.6.2.2: tell the peer the window opened again.
            self.counters.inc("window_updates")
            self.send_ack()

    def _alive(self) -> bool:
        return self.state is not State.CLOSED

    def receive_queued(self) -> bytes:
        """Take every byte held while reading was paused (for pull-style users)."""
        data = self.rcv.take_all()
        if self.state is not State.CLOSED and data:
            self.send_ack()
        return data

    # -- segment arrives (RFC 9293 section 3.10.7) ------------------------------------------------

    def segment_arrived(self, hdr: TCPHeader, data: memoryview) -> None:
        """Process one inbound segment for this connection (already checksummed)."""
        state = self.state
        if state is State.SYN_SENT:
            self.handshake.syn_sent(hdr, data)  # section 3.10.7.3
        elif state is not State.CLOSED:
            self._synchronized(hdr, data)  # section 3.10.7.4
        state = self.state
        if state is not State.CLOSED:
            if state in OUTPUT_STATES:
                self.snd.output()
            self._flush_ack()
            if self.config.keepalive and state is State.ESTABLISHED:
                self.snd.probes = 0
                self.keepalive_timer.start(self.config.keepalive_idle)
        self._deliver()

    def _synchronized(self, hdr: TCPHeader, data: memoryview) -> None:
        """RFC 9293 section 3.10.7.4: SYN-RECEIVED and every synchronized state, in its order."""
        c = self.counters
        rcv = self.rcv
        state = self.state
        flags = hdr.flags
        seq = hdr.seq
        syn = flags & SYN
        if state is State.SYN_RECEIVED and syn and not flags & ACK and seq == rcv.irs:
            c.inc("syn_retransmits_received")
            self.handshake.send_syn()  # the peer missed our SYN-ACK
            return
        ts = hdr.options.timestamp if self.ts_ok else None
        # RFC 7323 section 5.3 (PAWS): an older timestamp marks an old duplicate.
        if ts is not None and not flags & RST and seq_lt(ts[0], self.ts_recent):
            c.inc("segments.paws_rejected")
            self.send_ack()
            return
        # First: the acceptability test.
        dlen = len(data)
        if not rcv.acceptable(seq, segment_length(flags, dlen)):
            if seq == rcv.nxt and rcv.window == 0 and not syn:
                # RFC 9293 3.10.7.4: with a zero window, still process ACK and RST.
                c.inc("segments.zero_window_data")
                data = data[:0]
                flags &= ~FIN
                dlen = 0
            else:
                if flags & RST:
                    c.inc("rst.out_of_window")
                    return
                c.inc("segments.out_of_window")
                if state is State.TIME_WAIT and flags & FIN:
                    # The peer resent its FIN: acknowledge it and restart 2 MSL.
                    self.linger_timer.start(2 * self.config.msl)
                self.send_ack()
                return
        # Second: RST (RFC 5961 section 3.2: only an exact match resets).
        if flags & RST:
            if seq != rcv.nxt:
                c.inc("rst.challenged")
                self._challenge_ack()
                return
            c.inc("rst.received")
            if state is State.SYN_RECEIVED:
                # A passive open returns to LISTEN; an active one was refused.
                self.destroy(None if self.handshake.passive else os_error(errno.ECONNREFUSED))
            elif state in (State.CLOSING, State.LAST_ACK, State.TIME_WAIT):
                self.destroy(None)
            else:
                self.destroy(os_error(errno.ECONNRESET))
            return
        # Fourth: SYN (RFC 5961 section 4.2, RFC 9293 3.10.7.4).
        if syn:
            if state is State.SYN_RECEIVED and self.handshake.passive:
                c.inc("syn_in_syn_received")
                self.destroy(None)
                return
            c.inc("syn.challenged")
            self._challenge_ack()
            return
        # Trim the segment to the window ("first", last paragraph).
        fin = bool(flags & FIN)
        if seq != rcv.nxt or dlen > rcv.window:
            seq, data, fin = rcv.trim(seq, data, fin)
            dlen = len(data)
        # Fifth: ACK.
        if not flags & ACK:
            c.inc("segments.no_ack")
            return
        if state is State.SYN_RECEIVED:
            snd = self.snd
            if not (seq_lt(snd.una, hdr.ack) and seq_leq(hdr.ack, snd.nxt)):
                c.inc("segments.bad_ack")
                self.reply_rst(hdr.ack)
                return
            listener = self.listener
            if listener is not None and not listener.has_room():
                # Leave the half-open connection; our SYN-ACK retransmission retries it.
                c.inc("listen.accept_queue_full")
                return
            self.handshake.ack_of_syn(hdr)
            self.move(Event.RCV_ACK_OF_SYN)
            self.established()
            if snd.fin_queued:
                self.move(Event.CLOSE)
        elif not self._ack(hdr, dlen > 0 or fin):
            return
        if ts is not None and seq_leq(hdr.seq, self.last_ack_sent):
            self.ts_recent = ts[0]  # RFC 7323 section 4.3
        state = self.state
        # Sixth: URG is not supported (RFC 6093 section 6 discourages new uses); counted.
        if flags & URG:
            c.inc("segments.urgent_ignored")
        # Seventh: segment text.
        if dlen:
            if state in RECEIVING_STATES:
                if self.app_closed:
                    # RFC 1122 section 4.2.2.13: data after close() resets the connection.
                    c.inc("data_after_close")
                    self.abort()
                    return
                if rcv.receive(seq, bytes(data)):
                    self._take_fin()  # the FIN that arrived early is now in order
            else:
                c.inc("segments.data_after_fin")
        # Eighth: FIN.
        if fin and state is not State.CLOSED:
            fin_seq = (seq + dlen) & SEQ_MASK
            if rcv.peer_fin is None and not rcv.fin_received:
                rcv.peer_fin = fin_seq
            if fin_seq == rcv.nxt or rcv.fin_received:
                self._take_fin()
            else:
                rcv.ack_now = True

    def _ack(self, hdr: TCPHeader, has_text: bool) -> bool:
        """RFC 9293 section 3.10.7.4, "fifth", in synchronized states; False to stop processing."""
        c = self.counters
        snd = self.snd
        ack = hdr.ack
        if seq_gt(ack, snd.nxt):
            c.inc("segments.ack_unsent")
            self.send_ack()
            return False
        if seq_lt(ack, (snd.una - snd.max_wnd) & SEQ_MASK):
            # RFC 5961 section 5.2: an ACK too far in the past is dropped with an ACK.
            c.inc("segments.ack_too_old")
            self._challenge_ack()
            return False
        if snd.on_ack(hdr, has_text):
            self._ev_space = True
        fin_seq = snd.fin_seq
        if fin_seq is not None and seq_gt(snd.una, fin_seq):
            # Our FIN is acknowledged.
            state = self.state
            if state is State.FIN_WAIT_1:
                self.move(Event.RCV_ACK_OF_FIN)
                if self.app_closed:
                    self._enter_orphan_fin_wait_2()
            elif state is State.CLOSING:
                self._enter_time_wait()
            elif state is State.LAST_ACK:
                self.destroy(None)  # LAST-ACK -> CLOSED
                return False
        return True

    def _take_fin(self) -> None:
        """RFC 9293 3.10.7.4, "eighth": the peer's FIN is in order."""
        rcv = self.rcv
        rcv.ack_now = True
        if rcv.fin_received:
            if self.state is State.TIME_WAIT:
                self.linger_timer.start(2 * self.config.msl)
            return
        rcv.take_fin()
        self._ev_eof = True
        self.counters.inc("fins_received")
        if self.state is State.FIN_WAIT_2:
            self._enter_time_wait()
        elif self.state in (State.SYN_RECEIVED, State.ESTABLISHED, State.FIN_WAIT_1):
            # FIN-WAIT-1 to CLOSING is a simultaneous close (RFC 9293 section 3.6, figure 13):
            # our FIN is not acknowledged yet, or we would be in FIN-WAIT-2.
            self.move(Event.RCV_FIN)

    # -- output ------------------------------------------------------------------------------

    def emit(
        self, seq: int, flags: int, payload: bytes = b"", options: TCPOptions | None = None
    ) -> None:
        """Build one segment (ACK, window, timestamps, SACK blocks) and send it."""
        rcv = self.rcv
        ack = 0
        window = 0
        if flags & ACK:
            ack = rcv.nxt
            window = rcv.window_field(bool(flags & SYN))
            self.last_ack_sent = ack
            rcv.unacked = 0
            rcv.ack_now = rcv.ack_later = False
            self.delack_timer.stop()
        elif flags & SYN:
            window = min(self.config.receive_buffer, 0xFFFF)  # RFC 7323 2.2: never scaled
        if options is None:
            ooo = rcv.ooo
            blocks: tuple[tuple[int, int], ...] = ()
            if self.sack_ok and len(ooo):
                # RFC 6691: options come out of the MSS; a full segment leaves no room for SACK.
                room = self.snd.mss - len(payload) - 4
                nblocks = min(max(room // 8, 0), 3 if self.ts_ok else 4)
                if nblocks:
                    blocks = ooo.sack_blocks(rcv.nxt, nblocks)
            if self.ts_ok:
                options = TCPOptions(
                    timestamp=(self.snd.ts_now(), self.ts_recent), sack_blocks=blocks
                )
            elif blocks:
                options = TCPOptions(sack_blocks=blocks)
            else:
                options = NO_OPTIONS
        hdr = TCPHeader(self.local_port, self.remote_port, seq, ack, flags, window, 0, options)
        route = self.route
        assert route is not None
        self.protocol.output(route, hdr, payload)

    def send_ack(self) -> None:
        """Send a bare ACK at SND.NXT."""
        if self.state is State.CLOSED or self.route is None:
            return
        self.emit(self.snd.nxt, ACK)

    def _challenge_ack(self) -> None:
        """Answer a suspicious RST, SYN or ACK with an ACK (RFC 5961 sections 3-5), rate limited."""
        if self.protocol.challenge_ack_allowed():
            self.counters.inc("challenge_acks")
            self.send_ack()
        else:
            self.counters.inc("challenge_acks_suppressed")

    def reply_rst(self, seq: int) -> None:
        """Answer an unacceptable ACK with <SEQ=SEG.ACK><CTL=RST> (RFC 9293 3.10.7.3-4)."""
        self.counters.inc("rst.sent")
        hdr = TCPHeader(self.local_port, self.remote_port, seq, 0, RST, 0)
        assert self.route is not None
        self.protocol.output(self.route, hdr, b"")

    def _flush_ack(self) -> None:
        """Send the ACK the last segment called for, now or after the delayed-ACK timer."""
        if self.state is State.CLOSED:
            return
        rcv = self.rcv
        if rcv.ack_now:
            self.send_ack()
        elif rcv.ack_later:
            self.delack_timer.start_if_stopped(self.config.delayed_ack)

    # -- timers ------------------------------------------------------------------------------

    def _on_rexmit_timer(self) -> None:
        """Retransmission timeout (RFC 6298 section 5): SYN, SYN-ACK or data."""
        state = self.state
        if state is State.SYN_SENT or state is State.SYN_RECEIVED:
            if not self.handshake.on_timeout():
                self._fail(errno.ETIMEDOUT)
            return
        snd = self.snd
        if snd.una == snd.nxt or state not in OUTPUT_STATES:
            return
        snd.retries += 1
        if snd.retries > self.config.max_retries:
            self.counters.inc("retransmit_limit")
            self._fail(errno.ETIMEDOUT)
            return
        snd.on_timeout()
        self._deliver()

    def _on_delack_timer(self) -> None:
        rcv = self.rcv
        if self.state is not State.CLOSED and (rcv.ack_later or rcv.ack_now):
            self.counters.inc("delayed_acks")
            self.send_ack()

    def _on_persist_timer(self) -> None:
        """Zero-window probe (RFC 9293 section 3.8.6.1), or push past a too-small window."""
        if self.state in OUTPUT_STATES and not self.snd.on_persist():
            self._fail(errno.ETIMEDOUT)

    def _on_keepalive_timer(self) -> None:
        """Keep-alive probe on an idle connection (RFC 9293 section 3.8.4, RFC 1122 4.2.3.6)."""
        if self.state is not State.ESTABLISHED:
            return
        config = self.config
        snd = self.snd
        if snd.probes >= config.keepalive_count:
            self.counters.inc("keepalive_timeouts")
            self._fail(errno.ETIMEDOUT)
            return
        snd.probes += 1
        self.counters.inc("keepalives")
        self.emit((snd.una - 1) & SEQ_MASK, ACK)
        self.keepalive_timer.start(config.keepalive_interval)

    def _on_linger_timer(self) -> None:
        if self.state is State.TIME_WAIT:
            self.counters.inc("time_wait_done")
            self.destroy(None)  # TIME-WAIT -> CLOSED after 2 MSL
        elif self.state is State.FIN_WAIT_2:
            self.counters.inc("fin_wait_2_timeouts")
            self.destroy(None)
        self._deliver()

    # -- ICMP ---------------------------------------------------------------------------------

    def icmp_error(self, control: Control, seq: int, mtu: int) -> None:
        """Act on an ICMP error quoting one of our segments (RFC 5927, RFC 1122 4.2.3.9)."""
        c = self.counters
        if not (seq_leq(self.snd.una, seq) and seq_lt(seq, self.snd.nxt)):
            c.inc("icmp.out_of_window")  # RFC 5927 section 4.1: not in flight, so forged
            return
        if control is Control.PACKET_TOO_BIG:
            self._path_mtu_changed()
            return
        if self.state is State.SYN_SENT:
            c.inc("icmp.hard_errors")
            self.destroy(control_error(control))
            self._deliver()
            return
        c.inc("icmp.soft_errors")
        self.soft_error = control

    def _path_mtu_changed(self) -> None:
        """Lower the MSS to the new path MTU and resend what was in flight (RFC 8201, 1191)."""
        c = self.counters
        try:
            route = self.protocol.stack.find_route(self.remote_addr, self.local_addr)
        except StackError:
            c.inc("icmp.pmtu_no_route")
            return
        self.route = route
        mss = mss_for_mtu(route.mtu, len(self.remote_addr))
        if self.ts_ok:
            mss -= TIMESTAMP_OPTION_LEN
        mss = max(min(mss, self.peer_mss), MIN_MSS)
        if mss >= self.snd.mss:
            c.inc("icmp.pmtu_ignored")
            return
        c.inc("icmp.pmtu_reductions")
        self.snd.path_mtu_changed(mss, resend=self.state in OUTPUT_STATES)

    # -- endings ------------------------------------------------------------------------------

    def established(self) -> None:
        """Note the completed handshake: tell the listener, and the application later."""
        self.counters.inc("established")
        self._ev_established = True
        if self.listener is not None:
            self.listener.child_established(self)  # queued; announced by _deliver
        if self.config.keepalive:
            self.keepalive_timer.start(self.config.keepalive_idle)

    def _enter_orphan_fin_wait_2(self) -> None:
        """Bound the wait for the peer's FIN once the application closed and our FIN is acked."""
        self.linger_timer.start(self.config.fin_wait2_timeout)
        self._notify_close(None)

    def _enter_time_wait(self) -> None:
        """TIME-WAIT for 2 MSL (RFC 9293 section 3.6.1)."""
        self.move(Event.RCV_FIN if self.state is State.FIN_WAIT_2 else Event.RCV_ACK_OF_FIN)
        self.counters.inc("time_waits")
        for timer in (self.rexmit_timer, self.persist_timer, self.keepalive_timer):
            timer.stop()
        self.linger_timer.start(2 * self.config.msl)
        self._notify_close(None)

    def _fail(self, code: int) -> None:
        """End the connection with an error; a stored ICMP soft error explains a timeout."""
        if code == errno.ETIMEDOUT and self.soft_error is not None:
            exc: BaseException = control_error(self.soft_error)
        else:
            exc = os_error(code)
        if self.state not in (State.SYN_SENT, State.SYN_RECEIVED, State.CLOSED):
            self.emit(self.snd.nxt, RST)
            self.counters.inc("rst.sent")
        self.destroy(exc)
        self._deliver()

    def destroy(self, exc: BaseException | None) -> None:
        """Enter CLOSED: stop the timers, leave the demultiplexer, free the port."""
        if self.state is State.CLOSED and not self.registered:
            self._notify_close(exc)
            return
        was = self.state
        self.state = State.CLOSED
        for timer in (
            self.rexmit_timer,
            self.delack_timer,
            self.persist_timer,
            self.keepalive_timer,
            self.linger_timer,
        ):
            timer.stop()
        demux = self.protocol.demux
        if self.registered:
            demux.unregister_connected(
                self.local_addr, self.local_port, self.remote_addr, self.remote_port, self
            )
            self.registered = False
        if self.reserved:
            demux.release(self.local_addr, self.local_port)
            self.reserved = False
        self.snd.buf.clear()
        self.rcv.ooo.clear()
        if self.listener is not None:
            self.listener.child_closed(self, was)
        self._notify_close(exc)

    def _notify_close(self, exc: BaseException | None) -> None:
        if not self._close_pending and not self._close_delivered:
            self._close_pending = True
            self._close_error = exc

    def _deliver(self) -> None:
        """Run the application callbacks the last events call for, in order."""
        if self._in_delivery:
            return
        self._in_delivery = True
        try:
            self._deliver_events()
        finally:
            self._in_delivery = False

    def _deliver_events(self) -> None:
        if self._ev_established and not self._close_delivered:
            self._ev_established = False
            if self.listener is not None:
                self.listener.announce()
            if self.on_established is not None:
                self.on_established()
        rcv = self.rcv
        queue = rcv.queue
        while (
            queue
            and not self.reading_paused
            and self.on_data is not None
            and not self._close_delivered
        ):
            if len(queue) == 1:
                chunk = queue.popleft()
                rcv.queued -= len(chunk)
            else:
                chunk = rcv.take_all()
            self.on_data(chunk)
        if (
            self._ev_eof
            and not queue
            and not self._eof_delivered
            and self.on_eof is not None
            and not self.reading_paused
        ):
            self._ev_eof = False
            self._eof_delivered = True
            self.on_eof()
        if self._ev_space and not self._close_pending:
            self._ev_space = False
            if self.on_send_space is not None and self.send_space:
                self.on_send_space()
        if self._close_pending and not self._close_delivered:
            if queue and self._close_error is None and self.on_data is not None:
                return  # deliver the remaining data first (reading is paused)
            self._close_pending = False
            self._close_delivered = True
            if self.on_close is not None:
                self.on_close(self._close_error)

    # -- introspection -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Describe the connection as ``ss -tinie`` / Linux ``tcp_info`` would: plain values.

        Sizes are bytes, times milliseconds on the stack's clock, sequence numbers raw 32-bit.
        ``bytes_sent``, ``bytes_acked`` and ``bytes_received`` are derived from the sequence
        numbers (so modulo 2**32, without SYN and FIN, retransmissions not counted again);
        ``in_flight`` is sequence space, where an unacknowledged SYN or FIN counts one.
        ``cwnd_segments`` is ``cwnd // mss``; ``ssthresh`` stays at its initial "arbitrarily
        high" value (RFC 5681 section 3.1) until the first loss. ``congestion`` names the
        congestion control (``TCPConfig.congestion``), ``loss_recovery`` the recovery
        (``sack`` when both ends agreed on SACK, else ``reno``). ``retries`` is the number of
        retransmission timeouts since the last forward progress (Linux's
        ``tcpi_retransmits``); no per-connection total of retransmissions is kept.
        ``ooo_ranges`` counts disjoint ranges held for reassembly, not segments.
        """
        state = self.state
        snd = self.snd
        rcv = self.rcv
        iss = snd.iss
        fin_seq = snd.fin_seq
        syn_acked = snd.una != iss  # SND.UNA only leaves ISS when our SYN is acked
        fin_acked = fin_seq is not None and seq_gt(snd.una, fin_seq)
        acked = (snd.una - iss - 1 - int(fin_acked)) & SEQ_MASK
        sent = (snd.nxt - iss - 1 - int(fin_seq is not None)) & SEQ_MASK
        syn_seen = rcv.nxt != rcv.irs  # RCV.NXT is IRS + 1 once the peer's SYN is in
        received = (rcv.nxt - rcv.irs - 1 - int(rcv.fin_received)) & SEQ_MASK
        rtt = snd.rtt
        cc = snd.cc
        recovery = snd.recovery
        now = self.clock.now()
        timers: dict[str, float] = {}
        for name, timer in (
            ("rto", self.rexmit_timer),  # RFC 6298 retransmission (SYN, SYN-ACK or data)
            ("delayed_ack", self.delack_timer),
            ("persist", self.persist_timer),
            ("keepalive", self.keepalive_timer),
            ("time_wait" if state is State.TIME_WAIT else "fin_wait_2", self.linger_timer),
        ):
            deadline = timer.deadline
            if deadline is not None:
                timers[name] = max(deadline - now, 0.0) * 1000
        sack = self.sack_ok
        return {
            "proto": "tcp",
            # RFC 9293 section 3.3.2 names, SYN-RECEIVED shortened as ss prints it.
            "state": "SYN-RECV" if state is State.SYN_RECEIVED else state.value,
            "local": format_endpoint(self.local_addr, self.local_port),
            "peer": format_endpoint(self.remote_addr, self.remote_port),
            "recv_q": rcv.queued,
            "send_q": len(snd.buf),
            "mss": snd.mss,
            "advmss": rcv.mss,
            "peer_mss": self.peer_mss,
            # RFC 7323 section 2: [peer's shift applied to its windows, our shift].
            "wscale": [snd.wscale, rcv.wscale] if self.handshake.ws_ok else None,
            "sack": sack,
            "timestamps": self.ts_ok,
            "snd_wnd": snd.wnd,
            "rcv_wnd": rcv.window,
            "cwnd": cc.cwnd,
            "cwnd_segments": cc.cwnd // snd.mss,
            "ssthresh": cc.ssthresh,
            "congestion": cc.name,
            "loss_recovery": recovery.name,
            # RFC 6298 section 2: no SRTT or RTTVAR before the first measurement.
            "srtt_ms": rtt.srtt * 1000 if rtt.srtt is not None else None,
            "rttvar_ms": rtt.rttvar * 1000 if rtt.srtt is not None else None,
            "rto_ms": rtt.rto * 1000,
            "iss": iss,
            "irs": rcv.irs,
            "snd_una": snd.una,
            "snd_nxt": snd.nxt,
            "rcv_nxt": rcv.nxt,
            "in_flight": seq_sub(snd.nxt, snd.una),
            "unsent": snd.unsent,
            "bytes_sent": sent,
            "bytes_acked": acked if syn_acked else 0,
            "bytes_received": received if syn_seen else 0,
            "retries": snd.retries,
            "in_recovery": recovery.phase is not Phase.NONE,
            "recovery": recovery.phase.name.lower(),
            "sack_blocks": len(recovery.sack_ranges()) if sack else None,
            "sacked_bytes": recovery.sacked_bytes if sack else None,
            "ooo_ranges": len(rcv.ooo),
            "ooo_bytes": rcv.ooo.bytes,
            "timers": timers,
        }
