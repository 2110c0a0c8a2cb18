"""One TCP connection: the RFC 9293 state machine with its send and receive machinery.

The endpoint is sans-I/O: segments come in through :meth:`TCPEndpoint.segment_arrived` (called
by the protocol's demultiplexer), go out through the protocol's ``output``, and time comes from
timers on the stack's clock. The application sees a callback interface (``on_established``,
``on_data``, ``on_eof``, ``on_send_space``, ``on_close``) that the asyncio streams are built on.

Callbacks are delivered after a segment has been processed completely, never from the middle of
the state machine, so a callback may call back into the endpoint (write, close, abort).
"""

from __future__ import annotations

import enum
import errno
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from netstack.addresses import format_endpoint
from netstack.errors import StackError
from netstack.header.seqnum import (
    SEQ_MASK,
    seq_add,
    seq_geq,
    seq_gt,
    seq_leq,
    seq_lt,
    seq_max,
    seq_min,
    seq_sub,
)
from netstack.header.tcp import (
    ACK,
    FIN,
    MAX_WINDOW_SCALE,
    NO_OPTIONS,
    PSH,
    RST,
    SYN,
    URG,
    TCPHeader,
    TCPOptions,
)
from netstack.protocols import Control, Route
from netstack.transport.tcp.congestion import NewReno
from netstack.transport.tcp.receiver import Reassembly
from netstack.transport.tcp.sack import Scoreboard
from netstack.transport.tcp.segment import (
    MIN_MSS,
    TIMESTAMP_OPTION_LEN,
    mss_for_mtu,
    segment_length,
)
from netstack.transport.tcp.sender import SendBuffer
from netstack.transport.tcp.timers import RTTEstimator, Timer

if TYPE_CHECKING:
    from netstack.transport.tcp.listener import TCPListener
    from netstack.transport.tcp.protocol import TCPProtocol


