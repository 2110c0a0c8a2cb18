"""The send side: the :class:`Sender` that empties the bounded send buffer (:mod:`.sendbuffer`).

RFC 9293 sections 3.7.4 (Nagle), 3.8.6.1 (zero-window probes), 3.8.6.2.1 (sender SWS
avoidance) and 3.10.7.4 ("fifth": ACK processing, window updates); RFC 6298 (RTT samples, RTO,
Karn's algorithm) and RFC 7323 section 4 (RTT from timestamps). How big the window is comes
from :mod:`.congestion`; what to resend, from :mod:`.recovery`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from netstack.header.seqnum import SEQ_MASK, seq_add, seq_geq, seq_gt, seq_leq, seq_lt, seq_sub
from netstack.header.tcp import ACK, FIN, PSH, TCPHeader
from netstack.transport.tcp.congestion import CongestionControl, new_congestion_control
from netstack.transport.tcp.recovery import LossRecovery, Phase, RenoRecovery, SACKRecovery
from netstack.transport.tcp.sendbuffer import SendBuffer
from netstack.transport.tcp.timers import RTTEstimator, Timer

if TYPE_CHECKING:
    import random

    from netstack.clock import Clock
    from netstack.counters import Counters
    from netstack.transport.tcp.config import TCPConfig


class Connection(Protocol):
    """What the sender needs of its connection (a :class:`.endpoint.TCPEndpoint`).

    Its settings, counters and clock; whether the handshake agreed on timestamps (they replace
    timing one segment per RTT); and the one way a segment goes out.
    """

    config: TCPConfig
    counters: Counters
    clock: Clock
    ts_ok: bool

    def emit(self, seq: int, flags: int, payload: bytes = b"") -> None:
        """Send one segment: the connection adds ACK, window and options."""


class Sender:
    """The send side of one connection: send sequence space, output, ACKs, RTT and persist.

    Variables of RFC 9293 section 3.3.1 (``una``, ``nxt``, ``wnd``, ``wl1``, ``wl2``, ``iss``)
    plus the send buffer, the RTT estimator (RFC 6298), the congestion controller and loss
    recovery. SND.NXT never moves back: what recovery resends it tracks itself.
    The endpoint owns the timers and the state machine and calls :meth:`output` only in
    states that may send.
    """

    __slots__ = (
        "buf",
        "cc",
        "clock",
        "config",
        "counters",
        "ep",
        "fin_queued",
        "fin_seq",
        "iss",
        "max_wnd",
        "mss",
        "nodelay",
        "nxt",
        "persist_backoff",
        "persist_timer",
        "probes",
        "recovery",
        "retries",
        "rexmit_timer",
        "rtt",
        "rtt_seq",
        "rtt_time",
        "ts_offset",
        "una",
        "wl1",
        "wl2",
        "wnd",
        "wscale",
    )

    def __init__(
        self, ep: Connection, rng: random.Random, rexmit_timer: Timer, persist_timer: Timer
    ) -> None:
        config = ep.config
        self.ep = ep
        self.config = config
        self.counters = ep.counters
        self.clock = clock = ep.clock
        self.rexmit_timer = rexmit_timer
        self.persist_timer = persist_timer
        self.nodelay = config.nodelay
        self.iss: int = 0  # ISS
        self.una: int = 0  # SND.UNA
        self.nxt: int = 0  # SND.NXT
        self.wnd = 0  # SND.WND, scaled
        self.wl1 = 0  # SND.WL1: the sequence number of the last window update
        self.wl2 = 0  # SND.WL2: its acknowledgment number
        self.max_wnd = 0  # the largest window the peer offered (SWS avoidance, RFC 5961)
        self.wscale = 0  # the peer's window shift (RFC 7323 section 2.3)
        self.buf = SendBuffer(0, config.send_buffer)
        self.fin_queued = False  # the application shut down its sending side
        self.fin_seq: int | None = None  # sequence number of our FIN once sent
        self.mss = config.default_mss  # payload bytes per segment we send (after options)
        self.retries = 0  # timeouts since the last forward progress
        self.rtt = RTTEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self.rtt_seq: int | None = None  # timing this sequence number (no timestamps)
        self.rtt_time = 0.0
        self.ts_offset = rng.getrandbits(32)  # RFC 7323 section 5.4
        self.persist_backoff = config.persist_min
        self.probes = 0
        # The one place a connection's congestion controller is made (TCPConfig.congestion).
        self.cc: CongestionControl = new_congestion_control(
            config.congestion, self.mss, config.initial_window_segments, clock, self.rtt
        )
        self.recovery: LossRecovery = RenoRecovery(self)

    def start(self, iss: int) -> None:
        """Begin the sequence space at ``iss`` (our SYN); data starts at ISS + 1."""
        self.iss = self.una = iss
        self.nxt = seq_add(iss, 1)
        self.buf = SendBuffer(self.nxt, self.config.send_buffer)
        self.recovery = RenoRecovery(self)

    def use_sack(self, sack: bool) -> None:
        """Pick loss recovery once the handshake settled whether SACK is used (RFC 2018 2)."""
        self.recovery = SACKRecovery(self) if sack else RenoRecovery(self)

    def set_mss(self, mss: int) -> None:
        """Fix the segment size the handshake agreed on and restart cwnd from IW for it."""
        self.mss = mss
        self.cc.reset(mss)

    @property
    def unsent(self) -> int:
        """Bytes queued and not yet sent."""
        return max(seq_sub(self.buf.end, self.nxt), 0) if self.fin_seq is None else 0

    # -- RTT (RFC 6298, RFC 7323 section 4) -------------------------------------------------------

    def ts_now(self) -> int:
        """Our timestamp clock: milliseconds plus a random offset (RFC 7323 section 5.4)."""
        return (int(self.clock.now() * 1000) + self.ts_offset) & SEQ_MASK

    def ts_sample(self, tsecr: int) -> None:
        """Take an RTT sample from an echoed timestamp (RFC 7323 section 4.1)."""
        rtt_ms = (self.ts_now() - tsecr) & SEQ_MASK
        if rtt_ms < 0x7FFFFFFF:
            self.rtt.sample(rtt_ms / 1000)

    # -- ACK processing (RFC 9293 section 3.10.7.4, "fifth") --------------------------------------

    def on_ack(self, hdr: TCPHeader, has_text: bool) -> bool:
        """Take an acceptable ACK: window update, SACK, new data or a duplicate.

        Returns whether bytes left the send buffer (the application may write more).
        """
        ack = hdr.ack
        una = self.una
        old_wnd = self.wnd
        # RFC 9293 section 3.10.7.4: update the window only from newer segments (SND.WL1/2).
        if seq_leq(una, ack) and (
            seq_lt(self.wl1, hdr.seq) or (self.wl1 == hdr.seq and seq_leq(self.wl2, ack))
        ):
            wnd = hdr.window << self.wscale
            self.wnd = wnd
            self.wl1 = hdr.seq
            self.wl2 = ack
            if wnd > self.max_wnd:
                self.max_wnd = wnd
        blocks = hdr.options.sack_blocks
        if blocks:
            self.recovery.on_sack(blocks)
        self.probes = 0
        freed = False
        if seq_gt(ack, una):
            freed = self._ack_advanced(hdr, ack)
        elif ack == una and not has_text and self.wnd == old_wnd and self.nxt != una:
            self.recovery.on_duplicate_ack()
        if self.wnd and self.persist_timer.armed:
            self.persist_timer.stop()
            self.persist_backoff = self.config.persist_min
        if self.wnd == 0 and self.una == self.nxt and self.unsent:
            self.persist_timer.start_if_stopped(self.persist_backoff)
        return freed

    def _ack_advanced(self, hdr: TCPHeader, ack: int) -> bool:
        """Take an ACK of new data: RTT, buffer, congestion window, recovery and timers."""
        acked = seq_sub(ack, self.una)
        ts = hdr.options.timestamp
        if ts is not None and ts[1] and self.ep.ts_ok:
            self.ts_sample(ts[1])  # RFC 7323 section 4.1
        elif self.rtt_seq is not None and seq_geq(ack, self.rtt_seq):
            self.rtt.sample(self.clock.now() - self.rtt_time)
            self.rtt_seq = None
        freed = self.buf.ack(ack) > 0
        self.una = ack
        self.retries = 0
        self.recovery.on_ack_advanced(ack, acked)
        if ack == self.nxt:
            self.rexmit_timer.stop()
        else:
            self.rexmit_timer.start(self.rtt.rto)  # RFC 6298 section 5.3
        return freed

    # -- output ------------------------------------------------------------------------------

    def output(self) -> None:
        """Send what the windows, Nagle and recovery allow (RFC 9293 3.8.6, RFC 5681, 6675)."""
        cc = self.cc
        mss = self.mss
        buf = self.buf
        recovery = self.recovery
        pipe_of = recovery.pipe
        for _ in range(4096):  # bounded: each round sends one segment or stops
            pipe = pipe_of()
            cwnd = cc.cwnd
            if pipe >= cwnd:
                break
            if recovery.phase is not Phase.NONE and recovery.retransmit(force=False):
                continue
            nxt = self.nxt
            fin_pending = self.fin_queued and self.fin_seq is None
            avail = seq_sub(buf.end, nxt)
            if avail <= 0:
                if not fin_pending:
                    break
                avail = 0
            wnd_room = max(seq_sub(seq_add(self.una, self.wnd), nxt), 0)
            n = max(min(mss, avail, cwnd - pipe, wnd_room), 0)
            outstanding = nxt != self.una
            if n < avail:
                # RFC 9293 section 3.8.6.2.1, sender SWS avoidance: a segment shorter than the
                # MSS goes only if it is at least half the largest window the peer offered.
                if n < mss and (n == 0 or n < self.max_wnd // 2):
                    if not outstanding and wnd_room < avail:
                        self.persist_timer.start_if_stopped(self.persist_backoff)
                    break
                fin = False
            else:
                if 0 < n < mss and outstanding and not self.nodelay and not fin_pending:
                    break  # Nagle (RFC 9293 section 3.7.4): one small segment in flight
                fin = fin_pending
            if n == 0 and not fin:
                break
            self._send_new(n, fin)

    def _send_new(self, n: int, fin: bool, *, timed: bool = True) -> None:
        """Send ``n`` new bytes from SND.NXT (and our FIN) and advance SND.NXT."""
        nxt = self.nxt
        self.send_range(nxt, n, fin, retransmit=False)
        if timed and self.rtt_seq is None and not self.ep.ts_ok:
            self.rtt_seq = nxt  # RFC 6298 section 3: time one segment per RTT
            self.rtt_time = self.clock.now()
        self.nxt = seq_add(nxt, n + (1 if fin else 0))
        if fin:
            self.fin_seq = seq_add(self.nxt, -1)
        self.rexmit_timer.start_if_stopped(self.rtt.rto)

    def send_range(self, seq: int, n: int, fin: bool, *, retransmit: bool) -> None:
        """Send the ``n`` queued bytes at ``seq`` (with FIN if ``fin``), new or resent."""
        buf = self.buf
        payload = buf.slice(seq, n) if n else b""
        flags = ACK
        if n and seq_add(seq, n) == buf.end:
            flags |= PSH
        if fin:
            flags |= FIN
        if retransmit:
            c = self.counters.values
            c["retransmits"] = c.get("retransmits", 0) + 1
            c["retransmitted_bytes"] = c.get("retransmitted_bytes", 0) + n
            if self.rtt_seq is not None and seq_leq(seq, self.rtt_seq):
                self.rtt_seq = None  # Karn's algorithm (RFC 6298 section 3)
        self.ep.emit(seq, flags, payload)

    # -- timers (the endpoint owns them and calls these) ---------------------------------------

    def on_timeout(self) -> None:
        """Retransmission timeout of data (RFC 6298 section 5.4-5.6): resend from SND.UNA."""
        self.counters.inc("timeouts")
        self.recovery.on_timeout()
        self.rtt_seq = None
        self.rtt.backoff()  # RFC 6298 section 5.5
        self.rexmit_timer.start(self.rtt.rto)
        self.recovery.retransmit(force=True)
        self.output()

    def on_persist(self) -> bool:
        """Probe a zero window (RFC 9293 3.8.6.1) or push past a too-small one.

        Returns False once the probes are exhausted (the connection should fail).
        """
        unsent = self.unsent
        if not unsent or self.una != self.nxt:
            return True  # nothing waits, or data in flight: the retransmission timer covers it
        if self.wnd > 0:
            # Sender SWS override: send what the window takes.
            n = min(self.wnd, unsent, self.mss)
            fin = self.fin_queued and n == unsent
            self._send_new(n, fin, timed=False)
            return True
        self.probes += 1
        if self.probes > self.config.max_retries:
            self.counters.inc("persist_timeouts")
            return False
        self.counters.inc("window_probes")
        # A probe from below the window draws an ACK carrying the current window.
        self.ep.emit(seq_add(self.una, -1), ACK)
        self.persist_backoff = min(self.persist_backoff * 2, self.config.max_rto)
        self.persist_timer.start(self.persist_backoff)
        return True

    def path_mtu_changed(self, mss: int, *, resend: bool) -> None:
        """Send smaller segments; with ``resend``, resend what is in flight (RFC 8201, 1191).

        The window is not reduced: the segments were too big, not lost to congestion.
        """
        self.mss = mss
        self.cc.on_mss_change(mss)
        if resend and self.una != self.nxt:
            self.recovery.on_path_mtu()
            self.recovery.retransmit(force=True)
            self.output()
