"""Opening a connection: SYN, SYN-ACK, simultaneous open and SYN cookie ACKs.

RFC 9293 sections 3.5 (the three-way handshake, simultaneous open), 3.7.1 (MSS), 3.10.1
(active OPEN), 3.10.7.2 (LISTEN: a SYN makes a child in SYN-RECEIVED) and 3.10.7.3 (SYN-SENT);
RFC 7323 (window scale and timestamps are used only when both SYNs carry them), RFC 2018
section 2 (SACK-permitted), RFC 6691 (the MSS excludes options), RFC 5961 section 3.2 (a RST in
SYN-SENT needs an acceptable ACK), RFC 4987 section 3.6 (SYN cookies; made and checked in
:mod:`.listener` and :mod:`.isn`). The endpoint calls in here; what the peer's SYN settled
lives on the endpoint (``ts_ok``, ``sack_ok``, the window shifts, the MSS) for the whole
connection.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Protocol

from netstack.header.seqnum import seq_add, seq_gt, seq_leq
from netstack.header.tcp import ACK, MAX_WINDOW_SCALE, RST, SYN, TCPHeader, TCPOptions
from netstack.transport.errors import os_error
from netstack.transport.tcp.segment import MIN_MSS, TIMESTAMP_OPTION_LEN, mss_for_mtu
from netstack.transport.tcp.state import Event, State

if TYPE_CHECKING:
    from netstack.clock import Clock
    from netstack.counters import Counters
    from netstack.protocols import Route
    from netstack.transport.tcp.config import TCPConfig
    from netstack.transport.tcp.receiver import Receiver
    from netstack.transport.tcp.sender import Sender
    from netstack.transport.tcp.timers import Timer


class Connection(Protocol):
    """What the handshake needs of its connection (a :class:`.endpoint.TCPEndpoint`).

    The settings, route, clock and counters; the two sides it starts; what the SYNs settle for
    the whole connection (``peer_mss``, ``ts_ok``, ``ts_recent``, ``sack_ok``); the state, the
    retransmission timer, and the connection's own ways to register, move, send and end.
    """

    config: TCPConfig
    counters: Counters
    clock: Clock
    route: Route | None
    state: State
    reserved: bool
    rcv: Receiver
    snd: Sender
    rexmit_timer: Timer
    peer_mss: int
    ts_ok: bool
    ts_recent: int
    sack_ok: bool

    def register(self) -> None:
        """Become reachable by the 4-tuple."""

    def move(self, event: Event) -> None:
        """Take the state transition ``event``."""

    def established(self) -> None:
        """Note the completed handshake."""

    def emit(
        self, seq: int, flags: int, payload: bytes = b"", options: TCPOptions | None = None
    ) -> None:
        """Send one segment (the connection adds ACK, window and options unless given)."""

    def reply_rst(self, seq: int) -> None:
        """Answer an unacceptable ACK with a RST at ``seq``."""

    def destroy(self, exc: BaseException | None) -> None:
        """Enter CLOSED, reporting ``exc`` to the application."""


class Handshake:
    """One connection's opening: what we offer, what the peer's SYN carried, SYN timing."""

    __slots__ = ("ep", "offer_ws", "passive", "rtt_ok", "sent_at", "ws_ok")

    def __init__(self, ep: Connection) -> None:
        self.ep = ep
        self.passive = False  # opened by a listener (RFC 9293 3.10.7.4: RST returns to LISTEN)
        self.offer_ws = 0  # the window shift we offer (fits the receive buffer)
        self.ws_ok = False  # both SYNs carried window scale (RFC 7323 section 2.2)
        self.rtt_ok = True  # the SYN was sent once, so its ACK is an RTT sample (Karn)
        self.sent_at = 0.0

    # -- the three ways in --------------------------------------------------------------------

    def setup(self, iss: int) -> None:
        """Start our sequence space at ``iss``; MSS defaults for the endpoint's route."""
        ep = self.ep
        config = ep.config
        route = ep.route
        assert route is not None
        family = len(route.remote)
        ep.rcv.mss = mss_for_mtu(route.mtu, family)
        # RFC 9293 section 3.7.1 and RFC 8200 section 8.3: the MSS of a peer that sends none.
        ep.peer_mss = config.default_mss if family == 4 else config.default_mss_v6
        ep.snd.start(iss)
        ep.snd.set_mss(min(ep.peer_mss, ep.rcv.mss))
        ws = 0
        while ws < MAX_WINDOW_SCALE and (0xFFFF << ws) < config.receive_buffer:
            ws += 1
        self.offer_ws = ws

    def open_active(self, iss: int) -> None:
        """Send a SYN and enter SYN-SENT (RFC 9293 section 3.10.1, active OPEN)."""
        ep = self.ep
        self.setup(iss)
        ep.reserved = True
        ep.register()
        ep.move(Event.ACTIVE_OPEN)
        ep.counters.inc("active_opens")
        self.send_syn()
        ep.rexmit_timer.start(ep.snd.rtt.rto)

    def open_passive(self, hdr: TCPHeader, iss: int) -> None:
        """Answer a listener's SYN with a SYN-ACK and enter SYN-RECEIVED (section 3.10.7.2)."""
        ep = self.ep
        self.setup(iss)
        self.passive = True
        self.take_syn(hdr)
        ep.register()
        ep.move(Event.SYN_FROM_LISTENER)
        ep.counters.inc("passive_opens")
        self.send_syn()
        ep.rexmit_timer.start(ep.snd.rtt.rto)

    def open_from_cookie(self, hdr: TCPHeader, mss: int) -> None:
        """Enter SYN-RECEIVED from a valid SYN cookie ACK (RFC 4987 section 3.6).

        The cookie carries only the MSS: the connection runs without window scaling, SACK and
        timestamps, which our SYN-ACK did not offer. The ACK itself completes the handshake.
        """
        ep = self.ep
        self.setup(seq_add(hdr.ack, -1))
        self.passive = True
        ep.rcv.start(seq_add(hdr.seq, -1))
        self.set_peer_mss(mss)
        self.rtt_ok = False  # the SYN-ACK left no state, so no send time either
        ep.register()
        ep.move(Event.COOKIE_ACK)
        ep.counters.inc("passive_opens")

    # -- the peer's SYN ----------------------------------------------------------------------

    def take_syn(self, hdr: TCPHeader) -> None:
        """Record the peer's SYN: IRS and the options it offered (RFC 9293 3.7.1, RFC 7323)."""
        ep = self.ep
        opts = hdr.options
        config = ep.config
        ep.rcv.start(hdr.seq)
        if opts.window_scale is not None and config.window_scale:
            # RFC 7323 section 2.3: a shift above 14 is used as 14.
            self.ws_ok = True
            ep.snd.wscale = min(opts.window_scale, MAX_WINDOW_SCALE)
            ep.rcv.wscale = self.offer_ws
        else:
            self.ws_ok = False
            ep.snd.wscale = ep.rcv.wscale = 0
        ep.sack_ok = opts.sack_permitted and config.sack
        ep.snd.use_sack(ep.sack_ok)
        if opts.timestamp is not None and config.timestamps:
            ep.ts_ok = True
            ep.ts_recent = opts.timestamp[0]
        else:
            ep.ts_ok = False
        self.set_peer_mss(opts.mss if opts.mss is not None else ep.peer_mss)

    def set_peer_mss(self, peer_mss: int) -> None:
        """Send segments of min(peer's MSS, ours) less the timestamps option (RFC 6691)."""
        ep = self.ep
        ep.peer_mss = peer_mss
        mss = min(peer_mss, ep.rcv.mss)
        if ep.ts_ok:
            mss -= TIMESTAMP_OPTION_LEN
        ep.snd.set_mss(max(mss, MIN_MSS))

    def ack_of_syn(self, hdr: TCPHeader) -> None:
        """Take the ACK of our SYN: SND.UNA, the first window and an RTT sample."""
        ep = self.ep
        snd = ep.snd
        ts = hdr.options.timestamp
        if ep.ts_ok and ts is not None and ts[1]:
            snd.ts_sample(ts[1])
        elif self.rtt_ok:
            snd.rtt.sample(ep.clock.now() - self.sent_at)
        snd.una = hdr.ack
        snd.recovery.reset(hdr.ack)
        snd.retries = 0
        ep.rexmit_timer.stop()
        # RFC 7323 section 2.2: the window in a SYN segment is never scaled.
        window = hdr.window if hdr.flags & SYN else hdr.window << snd.wscale
        snd.wnd = snd.max_wnd = window
        snd.wl1 = hdr.seq
        snd.wl2 = hdr.ack
        self.set_peer_mss(ep.peer_mss)

    def syn_sent(self, hdr: TCPHeader, data: memoryview) -> None:
        """RFC 9293 section 3.10.7.3, SYN-SENT STATE."""
        ep = self.ep
        c = ep.counters
        flags = hdr.flags
        # "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset (unless the RST bit is set)".
        if flags & ACK and (seq_leq(hdr.ack, ep.snd.iss) or seq_gt(hdr.ack, ep.snd.nxt)):
            c.inc("segments.bad_ack")
            if not flags & RST:
                ep.reply_rst(hdr.ack)
            return
        if flags & RST:
            if flags & ACK:  # RFC 5961 section 3.2: acceptable only with an acceptable ACK
                c.inc("rst.received")
                ep.destroy(os_error(errno.ECONNREFUSED))
            else:
                c.inc("rst.ignored")
            return
        if not flags & SYN:
            c.inc("segments.dropped_syn_sent")
            return
        self.take_syn(hdr)
        if len(data):
            c.inc("segments.syn_data_ignored")  # not acknowledged, so the peer resends it
        if flags & ACK:
            self.ack_of_syn(hdr)
            ep.move(Event.RCV_SYN_ACK)
            ep.established()
            ep.rcv.ack_now = True
        else:
            # Simultaneous open (RFC 9293 section 3.5, figure 8).
            c.inc("simultaneous_opens")
            ep.move(Event.RCV_SYN)
            self.send_syn()
            ep.rexmit_timer.start(ep.snd.rtt.rto)

    # -- our SYN -------------------------------------------------------------------------------

    def send_syn(self) -> None:
        """Send (or resend) our SYN, or our SYN-ACK, with the options we offer or accept."""
        ep = self.ep
        config = ep.config
        snd = ep.snd
        if ep.state is State.SYN_SENT:
            ws = self.offer_ws if config.window_scale else None
            sack = config.sack
            ts = (snd.ts_now(), 0) if config.timestamps else None
            flags = SYN
        else:
            # RFC 7323 sections 1.3 and 2.2, RFC 2018 section 2: only echo what was offered.
            ws = self.offer_ws if self.ws_ok else None
            sack = ep.sack_ok
            ts = (snd.ts_now(), ep.ts_recent) if ep.ts_ok else None
            flags = SYN | ACK
        options = TCPOptions(mss=ep.rcv.mss, window_scale=ws, sack_permitted=sack, timestamp=ts)
        if snd.retries == 0:
            self.sent_at = ep.clock.now()
        else:
            self.rtt_ok = False  # Karn: the answer may be to either copy
        ep.emit(snd.iss, flags, b"", options)

    def on_timeout(self) -> bool:
        """Our SYN or SYN-ACK went unanswered: resend it with back-off (RFC 6298 5.5).

        Returns False once ``syn_retries`` / ``synack_retries`` are used up.
        """
        ep = self.ep
        config = ep.config
        snd = ep.snd
        snd.retries += 1
        syn_sent = ep.state is State.SYN_SENT
        if snd.retries > (config.syn_retries if syn_sent else config.synack_retries):
            ep.counters.inc("syn_timeouts")
            return False
        ep.counters.inc("syn_retransmits")
        snd.rtt.backoff()
        self.send_syn()
        ep.rexmit_timer.start(snd.rtt.rto)
        return True