class State(enum.Enum):
    """Connection states of RFC 9293 section 3.3.2."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


_S = State
# States that may still send data or a FIN (RFC 9293 section 3.10.2).
_OUTPUT_STATES: Final = frozenset(
    (_S.ESTABLISHED, _S.CLOSE_WAIT, _S.FIN_WAIT_1, _S.CLOSING, _S.LAST_ACK)
)
# States in which segment text is accepted (RFC 9293 section 3.10.7.4, "seventh").
_RECEIVING: Final = frozenset((_S.ESTABLISHED, _S.FIN_WAIT_1, _S.FIN_WAIT_2))
# States in which the application may queue data.
_WRITABLE: Final = frozenset((_S.SYN_SENT, _S.SYN_RECEIVED, _S.ESTABLISHED, _S.CLOSE_WAIT))


class _Recovery(enum.Enum):
    NONE = 0
    FAST = 1  # fast retransmit / fast recovery (RFC 5681 3.2, RFC 6582, RFC 6675)
    TIMEOUT = 2  # after a retransmission timeout (RFC 6298 section 5, RFC 5681 3.1)


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))  # OSError picks the subclass from errno


_CONTROL_ERRNO: Final = {
    Control.NET_UNREACHABLE: errno.ENETUNREACH,
    Control.HOST_UNREACHABLE: errno.EHOSTUNREACH,
    Control.PROTOCOL_UNREACHABLE: errno.ECONNREFUSED,
    Control.PORT_UNREACHABLE: errno.ECONNREFUSED,
    Control.ADMIN_PROHIBITED: errno.EHOSTUNREACH,
    Control.TIME_EXCEEDED: errno.EHOSTUNREACH,
    Control.PARAMETER_PROBLEM: errno.EPROTO,
    Control.PACKET_TOO_BIG: errno.EMSGSIZE,
}


def control_error(control: Control) -> OSError:
    """Return the OSError a connection reports for an ICMP error (e.g. ECONNREFUSED)."""
    return _os_error(_CONTROL_ERRNO[control])


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

    def __init__(self, protocol: TCPProtocol, *, nodelay: bool | None = None) -> None:
        config = protocol.config
        self.protocol = protocol
        self.config = config
        self.counters = protocol.counters
        clock = protocol.stack.clock
        self._clock = clock
        self.state = State.CLOSED
        self.nodelay = config.nodelay if nodelay is None else nodelay
        # Addresses.
        self.local_addr = b""
        self.local_port = 0
        self.remote_addr = b""
        self.remote_port = 0
        self.route: Route | None = None
        self.listener: TCPListener | None = None
        self._reserved = False
        self._registered = False
        self._passive = False
        # Send sequence space (RFC 9293 section 3.3.1). SND.NXT never moves back: segments
        # resent by recovery are tracked by _rexmit_nxt instead.
        self.iss = 0
        self.snd_una = 0
        self.snd_nxt = 0
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.sndbuf = SendBuffer(0, config.send_buffer)
        self.fin_queued = False  # the application shut down its sending side
        self.fin_seq: int | None = None  # sequence number of our FIN once sent
        # Receive sequence space.
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0  # right edge of the window we advertised (never moved left)
        self.rcv_wscale = 0
        self._rcvq: deque[bytes] = deque()
        self._rcvq_len = 0
        self._ooo = Reassembly(config.reassembly_limit, config.reassembly_segments)
        self._peer_fin: int | None = None  # sequence number of the peer's FIN, if seen
        self.fin_received = False
        self._rcv_unacked = 0  # bytes received since the last ACK we sent
        self._ack_now = False
        self._ack_later = False
        # Options (RFC 9293 3.7.1, RFC 7323, RFC 2018).
        self.mss = config.default_mss  # payload bytes per segment we send (after options)
        self.peer_mss = config.default_mss
        self.rcv_mss = config.default_mss  # the MSS we advertised
        self._offer_ws = 0
        self._ws_ok = False
        self._syn_rtt_ok = True
        self.ts_ok = False
        self.ts_recent = 0
        self._ts_offset = protocol.stack.rng.getrandbits(32)  # RFC 7323 section 5.4
        self._last_ack_sent = 0
        self.sack_ok = False
        self.scoreboard = Scoreboard()
        # Retransmission and congestion (RFC 6298, RFC 5681, RFC 6582, RFC 6675).
        self.rtt = RTTEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self.cc = NewReno(self.mss, config.initial_window_segments)
        self.retries = 0
        self._rtt_seq: int | None = None  # timing this sequence number (no timestamps)
        self._rtt_time = 0.0
        self._recovery = _Recovery.NONE
        self._recovery_point = 0
        self._recover = 0  # RFC 6582 "recover": highest seq sent at the last timeout
        self._rexmit_nxt = 0
        self._loss_end = 0
        self._dupacks = 0
        self._dupack_credit = 0
        self._persist_backoff = config.persist_min
        self._probes = 0
        self.soft_error: Control | None = None
        # Timers.
        self._rexmit_timer = Timer(clock, self._on_rexmit_timer)
        self._delack_timer = Timer(clock, self._on_delack_timer)
        self._persist_timer = Timer(clock, self._on_persist_timer)
        self._keepalive_timer = Timer(clock, self._on_keepalive_timer)
        self._linger_timer = Timer(clock, self._on_linger_timer)  # TIME-WAIT, FIN-WAIT-2
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
            f"una={self.snd_una} nxt={self.snd_nxt} rcv={self.rcv_nxt}>"
        )

    # -- opening -----------------------------------------------------------------------------

    def _setup(self, route: Route, local_port: int, remote_port: int, iss: int) -> None:
        self.route = route
        self.local_addr = route.local
        self.remote_addr = route.remote
        self.local_port = local_port
        self.remote_port = remote_port
        family = len(route.remote)
        self.rcv_mss = mss_for_mtu(route.mtu, family)
        default = self.config.default_mss if family == 4 else self.config.default_mss_v6
        self.peer_mss = default
        self.mss = min(default, self.rcv_mss)
        self.cc = NewReno(self.mss, self.config.initial_window_segments)
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = seq_add(iss, 1)
        self._recover = iss
        self.scoreboard.reset(iss)
        self.sndbuf = SendBuffer(seq_add(iss, 1), self.config.send_buffer)
        ws = 0
        while ws < MAX_WINDOW_SCALE and (0xFFFF << ws) < self.config.receive_buffer:
            ws += 1
        self._offer_ws = ws

    def _register(self) -> None:
        self.protocol.demux.register_connected(
            self.local_addr, self.local_port, self.remote_addr, self.remote_port, self
        )
        self._registered = True

    def open_active(self, route: Route, local_port: int, remote_port: int, iss: int) -> None:
        """Send a SYN and enter SYN-SENT (RFC 9293 section 3.10.1, active OPEN)."""
        self._setup(route, local_port, remote_port, iss)
        self._reserved = True
        self._register()
        self.state = State.SYN_SENT
        self.counters.inc("active_opens")
        self._send_syn()
        self._rexmit_timer.start(self.rtt.rto)

    def open_passive(self, listener: TCPListener, route: Route, hdr: TCPHeader, iss: int) -> None:
        """Answer a listener's SYN with a SYN-ACK and enter SYN-RECEIVED (section 3.10.7.2)."""
        self._setup(route, hdr.dst_port, hdr.src_port, iss)
        self.listener = listener
        self._passive = True
        self._take_syn(hdr)
        self._register()
        self.state = State.SYN_RECEIVED
        self.counters.inc("passive_opens")
        self._send_syn()
        self._rexmit_timer.start(self.rtt.rto)

    def open_from_cookie(
        self, listener: TCPListener, route: Route, hdr: TCPHeader, mss: int
    ) -> None:
        """Enter ESTABLISHED from a valid SYN cookie ACK (RFC 4987 section 3.6).

        The cookie carries only the MSS: the connection runs without window scaling, SACK and
        timestamps, which our SYN-ACK did not offer.
        """
        iss = seq_add(hdr.ack, -1)
        self._setup(route, hdr.dst_port, hdr.src_port, iss)
        self.listener = listener
        self._passive = True
        self.irs = seq_add(hdr.seq, -1)
        self.rcv_nxt = hdr.seq
        self.rcv_adv = seq_add(hdr.seq, min(self.config.receive_buffer, 0xFFFF))
        self._set_peer_mss(mss)
        self._syn_rtt_ok = False  # the SYN-ACK left no state, so no send time either
        self._register()
        self.state = State.SYN_RECEIVED
        self.counters.inc("passive_opens")

    def _take_syn(self, hdr: TCPHeader) -> None:
        """Record the peer's SYN: IRS and the options it offered (RFC 9293 3.7.1, RFC 7323)."""
        opts = hdr.options
        config = self.config
        self.irs = hdr.seq
        self.rcv_nxt = seq_add(hdr.seq, 1)
        self.rcv_adv = seq_add(self.rcv_nxt, min(config.receive_buffer, 0xFFFF))
        if opts.window_scale is not None and config.window_scale:
            # RFC 7323 section 2.3: a shift above 14 is used as 14.
            self._ws_ok = True
            self.snd_wscale = min(opts.window_scale, MAX_WINDOW_SCALE)
            self.rcv_wscale = self._offer_ws
        else:
            self._ws_ok = False
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = opts.sack_permitted and config.sack
        if opts.timestamp is not None and config.timestamps:
            self.ts_ok = True
            self.ts_recent = opts.timestamp[0]
        else:
            self.ts_ok = False
        self._set_peer_mss(opts.mss if opts.mss is not None else self.peer_mss)

    def _set_peer_mss(self, peer_mss: int) -> None:
        self.peer_mss = peer_mss
        mss = min(peer_mss, self.rcv_mss)
        if self.ts_ok:
            mss -= TIMESTAMP_OPTION_LEN
        self.mss = max(mss, MIN_MSS)
        self.cc = NewReno(self.mss, self.config.initial_window_segments)

    # -- application interface ---------------------------------------------------------------

    @property
    def send_space(self) -> int:
        """Bytes :meth:`send` would take now."""
        if self.state not in _WRITABLE or self.fin_queued:
            return 0
        return self.sndbuf.space

    @property
    def unsent(self) -> int:
        """Bytes queued and not yet sent."""
        return max(seq_sub(self.sndbuf.end, self.snd_nxt), 0) if self.fin_seq is None else 0

    @property
    def in_flight(self) -> int:
        """Sequence space sent and not yet acknowledged."""
        return seq_sub(self.snd_nxt, self.snd_una)

    @property
    def readable(self) -> int:
        """Bytes received in order and not yet delivered (held while reading is paused)."""
        return self._rcvq_len

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue data for sending; return how many bytes the send buffer took (maybe 0).

        Raises BrokenPipeError after :meth:`shutdown` or when the connection is over.
        """
        if self.state not in _WRITABLE or self.fin_queued:
            raise _os_error(errno.EPIPE)
        n = self.sndbuf.append(data)
        if n and self.state in _OUTPUT_STATES:
            self._output()
            self._flush_ack()
        return n

    def shutdown(self) -> None:
        """Close the sending side: a FIN follows the queued data (RFC 9293 section 3.10.4)."""
        state = self.state
        if self.fin_queued or state not in _WRITABLE:
            return
        if state is State.SYN_SENT:
            self._destroy(None)
            self._deliver()
            return
        self.fin_queued = True
        if state is State.ESTABLISHED:
            self.state = State.FIN_WAIT_1
        elif state is State.CLOSE_WAIT:
            self.state = State.LAST_ACK
        # In SYN-RECEIVED the FIN waits for the handshake (RFC 9293 section 3.10.4).
        if self.state in _OUTPUT_STATES:
            self._output()
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
        if self._rcvq_len:
            self.counters.inc("close_with_unread_data")
            self.abort()
            return
        if self.state in (State.SYN_SENT, State.LISTEN):
            self._destroy(None)
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
            self._emit(self.snd_nxt, RST)
            self.counters.inc("rst.sent")
        self.counters.inc("aborts")
        self._rcvq.clear()
        self._rcvq_len = 0
        self._destroy(None)
        self._deliver()

    def pause_reading(self) -> None:
        """Stop calling ``on_data``; received data queues and the advertised window shrinks."""
        self.reading_paused = True

    def resume_reading(self) -> None:
        """Deliver queued data and resume; send a window update if the window reopened."""
        self.reading_paused = False
        if self.state is State.CLOSED:
            return
        was_closed_window = seq_sub(self.rcv_adv, self.rcv_nxt) < self.rcv_mss
        self._deliver()
        if self._alive() and was_closed_window and self._rcvq_len == 0:
            # RFC 9293 section 3.8.6.2.2: tell the peer the window opened again.
            self.counters.inc("window_updates")
            self._send_ack()

    def _alive(self) -> bool:
        return self.state is not State.CLOSED

    # -- segment processing (RFC 9293 section 3.10.7) ----------------------------------------

    def segment_arrived(self, hdr: TCPHeader, data: memoryview) -> None:
        """Process one inbound segment for this connection (already checksummed)."""
        if self.state is State.SYN_SENT:
            self._syn_sent(hdr, data)
        elif self.state is not State.CLOSED:
            self._synchronized(hdr, data)
        if self.state is not State.CLOSED:
            self._output()
            self._flush_ack()
            if self.config.keepalive and self.state is State.ESTABLISHED:
                self._probes = 0
                self._keepalive_timer.start(self.config.keepalive_idle)
        self._deliver()

    def _syn_sent(self, hdr: TCPHeader, data: memoryview) -> None:
        """RFC 9293 section 3.10.7.3, SYN-SENT STATE."""
        c = self.counters
        flags = hdr.flags
        # "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset (unless the RST bit is set)".
        if flags & ACK and (seq_leq(hdr.ack, self.iss) or seq_gt(hdr.ack, self.snd_nxt)):
            c.inc("segments.bad_ack")
            if not flags & RST:
                self._reply_rst(hdr.ack)
            return
        if flags & RST:
            if flags & ACK:  # RFC 5961 section 3.2: acceptable only with an acceptable ACK
                c.inc("rst.received")
                self._destroy(_os_error(errno.ECONNREFUSED))
            else:
                c.inc("rst.ignored")
            return
        if not flags & SYN:
            c.inc("segments.dropped_syn_sent")
            return
        self._take_syn(hdr)
        if len(data):
            c.inc("segments.syn_data_ignored")  # not acknowledged, so the peer resends it
        if flags & ACK:
            self._ack_syn(hdr)
            self.state = State.ESTABLISHED
            self._established()
            self._ack_now = True
        else:
            # Simultaneous open (RFC 9293 section 3.5, figure 8).
            c.inc("simultaneous_opens")
            self.state = State.SYN_RECEIVED
            self._send_syn()
            self._rexmit_timer.start(self.rtt.rto)

    def _ack_syn(self, hdr: TCPHeader) -> None:
        """Take the ACK of our SYN: SND.UNA, the first window and an RTT sample."""
        if self.ts_ok and hdr.options.timestamp is not None and hdr.options.timestamp[1]:
            self._ts_sample(hdr.options.timestamp[1])
        elif self._syn_rtt_ok:
            self.rtt.sample(self._clock.now() - self._rtt_time)
        self.snd_una = hdr.ack
        self.scoreboard.reset(hdr.ack)
        self.retries = 0
        self._rexmit_timer.stop()
        # RFC 7323 section 2.2: the window in a SYN segment is never scaled.
        window = hdr.window if hdr.flags & SYN else hdr.window << self.snd_wscale
        self.snd_wnd = self.max_snd_wnd = window
        self.snd_wl1 = hdr.seq
        self.snd_wl2 = hdr.ack
        self._set_peer_mss(self.peer_mss)

    def _synchronized(self, hdr: TCPHeader, data: memoryview) -> None:
        """RFC 9293 section 3.10.7.4: SYN-RECEIVED and every synchronized state."""
        c = self.counters
        state = self.state
        flags = hdr.flags
        seq = hdr.seq
        syn = flags & SYN
        if state is State.SYN_RECEIVED and syn and not flags & ACK and seq == self.irs:
            c.inc("syn_retransmits_received")
            self._send_syn()  # the peer missed our SYN-ACK
            return
        opts = hdr.options
        ts = opts.timestamp if self.ts_ok else None
        # RFC 7323 section 5.3 (PAWS): an older timestamp marks an old duplicate.
        if ts is not None and not flags & RST and seq_lt(ts[0], self.ts_recent):
            c.inc("segments.paws_rejected")
            self._send_ack()
            return
        # First: the acceptability test.
        dlen = len(data)
        seglen = segment_length(flags, dlen)
        wnd = max(seq_sub(self.rcv_adv, self.rcv_nxt), 0)
        rcv_nxt = self.rcv_nxt
        if seglen == 0:
            ok = seq == rcv_nxt if wnd == 0 else seq_sub(seq, rcv_nxt) in range(wnd)
        elif wnd == 0:
            ok = False
        else:
            ok = seq_sub(seq, rcv_nxt) in range(wnd) or (
                seq_sub(seq_add(seq, seglen - 1), rcv_nxt) in range(wnd)
            )
        if not ok:
            if wnd == 0 and seq == rcv_nxt and not syn:
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
                    self._linger_timer.start(2 * self.config.msl)
                self._send_ack()
                return
        # Second: RST (RFC 5961 section 3.2: only an exact match resets).
        if flags & RST:
            if seq != rcv_nxt:
                c.inc("rst.challenged")
                self._challenge_ack()
                return
            c.inc("rst.received")
            if state is State.SYN_RECEIVED:
                # A passive open returns to LISTEN; an active one was refused.
                self._destroy(None if self._passive else _os_error(errno.ECONNREFUSED))
            elif state in (State.CLOSING, State.LAST_ACK, State.TIME_WAIT):
                self._destroy(None)
            else:
                self._destroy(_os_error(errno.ECONNRESET))
            return
        # Fourth: SYN (RFC 5961 section 4.2, RFC 9293 3.10.7.4).
        if syn:
            if state is State.SYN_RECEIVED and self._passive:
                c.inc("syn_in_syn_received")
                self._destroy(None)
                return
            c.inc("syn.challenged")
            self._challenge_ack()
            return
        # Trim the segment to the window (RFC 9293 3.10.7.4, "first", last paragraph).
        fin = bool(flags & FIN)
        front = seq_sub(rcv_nxt, seq)
        if front > 0:
            data = data[front:]
            seq = rcv_nxt
            dlen = len(data)
        room = seq_sub(seq_add(rcv_nxt, wnd), seq)
        if dlen > room:
            data = data[: max(room, 0)]
            dlen = len(data)
            fin = False
            c.inc("segments.trimmed")
        # Fifth: ACK.
        if not flags & ACK:
            c.inc("segments.no_ack")
            return
        if state is State.SYN_RECEIVED:
            if not (seq_lt(self.snd_una, hdr.ack) and seq_leq(hdr.ack, self.snd_nxt)):
                c.inc("segments.bad_ack")
                self._reply_rst(hdr.ack)
                return
            listener = self.listener
            if listener is not None and not listener.has_room():
                # Leave the half-open connection; our SYN-ACK retransmission retries it.
                c.inc("listen.accept_queue_full")
                return
            self._ack_syn(hdr)
            self.state = State.ESTABLISHED
            self._established()
            if self.fin_queued:
                self.state = State.FIN_WAIT_1
        elif not self._process_ack(hdr, dlen > 0 or fin):
            return
        if ts is not None and seq_leq(hdr.seq, self._last_ack_sent):
            self.ts_recent = ts[0]  # RFC 7323 section 4.3
        state = self.state
        # Sixth: URG is not supported (RFC 6093 section 6 discourages new uses); counted.
        if flags & URG:
            c.inc("segments.urgent_ignored")
        # Seventh: segment text.
        if dlen:
            if state in _RECEIVING:
                if self.app_closed:
                    # RFC 1122 section 4.2.2.13: data after close() resets the connection.
                    c.inc("data_after_close")
                    self.abort()
                    return
                self._receive_data(seq, bytes(data))
            else:
                c.inc("segments.data_after_fin")
        # Eighth: FIN.
        if fin and state is not State.CLOSED:
            fin_seq = seq_add(seq, dlen)
            if self._peer_fin is None and not self.fin_received:
                self._peer_fin = fin_seq
            if fin_seq == self.rcv_nxt or self.fin_received:
                self._take_fin()
            else:
                self._ack_now = True

    def _process_ack(self, hdr: TCPHeader, has_text: bool) -> bool:
        """RFC 9293 section 3.10.7.4, "fifth", in synchronized states; False to stop processing."""
        c = self.counters
        ack = hdr.ack
        if seq_gt(ack, self.snd_nxt):
            c.inc("segments.ack_unsent")
            self._send_ack()
            return False
        if seq_lt(ack, seq_add(self.snd_una, -self.max_snd_wnd)):
            # RFC 5961 section 5.2: an ACK too far in the past is dropped with an ACK.
            c.inc("segments.ack_too_old")
            self._challenge_ack()
            return False
        old_wnd = self.snd_wnd
        if seq_leq(self.snd_una, ack) and (
            seq_lt(self.snd_wl1, hdr.seq)
            or (self.snd_wl1 == hdr.seq and seq_leq(self.snd_wl2, ack))
        ):
            self.snd_wnd = hdr.window << self.snd_wscale
            self.snd_wl1 = hdr.seq
            self.snd_wl2 = ack
            if self.snd_wnd > self.max_snd_wnd:
                self.max_snd_wnd = self.snd_wnd
        newly_sacked = 0
        blocks = hdr.options.sack_blocks
        if blocks and self.sack_ok:
            newly_sacked = self.scoreboard.update(blocks, self.snd_nxt)
            if self._recovery is _Recovery.FAST:
                highest = self.scoreboard.highest
                if highest is not None:
                    self._loss_end = seq_max(self._loss_end, highest)
        self._probes = 0
        if seq_gt(ack, self.snd_una):
            self._ack_advanced(hdr, ack)
        elif (
            ack == self.snd_una
            and not has_text
            and self.snd_wnd == old_wnd
            and self.snd_nxt != self.snd_una
        ):
            self._duplicate_ack(newly_sacked)
        if self.snd_wnd and self._persist_timer.armed:
            self._persist_timer.stop()
            self._persist_backoff = self.config.persist_min
        if self.snd_wnd == 0 and self.snd_una == self.snd_nxt and self.unsent:
            self._persist_timer.start_if_stopped(self._persist_backoff)
        fin_seq = self.fin_seq
        if fin_seq is not None and seq_gt(self.snd_una, fin_seq):
            state = self.state
            if state is State.FIN_WAIT_1:
                self.state = State.FIN_WAIT_2
                if self.app_closed:
                    self._enter_orphan_fin_wait_2()
            elif state is State.CLOSING:
                self._enter_time_wait()
            elif state is State.LAST_ACK:
                self._destroy(None)
                return False
        return True

    def _ack_advanced(self, hdr: TCPHeader, ack: int) -> None:
        """Take an ACK of new data: RTT, buffer, congestion window, recovery and timers."""
        acked = seq_sub(ack, self.snd_una)
        ts = hdr.options.timestamp
        if self.ts_ok and ts is not None and ts[1]:
            self._ts_sample(ts[1])  # RFC 7323 section 4.1
        elif self._rtt_seq is not None and seq_geq(ack, self._rtt_seq):
            self.rtt.sample(self._clock.now() - self._rtt_time)
            self._rtt_seq = None
        if self.sndbuf.ack(ack):
            self._ev_space = True
        self.snd_una = ack
        self.retries = 0
        self.scoreboard.advance(ack)
        if seq_geq(ack, self._recover):
            self._recover = ack  # RFC 6582: past the timed-out window
        mss = self.mss
        recovery = self._recovery
        if recovery is not _Recovery.NONE:
            if seq_geq(ack, self._recovery_point):
                if recovery is _Recovery.FAST:
                    self.cc.on_recovery_exit(self.in_flight, mss)
                self._recovery = _Recovery.NONE
                self.counters.inc("recoveries")
            else:
                # A partial ACK (RFC 6582 section 3.2 step 4): the next hole is lost too.
                self._rexmit_nxt = seq_max(self._rexmit_nxt, ack)
                if recovery is _Recovery.TIMEOUT:
                    self.cc.on_ack(acked, mss)
                else:
                    if not self.sack_ok:
                        self._loss_end = seq_max(
                            self._loss_end, seq_min(seq_add(ack, mss), self.snd_nxt)
                        )
                        self._dupack_credit = 0
                        self._retransmit_hole(force=True)
        else:
            self.cc.on_ack(acked, mss)
        self._dupacks = 0
        if self.snd_una == self.snd_nxt:
            self._rexmit_timer.stop()
        else:
            self._rexmit_timer.start(self.rtt.rto)  # RFC 6298 section 5.3

    def _duplicate_ack(self, newly_sacked: int) -> None:
        """Count a duplicate ACK (RFC 5681 section 2) and start fast retransmit on the third."""
        self._dupacks += 1
        self.counters.inc("dupacks")
        mss = self.mss
        if self._recovery is _Recovery.NONE:
            if seq_lt(self.snd_una, self._recover):
                return  # RFC 6582 section 3.2 step 2: still inside a timed-out window
            lost = self._dupacks >= 3 or (
                self.sack_ok and self.scoreboard.sacked_bytes > 2 * mss  # RFC 6675 IsLost
            )
            if lost:
                self._enter_fast_recovery()
        elif self._recovery is _Recovery.FAST and not self.sack_ok:
            self._dupack_credit += mss  # RFC 5681 section 3.2 step 4: a segment left

    def _enter_fast_recovery(self) -> None:
        """RFC 5681 section 3.2 / RFC 6675 section 5: halve cwnd, resend the first hole."""
        mss = self.mss
        self.counters.inc("fast_retransmits")
        self.cc.on_fast_retransmit(self.in_flight, mss)
        self._recovery = _Recovery.FAST
        self._recovery_point = self.snd_nxt
        self._rexmit_nxt = self.snd_una
        self._loss_end = seq_min(seq_add(self.snd_una, mss), self.snd_nxt)
        highest = self.scoreboard.highest if self.sack_ok else None
        if highest is not None:
            self._loss_end = seq_max(self._loss_end, highest)
        self._dupack_credit = 0 if self.sack_ok else 3 * mss
        self._rtt_seq = None  # Karn: no samples from retransmitted data
        self._retransmit_hole(force=True)

    def _receive_data(self, seq: int, data: bytes) -> None:
        """Take in-window text (RFC 9293 3.10.7.4, "seventh"); queue or reassemble it."""
        c = self.counters
        if seq != self.rcv_nxt:
            if self._ooo.add(seq, data, self.rcv_nxt):
                c.inc("segments.out_of_order")
            else:
                c.inc("segments.reassembly_full")
            self._ack_now = True  # RFC 5681 section 4.2: ACK out-of-order data at once
            return
        had_holes = len(self._ooo) > 0
        self._queue(data)
        self.rcv_nxt = seq_add(self.rcv_nxt, len(data))
        received = len(data)
        while had_holes and (more := self._ooo.pop(self.rcv_nxt)) is not None:
            self._queue(more)
            self.rcv_nxt = seq_add(self.rcv_nxt, len(more))
            received += len(more)
        if had_holes:
            self._ack_now = True  # RFC 5681 section 4.2: ACK at once when a hole fills
        self._rcv_unacked += received
        if self._rcv_unacked >= 2 * self.rcv_mss:
            self._ack_now = True  # RFC 9293 3.8.6.3: at least every second full segment
        else:
            self._ack_later = True
        peer_fin = self._peer_fin
        if peer_fin is not None and peer_fin == self.rcv_nxt and not self.fin_received:
            self._take_fin()

    def _queue(self, data: bytes) -> None:
        self._rcvq.append(data)
        self._rcvq_len += len(data)

    def _take_fin(self) -> None:
        """RFC 9293 3.10.7.4, "eighth": the peer's FIN is in order."""
        self._ack_now = True
        if self.fin_received:
            if self.state is State.TIME_WAIT:
                self._linger_timer.start(2 * self.config.msl)
            return
        self.fin_received = True
        self.rcv_nxt = seq_add(self.rcv_nxt, 1)
        self._ooo.clear()
        self._ev_eof = True
        self.counters.inc("fins_received")
        state = self.state
        if state in (State.SYN_RECEIVED, State.ESTABLISHED):
            self.state = State.CLOSE_WAIT
        elif state is State.FIN_WAIT_1:
            # Our FIN is not acknowledged yet (else we would be in FIN-WAIT-2): simultaneous
            # close (RFC 9293 section 3.6, figure 13).
            self.state = State.CLOSING
        elif state is State.FIN_WAIT_2:
            self._enter_time_wait()

    # -- output ------------------------------------------------------------------------------

    def _pipe(self) -> int:
        """Bytes estimated to be in the network (RFC 6675 section 4, "pipe")."""
        pipe = self.in_flight - self.scoreboard.sacked_bytes - self._dupack_credit
        if self._recovery is not _Recovery.NONE and seq_lt(self._rexmit_nxt, self._loss_end):
            pipe -= self.scoreboard.unsacked_between(self._rexmit_nxt, self._loss_end)
        return max(pipe, 0)

    def _output(self) -> None:
        """Send what the windows, Nagle and recovery allow (RFC 9293 3.8.6, RFC 5681, 6675)."""
        if self.state not in _OUTPUT_STATES:
            return
        cc = self.cc
        mss = self.mss
        sndbuf = self.sndbuf
        for _ in range(4096):  # bounded: each round sends one segment or stops
            pipe = self._pipe()
            if pipe >= cc.cwnd:
                break
            if self._recovery is not _Recovery.NONE and self._retransmit_hole(force=False):
                continue
            fin_pending = self.fin_queued and self.fin_seq is None
            avail = max(seq_sub(sndbuf.end, self.snd_nxt), 0)
            if avail == 0 and not fin_pending:
                break
            wnd_room = max(seq_sub(seq_add(self.snd_una, self.snd_wnd), self.snd_nxt), 0)
            n = max(min(mss, avail, cc.cwnd - pipe, wnd_room), 0)
            outstanding = self.snd_nxt != self.snd_una
            if n < avail:
                # RFC 9293 section 3.8.6.2.1, sender SWS avoidance: a segment shorter than the
                # MSS goes only if it is at least half the largest window the peer offered.
                if n < mss and (n == 0 or n < self.max_snd_wnd // 2):
                    if not outstanding and wnd_room < avail:
                        self._persist_timer.start_if_stopped(self._persist_backoff)
                    break
                fin = False
            else:
                if 0 < n < mss and outstanding and not self.nodelay and not fin_pending:
                    break  # Nagle (RFC 9293 section 3.7.4): one small segment in flight
                fin = fin_pending
            if n == 0 and not fin:
                break
            self._send_range(self.snd_nxt, n, fin, retransmit=False)
            if self._rtt_seq is None and not self.ts_ok:
                self._rtt_seq = self.snd_nxt
                self._rtt_time = self._clock.now()
            self.snd_nxt = seq_add(self.snd_nxt, n + (1 if fin else 0))
            if fin:
                self.fin_seq = seq_add(self.snd_nxt, -1)
            if not self._rexmit_timer.armed:
                self._rexmit_timer.start(self.rtt.rto)

    def _retransmit_hole(self, *, force: bool) -> bool:
        """Resend the next lost, un-SACKed segment below the loss mark; False if none."""
        if not seq_lt(self._rexmit_nxt, self._loss_end):
            return False
        hole = self.scoreboard.next_hole(self._rexmit_nxt, self._loss_end)
        if hole is None:
            self._rexmit_nxt = self._loss_end
            return False
        if not force and self._pipe() >= self.cc.cwnd:
            return False
        start, end = hole
        length = min(seq_sub(end, start), self.mss)
        data_end = self.sndbuf.end
        n = max(min(length, seq_sub(data_end, start)), 0)
        fin = self.fin_seq is not None and seq_geq(seq_add(start, n), self.fin_seq)
        self._send_range(start, n, fin, retransmit=True)
        self._rexmit_nxt = seq_add(start, n + (1 if fin else 0))
        if not seq_gt(self._rexmit_nxt, start):
            self._rexmit_nxt = seq_add(start, 1)
        if not self._rexmit_timer.armed:
            self._rexmit_timer.start(self.rtt.rto)
        return True

    def _send_range(self, seq: int, n: int, fin: bool, *, retransmit: bool) -> None:
        payload = self.sndbuf.slice(seq, n) if n else b""
        flags = ACK
        if n and seq_add(seq, n) == self.sndbuf.end:
            flags |= PSH
        if fin:
            flags |= FIN
        c = self.counters.values
        if retransmit:
            c["retransmits"] = c.get("retransmits", 0) + 1
            c["retransmitted_bytes"] = c.get("retransmitted_bytes", 0) + n
            if self._rtt_seq is not None and seq_leq(seq, self._rtt_seq):
                self._rtt_seq = None  # Karn's algorithm (RFC 6298 section 3)
        self._emit(seq, flags, payload)

    def _send_syn(self) -> None:
        """Send (or resend) our SYN, or our SYN-ACK, with the options we offer or accept."""
        config = self.config
        if self.state is State.SYN_SENT:
            ws = self._offer_ws if config.window_scale else None
            sack = config.sack
            ts = (self._ts_now(), 0) if config.timestamps else None
            flags = SYN
        else:
            # RFC 7323 sections 1.3 and 2.2, RFC 2018 section 2: only echo what was offered.
            ws = self._offer_ws if self._ws_ok else None
            sack = self.sack_ok
            ts = (self._ts_now(), self.ts_recent) if self.ts_ok else None
            flags = SYN | ACK
        options = TCPOptions(mss=self.rcv_mss, window_scale=ws, sack_permitted=sack, timestamp=ts)
        if self.retries == 0:
            self._rtt_time = self._clock.now()
        else:
            self._syn_rtt_ok = False  # Karn: the answer may be to either copy
        self._emit(self.iss, flags, b"", options)

    def _emit(
        self, seq: int, flags: int, payload: bytes = b"", options: TCPOptions | None = None
    ) -> None:
        """Build one segment and hand it to the network layer."""
        ack = 0
        window = 0
        if flags & ACK:
            ack = self.rcv_nxt
            window = self._window_field(bool(flags & SYN))
        elif flags & SYN:
            window = min(self.config.receive_buffer, 0xFFFF)  # RFC 7323 2.2: never scaled
        if flags & ACK:
            self._last_ack_sent = ack
            self._rcv_unacked = 0
            self._ack_now = self._ack_later = False
            self._delack_timer.stop()
        if options is None:
            nblocks = 0
            if self.sack_ok and len(self._ooo):
                # RFC 6691: options come out of the MSS; a full segment leaves no room for SACK.
                room = self.mss - len(payload) - 4
                nblocks = min(max(room // 8, 0), 3 if self.ts_ok else 4)
            blocks = self._ooo.sack_blocks(self.rcv_nxt, nblocks) if nblocks else ()
            if self.ts_ok:
                options = TCPOptions(timestamp=(self._ts_now(), self.ts_recent), sack_blocks=blocks)
            elif blocks:
                options = TCPOptions(sack_blocks=blocks)
            else:
                options = NO_OPTIONS
        hdr = TCPHeader(self.local_port, self.remote_port, seq, ack, flags, window, 0, options)
        route = self.route
        assert route is not None
        self.protocol.output(route, hdr, payload)

    def _window_field(self, syn: bool) -> int:
        """Return the window to advertise: free buffer space, never moving the right edge left.

        Receiver SWS avoidance (RFC 9293 section 3.8.6.2.2): the right edge only moves by at
        least min(buffer / 2, MSS). RFC 7323 section 2.3: shifted right by our scale, except in
        SYN segments.
        """
        rcv_nxt = self.rcv_nxt
        free = max(self.config.receive_buffer - self._rcvq_len, 0)
        right = seq_add(rcv_nxt, free)
        step = seq_sub(right, self.rcv_adv)
        if step > 0 and (
            step >= min(self.config.receive_buffer // 2, self.rcv_mss)
            or seq_sub(self.rcv_adv, rcv_nxt) <= 0
        ):
            self.rcv_adv = right
        wnd = max(seq_sub(self.rcv_adv, rcv_nxt), 0)
        if syn:
            return min(wnd, 0xFFFF)
        shift = self.rcv_wscale
        field = min((wnd + (1 << shift) - 1) >> shift, 0xFFFF)
        # Rounding up keeps the promise; note the edge actually advertised.
        self.rcv_adv = seq_max(self.rcv_adv, seq_add(rcv_nxt, field << shift))
        return field

    def _ts_now(self) -> int:
        return (int(self._clock.now() * 1000) + self._ts_offset) & SEQ_MASK

    def _ts_sample(self, tsecr: int) -> None:
        rtt_ms = (self._ts_now() - tsecr) & SEQ_MASK
        if rtt_ms < 0x7FFFFFFF:
            self.rtt.sample(rtt_ms / 1000)

    def _send_ack(self) -> None:
        if self.state is State.CLOSED or self.route is None:
            return
        self._emit(self.snd_nxt, ACK)

    def _challenge_ack(self) -> None:
        """Answer a suspicious RST, SYN or ACK with an ACK (RFC 5961 sections 3-5), rate limited."""
        if self.protocol.challenge_ack_allowed():
            self.counters.inc("challenge_acks")
            self._send_ack()
        else:
            self.counters.inc("challenge_acks_suppressed")

    def _reply_rst(self, seq: int) -> None:
        self.counters.inc("rst.sent")
        hdr = TCPHeader(self.local_port, self.remote_port, seq, 0, RST, 0)
        assert self.route is not None
        self.protocol.output(self.route, hdr, b"")

    def _flush_ack(self) -> None:
        """Send the ACK the last segment called for, now or after the delayed-ACK timer."""
        if self.state is State.CLOSED:
            return
        if self._ack_now:
            self._send_ack()
        elif self._ack_later:
            self._delack_timer.start_if_stopped(self.config.delayed_ack)

    # -- timers ------------------------------------------------------------------------------

    def _on_rexmit_timer(self) -> None:
        """Retransmission timeout (RFC 6298 section 5)."""
        state = self.state
        c = self.counters
        config = self.config
        if state in (State.SYN_SENT, State.SYN_RECEIVED):
            self.retries += 1
            limit = config.syn_retries if state is State.SYN_SENT else config.synack_retries
            if self.retries > limit:
                c.inc("syn_timeouts")
                self._fail(errno.ETIMEDOUT)
                return
            c.inc("syn_retransmits")
            self.rtt.backoff()
            self._send_syn()
            self._rexmit_timer.start(self.rtt.rto)
            return
        if self.snd_una == self.snd_nxt or state not in _OUTPUT_STATES:
            return
        self.retries += 1
        if self.retries > config.max_retries:
            c.inc("retransmit_limit")
            self._fail(errno.ETIMEDOUT)
            return
        c.inc("timeouts")
        first = self._recovery is not _Recovery.TIMEOUT
        self.cc.on_timeout(self.in_flight, self.mss, first)
        self._recovery = _Recovery.TIMEOUT
        self._recovery_point = self.snd_nxt
        self._recover = self.snd_nxt
        self._rexmit_nxt = self.snd_una
        self._loss_end = self.snd_nxt
        self._dupacks = 0
        self._dupack_credit = 0
        self._rtt_seq = None
        self.rtt.backoff()  # RFC 6298 section 5.5
        self._rexmit_timer.start(self.rtt.rto)
        self._retransmit_hole(force=True)
        self._output()
        self._deliver()

    def _on_delack_timer(self) -> None:
        if self.state is not State.CLOSED and (self._ack_later or self._ack_now):
            self.counters.inc("delayed_acks")
            self._send_ack()

    def _on_persist_timer(self) -> None:
        """Zero-window probe (RFC 9293 section 3.8.6.1), or push past a too-small window."""
        if self.state not in _OUTPUT_STATES or not self.unsent:
            return
        if self.snd_una != self.snd_nxt:
            return  # data in flight: the retransmission timer covers it
        c = self.counters
        if self.snd_wnd > 0:
            # Sender SWS override: send what the window takes.
            n = min(self.snd_wnd, self.unsent, self.mss)
            fin = self.fin_queued and n == self.unsent
            self._send_range(self.snd_nxt, n, fin, retransmit=False)
            self.snd_nxt = seq_add(self.snd_nxt, n + (1 if fin else 0))
            if fin:
                self.fin_seq = seq_add(self.snd_nxt, -1)
            self._rexmit_timer.start_if_stopped(self.rtt.rto)
            return
        self._probes += 1
        if self._probes > self.config.max_retries:
            c.inc("persist_timeouts")
            self._fail(errno.ETIMEDOUT)
            return
        c.inc("window_probes")
        # A probe from below the window draws an ACK carrying the current window.
        self._emit(seq_add(self.snd_una, -1), ACK)
        self._persist_backoff = min(self._persist_backoff * 2, self.config.max_rto)
        self._persist_timer.start(self._persist_backoff)

    def _on_keepalive_timer(self) -> None:
        """Keep-alive probe on an idle connection (RFC 9293 section 3.8.4, RFC 1122 4.2.3.6)."""
        if self.state is not State.ESTABLISHED:
            return
        config = self.config
        if self._probes >= config.keepalive_count:
            self.counters.inc("keepalive_timeouts")
            self._fail(errno.ETIMEDOUT)
            return
        self._probes += 1
        self.counters.inc("keepalives")
        self._emit(seq_add(self.snd_una, -1), ACK)
        self._keepalive_timer.start(config.keepalive_interval)

    def _on_linger_timer(self) -> None:
        if self.state is State.TIME_WAIT:
            self.counters.inc("time_wait_done")
            self._destroy(None)
        elif self.state is State.FIN_WAIT_2:
            self.counters.inc("fin_wait_2_timeouts")
            self._destroy(None)
        self._deliver()

    # -- ICMP ---------------------------------------------------------------------------------

    def icmp_error(self, control: Control, seq: int, mtu: int) -> None:
        """Act on an ICMP error quoting one of our segments (RFC 5927, RFC 1122 4.2.3.9)."""
        c = self.counters
        if not (seq_geq(seq, self.snd_una) and seq_lt(seq, self.snd_nxt)):
            c.inc("icmp.out_of_window")  # RFC 5927 section 4.1: not in flight, so forged
            return
        if control is Control.PACKET_TOO_BIG:
            self._path_mtu_changed()
            return
        if self.state is State.SYN_SENT:
            c.inc("icmp.hard_errors")
            self._destroy(control_error(control))
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
        if mss >= self.mss:
            c.inc("icmp.pmtu_ignored")
            return
        c.inc("icmp.pmtu_reductions")
        self.mss = mss
        self.cc.on_mss_change(mss)
        if self.state in _OUTPUT_STATES and self.snd_una != self.snd_nxt:
            # Resend everything in flight at the new size; the window is not reduced.
            if self._recovery is _Recovery.NONE:
                self._recovery = _Recovery.TIMEOUT
                self._recovery_point = self.snd_nxt
            self._rexmit_nxt = self.snd_una
            self._loss_end = self.snd_nxt
            self._retransmit_hole(force=True)
            self._output()

    # -- endings ------------------------------------------------------------------------------

    def _established(self) -> None:
        self.counters.inc("established")
        self._ev_established = True
        if self.listener is not None:
            self.listener.child_established(self)  # queued; announced by _deliver
        if self.config.keepalive:
            self._keepalive_timer.start(self.config.keepalive_idle)

    def _enter_orphan_fin_wait_2(self) -> None:
        """Bound the wait for the peer's FIN once the application closed and our FIN is acked."""
        self._linger_timer.start(self.config.fin_wait2_timeout)
        self._notify_close(None)

    def _enter_time_wait(self) -> None:
        """TIME-WAIT for 2 MSL (RFC 9293 section 3.6.1)."""
        self.state = State.TIME_WAIT
        self.counters.inc("time_waits")
        for timer in (self._rexmit_timer, self._persist_timer, self._keepalive_timer):
            timer.stop()
        self._linger_timer.start(2 * self.config.msl)
        self._notify_close(None)

    def _fail(self, code: int) -> None:
        """End the connection with an error; a stored ICMP soft error explains a timeout."""
        if code == errno.ETIMEDOUT and self.soft_error is not None:
            exc: BaseException = control_error(self.soft_error)
        else:
            exc = _os_error(code)
        if self.state not in (State.SYN_SENT, State.SYN_RECEIVED, State.CLOSED):
            self._emit(self.snd_nxt, RST)
            self.counters.inc("rst.sent")
        self._destroy(exc)
        self._deliver()

    def _destroy(self, exc: BaseException | None) -> None:
        """Enter CLOSED: stop the timers, leave the demultiplexer, free the port."""
        if self.state is State.CLOSED and not self._registered:
            self._notify_close(exc)
            return
        was = self.state
        self.state = State.CLOSED
        for timer in (
            self._rexmit_timer,
            self._delack_timer,
            self._persist_timer,
            self._keepalive_timer,
            self._linger_timer,
        ):
            timer.stop()
        demux = self.protocol.demux
        if self._registered:
            demux.unregister_connected(
                self.local_addr, self.local_port, self.remote_addr, self.remote_port, self
            )
            self._registered = False
        if self._reserved:
            demux.release(self.local_addr, self.local_port)
            self._reserved = False
        self.sndbuf.clear()
        self._ooo.clear()
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
        while (
            self._rcvq
            and not self.reading_paused
            and self.on_data is not None
            and not self._close_delivered
        ):
            chunk = self._rcvq.popleft() if len(self._rcvq) == 1 else self._take_all()
            self._rcvq_len -= len(chunk)
            self.on_data(chunk)
        if (
            self._ev_eof
            and not self._rcvq
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
            if self._rcvq and self._close_error is None and self.on_data is not None:
                return  # deliver the remaining data first (reading is paused)
            self._close_pending = False
            self._close_delivered = True
            if self.on_close is not None:
                self.on_close(self._close_error)

    def _take_all(self) -> bytes:
        data = b"".join(self._rcvq)
        self._rcvq.clear()
        return data

    def receive_queued(self) -> bytes:
        """Take every byte held while reading was paused (for pull-style users)."""
        data = self._take_all()
        self._rcvq_len = 0
        if self.state is not State.CLOSED and data:
            self._send_ack()
        return data

    # -- introspection -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Describe the connection as ``ss -tinie`` / Linux ``tcp_info`` would: plain values.

        Sizes are bytes, times milliseconds on the stack's clock, sequence numbers raw 32-bit.
        ``bytes_sent``, ``bytes_acked`` and ``bytes_received`` are derived from the sequence
        numbers (so modulo 2**32, without SYN and FIN, retransmissions not counted again);
        ``in_flight`` is sequence space, where an unacknowledged SYN or FIN counts one.
        ``cwnd_segments`` is ``cwnd // mss``; ``ssthresh`` stays at its initial "arbitrarily
        high" value (RFC 5681 section 3.1) until the first loss. ``retries`` is the number of
        retransmission timeouts since the last forward progress (Linux's
        ``tcpi_retransmits``); no per-connection total of retransmissions is kept.
        ``ooo_ranges`` counts disjoint ranges held for reassembly, not segments.
        """
        state = self.state
        syn_acked = self.snd_una != self.iss  # SND.UNA only leaves ISS when our SYN is acked
        fin_acked = self.fin_seq is not None and seq_gt(self.snd_una, self.fin_seq)
        acked = (self.snd_una - self.iss - 1 - int(fin_acked)) & SEQ_MASK
        sent = (self.snd_nxt - self.iss - 1 - int(self.fin_seq is not None)) & SEQ_MASK
        syn_seen = self.rcv_nxt != self.irs  # RCV.NXT is IRS + 1 once the peer's SYN is in
        received = (self.rcv_nxt - self.irs - 1 - int(self.fin_received)) & SEQ_MASK
        rtt = self.rtt
        cc = self.cc
        now = self._clock.now()
        timers: dict[str, float] = {}
        for name, timer in (
            ("rto", self._rexmit_timer),  # RFC 6298 retransmission (SYN, SYN-ACK or data)
            ("delayed_ack", self._delack_timer),
            ("persist", self._persist_timer),
            ("keepalive", self._keepalive_timer),
            ("time_wait" if state is State.TIME_WAIT else "fin_wait_2", self._linger_timer),
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
            "recv_q": self._rcvq_len,
            "send_q": len(self.sndbuf),
            "mss": self.mss,
            "advmss": self.rcv_mss,
            "peer_mss": self.peer_mss,
            # RFC 7323 section 2: [peer's shift applied to its windows, our shift].
            "wscale": [self.snd_wscale, self.rcv_wscale] if self._ws_ok else None,
            "sack": sack,
            "timestamps": self.ts_ok,
            "snd_wnd": self.snd_wnd,
            "rcv_wnd": max(seq_sub(self.rcv_adv, self.rcv_nxt), 0),
            "cwnd": cc.cwnd,
            "cwnd_segments": cc.cwnd // self.mss,
            "ssthresh": cc.ssthresh,
            "congestion": type(cc).__name__.lower(),
            # RFC 6298 section 2: no SRTT or RTTVAR before the first measurement.
            "srtt_ms": rtt.srtt * 1000 if rtt.srtt is not None else None,
            "rttvar_ms": rtt.rttvar * 1000 if rtt.srtt is not None else None,
            "rto_ms": rtt.rto * 1000,
            "iss": self.iss,
            "irs": self.irs,
            "snd_una": self.snd_una,
            "snd_nxt": self.snd_nxt,
            "rcv_nxt": self.rcv_nxt,
            "in_flight": self.in_flight,
            "unsent": self.unsent,
            "bytes_sent": sent,
            "bytes_acked": acked if syn_acked else 0,
            "bytes_received": received if syn_seen else 0,
            "retries": self.retries,
            "in_recovery": self._recovery is not _Recovery.NONE,
            "recovery": self._recovery.name.lower(),
            "sack_blocks": len(self.scoreboard.ranges()) if sack else None,
            "sacked_bytes": self.scoreboard.sacked_bytes if sack else None,
            "ooo_ranges": len(self._ooo),
            "ooo_bytes": self._ooo.bytes,
            "timers": timers,
        }
