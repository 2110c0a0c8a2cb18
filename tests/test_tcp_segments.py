"""Segment-level TCP tests: inject hand-built segments into one stack and read what comes out.

Each test names the rule it checks (RFC and section). The peer is the test itself at 10.0.0.1
(or fd00::1); the stack is 10.0.0.2 (fd00::2) on a ChannelEndpoint with a ManualClock.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from netstack.header import icmpv4
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Header
from netstack.header.numbers import IPPROTO_ICMP, IPPROTO_TCP
from netstack.header.seqnum import seq_add
from netstack.header.tcp import (
    ACK,
    FIN,
    NO_OPTIONS,
    PSH,
    RST,
    SYN,
    TCPHeader,
    TCPOptions,
    build_tcp,
)
from netstack.transport.tcp import State, TCPConfig, TCPEndpoint, TCPListener
from tests.stackutil import HOST4, HOST6, STACK4, STACK6, a, make_stack
from tests.test_tcp_harness import Recorder, add_tcp

PEER_PORT = 40000
PEER_ISN = 0xFFFFFFF0  # close to the wrap: every test also exercises modular arithmetic


class Ctx:
    """One stack with TCP; the test plays the peer."""

    def __init__(self, config: TCPConfig | None = None, mtu: int = 1500, v6: bool = False):
        self.stack, self.link, self.clock = make_stack(mtu=mtu)
        self.tcp = add_tcp(self.stack, config)
        self.peer = HOST6 if v6 else HOST4
        self.local = STACK6 if v6 else STACK4
        self.v6 = v6

    def inject(
        self,
        flags: int,
        seq: int,
        ack: int = 0,
        data: bytes = b"",
        *,
        window: int = 65535,
        options: TCPOptions = NO_OPTIONS,
        sport: int = PEER_PORT,
        dport: int = 80,
    ) -> None:
        hdr = TCPHeader(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, window, 0, options)
        src, dst = a(self.peer), a(self.local)
        segment = build_tcp(src, dst, hdr, data)
        if self.v6:
            packet = IPv6Header(src=src, dst=dst, next_header=IPPROTO_TCP, hop_limit=64).pack(
                segment
            )
        else:
            packet = IPv4Header(src=src, dst=dst, protocol=IPPROTO_TCP, ttl=64, ident=1).pack(
                segment
            )
        self.link.inject(packet)

    def out(self) -> list[tuple[TCPHeader, bytes]]:
        """Parse every segment the stack sent since the last call."""
        result = []
        for packet in self.link.drain():
            if self.v6:
                ip6 = IPv6Header.parse(packet)
                assert ip6.next_header == IPPROTO_TCP
                body = packet[40:]
            else:
                ip = IPv4Header.parse(packet)
                assert ip.protocol == IPPROTO_TCP
                assert ip.dont_fragment  # RFC 1191: TCP does path MTU discovery
                body = packet[ip.header_length : ip.total_length]
            hdr = TCPHeader.parse(body)
            result.append((hdr, bytes(body[hdr.header_length :])))
        return result

    def one(self) -> tuple[TCPHeader, bytes]:
        segs = self.out()
        assert len(segs) == 1, segs
        return segs[0]

    def count(self, name: str) -> int:
        return self.stack.counters.get("tcp." + name)

    # -- scenarios -----------------------------------------------------------------------------

    def listener(self, backlog: int = 8) -> TCPListener:
        return self.tcp.listen(a(self.local), 80, backlog)

    def passive(
        self, options: TCPOptions = NO_OPTIONS, data_window: int = 65535
    ) -> tuple[TCPEndpoint, Recorder, TCPHeader]:
        """Handshake from the peer to a listener; return (accepted endpoint, recorder, SYN-ACK)."""
        listener = self.listener()
        self.inject(SYN, PEER_ISN, options=options)
        synack, _ = self.one()
        assert synack.flags == SYN | ACK
        self.inject(ACK, PEER_ISN + 1, synack.seq + 1, window=data_window)
        ep = listener.accept()
        assert ep is not None and _state(ep) is State.ESTABLISHED
        listener.close()
        return ep, _recorded(ep), synack

    def active(
        self, options: TCPOptions = NO_OPTIONS, window: int = 65535, **kw: Any
    ) -> tuple[TCPEndpoint, Recorder, TCPHeader]:
        """Active open from the stack; the test answers the SYN. Returns (endpoint, rec, SYN)."""
        rec = Recorder()
        ep = rec.attach(self.tcp.connect(a(self.peer), 80, **kw))
        syn, _ = self.one()
        assert syn.flags == SYN
        self.inject(
            SYN | ACK,
            PEER_ISN,
            syn.seq + 1,
            window=window,
            options=options,
            sport=80,
            dport=syn.src_port,
        )
        ack, _ = self.one()
        assert ack.flags == ACK and ack.ack == (PEER_ISN + 1) & 0xFFFFFFFF
        assert _state(ep) is State.ESTABLISHED and rec.established
        return ep, rec, syn


def _state(ep: TCPEndpoint) -> State:
    """Read the state afresh (keeps mypy from narrowing across calls that change it)."""
    return ep.state


def _recorded(ep: TCPEndpoint) -> Recorder:
    rec = Recorder()
    rec.attach(ep)
    return rec


# -- RFC 9293 section 3.10.7.1: CLOSED --------------------------------------------------------


def test_rfc9293_3_10_7_1_syn_to_closed_port_gets_rst_ack() -> None:
    """No ACK in the segment: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
    ctx = Ctx()
    ctx.inject(SYN, PEER_ISN, data=b"abc")
    rst, _ = ctx.one()
    assert rst.flags == RST | ACK
    assert rst.seq == 0 and rst.ack == seq_add(PEER_ISN, 4)
    assert ctx.count("segments.no_port") == 1


def test_rfc9293_3_10_7_1_ack_to_closed_port_gets_rst_from_its_ack() -> None:
    """ACK in the segment: <SEQ=SEG.ACK><CTL=RST>; a RST is never answered."""
    ctx = Ctx()
    ctx.inject(ACK, 5, 123456)
    rst, _ = ctx.one()
    assert rst.flags == RST and rst.seq == 123456
    ctx.inject(RST, 5)
    assert ctx.out() == []


# -- handshake and options ---------------------------------------------------------------------


def test_rfc9293_3_10_7_2_listen_answers_syn_with_our_options() -> None:
    """SYN-ACK acknowledges ISN+1 and echoes only options the peer offered (RFC 7323, 2018)."""
    ctx = Ctx()
    ctx.listener()
    offered = TCPOptions(mss=1200, window_scale=7, sack_permitted=True, timestamp=(777, 0))
    ctx.inject(SYN, PEER_ISN, options=offered)
    synack, _ = ctx.one()
    assert synack.flags == SYN | ACK and synack.ack == seq_add(PEER_ISN, 1)
    opts = synack.options
    assert opts.mss == 1460  # RFC 9293 section 3.7.1: MTU 1500 - 40
    assert opts.window_scale is not None and opts.sack_permitted
    assert opts.timestamp is not None and opts.timestamp[1] == 777
    ctx.inject(SYN, seq_add(PEER_ISN, 1000), sport=PEER_PORT + 1)  # no options offered
    plain, _ = ctx.one()
    assert plain.options.window_scale is None and not plain.options.sack_permitted
    assert plain.options.timestamp is None


def test_listen_drops_syn_fin_without_state() -> None:
    """SYN+FIN only comes from scanners: dropped in LISTEN and counted, no half-open entry."""
    ctx = Ctx()
    listener = ctx.listener()
    ctx.inject(SYN | FIN, PEER_ISN)
    assert ctx.out() == []
    assert ctx.count("listen.syn_fin_dropped") == 1
    assert not listener.half_open


@pytest.mark.parametrize(("mtu", "v6", "mss"), [(1000, False, 960), (1400, True, 1340)])
def test_rfc9293_3_7_1_mss_is_clamped_to_the_route_mtu(mtu: int, v6: bool, mss: int) -> None:
    """The MSS we announce is the route MTU less 40 (IPv4) or 60 (IPv6) bytes of headers."""
    ctx = Ctx(mtu=mtu, v6=v6)
    ctx.tcp.connect(a(ctx.peer), 80)
    syn, _ = ctx.one()
    assert syn.options.mss == mss


def test_send_mss_is_the_smaller_of_both_and_excludes_timestamps() -> None:
    """RFC 9293 section 3.7.1 and RFC 6691: segments fit the peer's MSS with options inside."""
    ctx = Ctx()
    ep, _, _ = ctx.active(TCPOptions(mss=1000, timestamp=(1, 1)))
    ep.send(b"z" * 5000)
    sizes = [len(data) for _, data in ctx.out()]
    assert sizes and max(sizes) == 1000 - 12


def test_rfc9293_3_5_handshake_data_on_third_segment_is_delivered() -> None:
    """Data on the ACK completing a passive open reaches the application after accept."""
    ctx = Ctx()
    listener = ctx.listener()
    ctx.inject(SYN, PEER_ISN)
    synack, _ = ctx.one()
    ctx.inject(ACK | PSH, PEER_ISN + 1, synack.seq + 1, b"early")
    ep = listener.accept()
    assert ep is not None
    rec = _recorded(ep)
    ep.resume_reading()
    assert rec.data == b"early"


def test_rfc9293_3_10_7_3_syn_sent_bad_ack_gets_rst_and_rst_refuses() -> None:
    """SYN-SENT: an unacceptable ACK draws a RST; a RST with an acceptable ACK refuses."""
    ctx = Ctx()
    rec = Recorder()
    ep = rec.attach(ctx.tcp.connect(a(ctx.peer), 80))
    syn, _ = ctx.one()
    ctx.inject(SYN | ACK, PEER_ISN, syn.seq + 5, sport=80, dport=syn.src_port)
    rst, _ = ctx.one()
    assert rst.flags == RST and rst.seq == seq_add(syn.seq, 5)
    assert _state(ep) is State.SYN_SENT
    ctx.inject(RST, 0, 0, sport=80, dport=syn.src_port)  # no ACK: ignored (RFC 5961 3.2)
    assert _state(ep) is State.SYN_SENT
    ctx.inject(RST | ACK, 0, syn.seq + 1, sport=80, dport=syn.src_port)
    assert _state(ep) is State.CLOSED
    assert isinstance(rec.error, ConnectionRefusedError)
    assert len(ctx.tcp.demux) == 0


# -- RFC 9293 3.10.7.4 and RFC 5961 --------------------------------------------------------------


def test_rfc9293_3_10_7_4_out_of_window_segment_is_acked_and_dropped() -> None:
    ctx = Ctx()
    _ep, rec, synack = ctx.passive()
    ctx.inject(ACK, PEER_ISN + 1 + 10_000_000, synack.seq + 1, b"far away")
    ack, _ = ctx.one()
    assert ack.flags == ACK and ack.ack == seq_add(PEER_ISN, 1)
    assert rec.data == b"" and ctx.count("segments.out_of_window") == 1


def test_rfc5961_3_2_in_window_rst_draws_challenge_ack_exact_rst_resets() -> None:
    ctx = Ctx()
    ep, rec, _ = ctx.passive()
    ctx.inject(RST, PEER_ISN + 100)  # in the window but not RCV.NXT
    ack, _ = ctx.one()
    assert ack.flags == ACK and ack.ack == seq_add(PEER_ISN, 1)
    assert _state(ep) is State.ESTABLISHED and ctx.count("challenge_acks") == 1
    ctx.inject(RST, PEER_ISN + 1 + 10_000_000)  # out of window: silently dropped
    assert ctx.out() == [] and _state(ep) is State.ESTABLISHED
    ctx.inject(RST, PEER_ISN + 1)
    assert _state(ep) is State.CLOSED
    assert isinstance(rec.error, ConnectionResetError)


def test_rfc5961_4_2_syn_in_established_draws_challenge_ack() -> None:
    ctx = Ctx()
    ep, _, _ = ctx.passive()
    ctx.inject(SYN, PEER_ISN + 50)
    ack, _ = ctx.one()
    assert ack.flags == ACK and ack.ack == seq_add(PEER_ISN, 1)
    assert _state(ep) is State.ESTABLISHED


def test_rfc5961_7_challenge_acks_are_rate_limited() -> None:
    ctx = Ctx(TCPConfig(challenge_ack_burst=3, challenge_ack_rate=1.0))
    _ep, _, _ = ctx.passive()
    for i in range(10):
        ctx.inject(SYN, PEER_ISN + 50 + i)
    assert len(ctx.out()) == 3
    assert ctx.count("challenge_acks_suppressed") == 7


def test_rfc9293_3_10_7_4_ack_of_unsent_data_is_acked_and_dropped() -> None:
    ctx = Ctx()
    _ep, rec, synack = ctx.passive()
    ctx.inject(ACK, PEER_ISN + 1, synack.seq + 1000, b"data")
    ack, _ = ctx.one()
    assert ack.ack == seq_add(PEER_ISN, 1)  # the data was not taken
    assert rec.data == b"" and ctx.count("segments.ack_unsent") == 1


def test_rfc7323_5_3_paws_drops_segments_with_old_timestamps() -> None:
    ctx = Ctx()
    _ep, rec, syn = ctx.active(TCPOptions(timestamp=(1000, 1)))
    iss = syn.seq
    ctx.inject(
        ACK,
        PEER_ISN + 1,
        iss + 1,
        b"new",
        options=TCPOptions(timestamp=(1001, 0)),
        sport=80,
        dport=syn.src_port,
    )
    ctx.inject(
        ACK,
        PEER_ISN + 4,
        iss + 1,
        b"old",
        options=TCPOptions(timestamp=(999, 0)),
        sport=80,
        dport=syn.src_port,
    )
    assert rec.data == b"new"
    assert ctx.count("segments.paws_rejected") == 1


# -- receiving ----------------------------------------------------------------------------------


def test_rfc5681_4_2_out_of_order_is_acked_at_once_with_sack_then_reassembled() -> None:
    ctx = Ctx()
    _ep, rec, synack = ctx.passive(TCPOptions(sack_permitted=True))
    base = seq_add(PEER_ISN, 1)
    ctx.inject(ACK, base + 10, synack.seq + 1, b"K" * 10)
    dup, _ = ctx.one()
    assert dup.ack == base
    assert dup.options.sack_blocks == ((seq_add(base, 10), seq_add(base, 20)),)  # RFC 2018
    assert rec.data == b""
    ctx.inject(ACK, base, synack.seq + 1, b"J" * 10)
    ack, _ = ctx.one()  # a filled hole is acknowledged at once
    assert ack.ack == seq_add(base, 20) and ack.options.sack_blocks == ()
    assert rec.data == b"J" * 10 + b"K" * 10


def test_reassembly_buffer_is_bounded_and_counted() -> None:
    ctx = Ctx(TCPConfig(reassembly_limit=100))
    _ep, rec, synack = ctx.passive()
    base = seq_add(PEER_ISN, 1)
    ctx.inject(ACK, base + 10, synack.seq + 1, b"x" * 80)
    ctx.inject(ACK, base + 200, synack.seq + 1, b"y" * 80)  # would exceed 100 bytes
    assert ctx.count("segments.reassembly_full") == 1
    ctx.inject(ACK, base, synack.seq + 1, b"w" * 10)
    assert rec.data == b"w" * 10 + b"x" * 80


def test_rfc9293_3_8_6_3_delayed_ack_and_every_second_full_segment() -> None:
    ctx = Ctx(TCPConfig(delayed_ack=0.1))
    ep, _rec, synack = ctx.passive()
    base = seq_add(PEER_ISN, 1)
    ctx.inject(ACK, base, synack.seq + 1, b"a" * 100)
    assert ctx.out() == []  # held back
    ctx.clock.advance(0.1)
    ack, _ = ctx.one()
    assert ack.ack == seq_add(base, 100) and ctx.count("delayed_acks") == 1
    ctx.inject(ACK, base + 100, synack.seq + 1, b"b" * 1460)
    assert ctx.out() == []
    ctx.inject(ACK, base + 1560, synack.seq + 1, b"c" * 1460)
    ack, _ = ctx.one()  # two full segments: ACK now
    assert ack.ack == seq_add(base, 3020)
    assert ctx.clock.pending == 0 or not ep.delack_timer.armed


def test_receive_window_is_the_free_buffer_and_reopens_after_reading() -> None:
    """RFC 9293 section 3.8.6.2.2: the window tracks free space; an update follows a read."""
    ctx = Ctx(TCPConfig(receive_buffer=4000, window_scale=False, delayed_ack=0.01))
    ep, rec, synack = ctx.passive()
    base = seq_add(PEER_ISN, 1)
    ep.pause_reading()
    ctx.inject(ACK, base, synack.seq + 1, b"q" * 1000)
    ctx.clock.advance(0.01)
    ack, _ = ctx.one()
    assert ack.window == 3000
    ctx.inject(ACK, base + 1000, synack.seq + 1, b"q" * 3000)
    zero, _ = ctx.one()
    assert zero.window == 0 and ep.readable == 4000
    ctx.inject(ACK, base + 4000, synack.seq + 1, b"r")  # beyond a zero window: dropped
    ctx.out()
    assert ep.readable == 4000
    ep.resume_reading()
    update, _ = ctx.one()
    assert update.window == 4000 and len(rec.data) == 4000


def test_rfc7323_2_window_scale_applies_after_the_handshake() -> None:
    ctx = Ctx(TCPConfig(receive_buffer=1 << 20))
    ep, _rec, synack = ctx.passive(TCPOptions(window_scale=2))
    shift = synack.options.window_scale
    assert shift is not None and shift >= 4 and synack.window == 0xFFFF
    ep.send(b"x")
    seg, _ = ctx.one()
    assert seg.window << shift >= (1 << 20) - (1 << shift)
    # The peer's window field is scaled by its shift of 2.
    ctx.inject(ACK, seq_add(PEER_ISN, 1), seg.seq + 1, window=1000)
    assert ep.snd_wnd == 4000


# -- sending ------------------------------------------------------------------------------------


def test_rfc6298_syn_retransmits_back_off_then_time_out() -> None:
    ctx = Ctx(TCPConfig(syn_retries=3))
    rec = Recorder()
    rec.attach(ctx.tcp.connect(a(ctx.peer), 80))
    first, _ = ctx.one()
    times = []
    for _ in range(3):
        ctx.clock.advance_to(ctx.clock.next_deadline() or 0)
        syn, _ = ctx.one()
        assert syn.flags == SYN and syn.seq == first.seq
        times.append(ctx.clock.now())
    assert times == [1.0, 3.0, 7.0]  # RFC 6298 sections 2.1 and 5.5: 1 s, doubled
    ctx.clock.run_until_idle()
    assert isinstance(rec.error, TimeoutError) and rec.error.errno == errno.ETIMEDOUT
    assert len(ctx.tcp.demux) == 0 and ctx.clock.pending == 0


def test_rfc6298_data_is_retransmitted_and_the_connection_times_out() -> None:
    ctx = Ctx(TCPConfig(max_retries=3, min_rto=0.5))
    ep, rec, _syn = ctx.active()
    ep.send(b"payload")
    seg, data = ctx.one()
    assert data == b"payload"
    ctx.clock.advance_to(ctx.clock.next_deadline() or 0)
    again, data2 = ctx.one()
    assert again.seq == seg.seq and data2 == b"payload"
    assert ctx.count("retransmits") == 1
    ctx.clock.run_until_idle()
    segs = ctx.out()
    assert segs[-1][0].flags & RST
    assert isinstance(rec.error, TimeoutError)
    assert ctx.clock.pending == 0


def test_rfc5681_3_2_three_duplicate_acks_trigger_fast_retransmit() -> None:
    ctx = Ctx()
    ep, _rec, syn = ctx.active(TCPOptions(mss=1000))
    ep.send(b"m" * 5000)
    segs = ctx.out()
    assert len(segs) == 5
    first = segs[0][0].seq
    for _ in range(3):
        ctx.inject(ACK, PEER_ISN + 1, first, sport=80, dport=syn.src_port)
    ((re, data),) = ctx.out()
    assert re.seq == first and len(data) == 1000
    assert ctx.count("fast_retransmits") == 1 and ctx.count("timeouts") == 0
    ctx.inject(ACK, PEER_ISN + 1, first + 5000, sport=80, dport=syn.src_port)
    assert ep.in_flight == 0 and ctx.count("recoveries") == 1


def test_rfc6675_sack_scoreboard_resends_only_the_holes() -> None:
    ctx = Ctx()
    ep, _rec, syn = ctx.active(TCPOptions(mss=1000, sack_permitted=True))
    ep.send(b"s" * 6000)
    segs = ctx.out()
    first = segs[0][0].seq
    sport: dict[str, Any] = {"sport": 80, "dport": syn.src_port}
    # Segments 0 and 2 lost; 1, 3, 4, 5 arrived.
    blocks: list[tuple[int, int]] = []
    for lo, hi in ((1000, 2000), (3000, 4000), (3000, 5000), (3000, 6000)):
        blocks = [(first + 1000, first + 2000)] + (
            [(first + 3000, first + hi)] if lo == 3000 else []
        )
        ctx.inject(ACK, PEER_ISN + 1, first, options=TCPOptions(sack_blocks=tuple(blocks)), **sport)
    resent = sorted((h.seq - first) & 0xFFFFFFFF for h, d in ctx.out() if d)
    assert resent == [0, 2000]


def test_rfc9293_3_7_4_nagle_holds_small_segments_while_data_is_in_flight() -> None:
    for nodelay, expected in ((False, 1), (True, 2)):
        ctx = Ctx(TCPConfig(nodelay=nodelay))
        ep, _, syn = ctx.active()
        ep.send(b"a")
        ep.send(b"b")
        assert len(ctx.out()) == expected
        if not nodelay:
            ctx.inject(ACK, PEER_ISN + 1, syn.seq + 2, sport=80, dport=syn.src_port)
            ((_seg, data),) = ctx.out()
            assert data == b"b"


def test_rfc9293_3_8_6_1_zero_window_probes_until_the_window_opens() -> None:
    ctx = Ctx(TCPConfig(persist_min=0.5))
    ep, _, syn = ctx.active(window=0)
    ep.send(b"waiting")
    assert ctx.out() == []
    ctx.clock.advance(0.5)
    probe, data = ctx.one()
    assert probe.seq == syn.seq and data == b""  # SND.UNA - 1: draws an ACK
    assert ctx.count("window_probes") == 1
    ctx.clock.advance(1.0)  # backed off to 1 s
    assert len(ctx.out()) == 1
    ctx.inject(ACK, PEER_ISN + 1, syn.seq + 1, window=100, sport=80, dport=syn.src_port)
    ((_seg, data),) = ctx.out()
    assert data == b"waiting"


def test_send_buffer_is_bounded() -> None:
    ctx = Ctx(TCPConfig(send_buffer=10_000))
    ep, _, _ = ctx.active(window=0)
    assert ep.send(b"x" * 25_000) == 10_000
    assert ep.send_space == 0 and ep.send(b"more") == 0


# -- closing --------------------------------------------------------------------------------------


def test_rfc9293_3_6_active_close_time_wait_acks_retransmitted_fin() -> None:
    ctx = Ctx(TCPConfig(msl=10))
    ep, rec, syn = ctx.active()
    sp: dict[str, Any] = {"sport": 80, "dport": syn.src_port}
    ep.close()
    fin, _ = ctx.one()
    assert fin.flags == FIN | ACK and _state(ep) is State.FIN_WAIT_1
    ctx.inject(ACK, PEER_ISN + 1, fin.seq + 1, **sp)
    assert _state(ep) is State.FIN_WAIT_2 and rec.closed  # the application is done
    ctx.inject(FIN | ACK, PEER_ISN + 1, fin.seq + 1, **sp)
    ack, _ = ctx.one()
    assert _state(ep) is State.TIME_WAIT and ack.ack == seq_add(PEER_ISN, 2)
    ctx.clock.advance(5)
    ctx.inject(FIN | ACK, PEER_ISN + 1, fin.seq + 1, **sp)  # our ACK was lost
    again, _ = ctx.one()
    assert again.ack == seq_add(PEER_ISN, 2)
    ctx.clock.advance(19.9)
    assert _state(ep) is State.TIME_WAIT  # 2 MSL restarted by the retransmitted FIN
    ctx.clock.advance(0.2)
    assert _state(ep) is State.CLOSED and ctx.clock.pending == 0 and len(ctx.tcp.demux) == 0


def test_rfc9293_3_10_4_half_close_still_receives() -> None:
    ctx = Ctx()
    ep, rec, syn = ctx.active()
    sp: dict[str, Any] = {"sport": 80, "dport": syn.src_port}
    ep.shutdown()
    fin, _ = ctx.one()
    assert fin.flags & FIN
    with pytest.raises(BrokenPipeError):
        ep.send(b"no")
    ctx.inject(ACK | PSH, PEER_ISN + 1, fin.seq + 1, b"still here", **sp)
    ctx.inject(FIN | ACK, PEER_ISN + 11, fin.seq + 1, **sp)
    assert rec.data == b"still here" and rec.eof and _state(ep) is State.TIME_WAIT


def test_rfc1122_4_2_2_13_data_after_close_resets() -> None:
    ctx = Ctx()
    ep, _rec, syn = ctx.active()
    ep.close()
    fin, _ = ctx.one()
    ctx.inject(ACK, PEER_ISN + 1, fin.seq, b"late", sport=80, dport=syn.src_port)
    rst, _ = ctx.one()
    assert rst.flags & RST and _state(ep) is State.CLOSED
    assert ctx.count("data_after_close") == 1


def test_keepalive_probes_then_times_out() -> None:
    ctx = Ctx(TCPConfig(keepalive=True, keepalive_idle=10, keepalive_interval=2, keepalive_count=3))
    _ep, rec, syn = ctx.active()
    ctx.clock.advance(10)
    probe, _ = ctx.one()
    assert probe.seq == syn.seq and ctx.count("keepalives") == 1
    ctx.clock.run_until_idle()
    assert isinstance(rec.error, TimeoutError) and ctx.count("keepalives") == 3


# -- listener: backlog and SYN cookies (RFC 4987) --------------------------------------------------


def test_backlog_full_answers_with_syn_cookie_that_completes() -> None:
    ctx = Ctx()
    listener = ctx.listener(backlog=1)
    ctx.inject(SYN, 1000, sport=1)
    ctx.one()
    ctx.inject(SYN, 5000, sport=2, options=TCPOptions(mss=1300))
    cookie, _ = ctx.one()
    assert cookie.flags == SYN | ACK and cookie.options.mss == 1460
    assert ctx.count("listen.backlog_full") == 1 and ctx.count("syn_cookies.sent") == 1
    assert len(listener.half_open) == 1  # the cookie left no state
    ctx.inject(ACK, 5001, cookie.seq + 1, b"hi", sport=2)
    assert ctx.count("syn_cookies.accepted") == 1
    ep = listener.accept()
    assert ep is not None and ep.remote_port == 2 and ep.mss == 1220  # cookie table value
    rec = _recorded(ep)
    ep.resume_reading()
    assert rec.data == b"hi"
    ctx.inject(ACK, 9001, cookie.seq + 77, sport=3)  # a forged cookie
    rst, _ = next(s for s in ctx.out() if s[0].flags & RST)
    assert rst.seq == seq_add(cookie.seq, 77) and ctx.count("syn_cookies.invalid") == 1


def test_backlog_full_without_cookies_drops_and_counts() -> None:
    ctx = Ctx(TCPConfig(syn_cookies=False))
    ctx.listener(backlog=1)
    ctx.inject(SYN, 1000, sport=1)
    ctx.inject(SYN, 2000, sport=2)
    assert len(ctx.out()) == 1
    assert ctx.count("listen.syn_dropped") == 1


def test_half_open_connection_reset_returns_to_listen() -> None:
    ctx = Ctx()
    listener = ctx.listener()
    ctx.inject(SYN, 1000)
    _synack, _ = ctx.one()
    ctx.inject(RST, 1001)
    assert not listener.half_open and listener.accept() is None
    assert len(ctx.tcp.demux) == 1  # only the listener


# -- ICMP -----------------------------------------------------------------------------------------


def _icmp_about(ctx: Ctx, quoted: TCPHeader, code: int, mtu: int = 0) -> None:
    src, dst = a(ctx.local), a(ctx.peer)
    # The quote is of a segment as TCP sends it: with DF (RFC 1191 section 3).
    inner = IPv4Header(
        src=src, dst=dst, protocol=IPPROTO_TCP, ttl=64, ident=2, dont_fragment=True
    ).pack(build_tcp(src, dst, quoted))
    msg = icmpv4.ICMPv4Message(icmpv4.DEST_UNREACHABLE, code, mtu, inner[:28])
    ctx.link.inject(
        IPv4Header(src=dst, dst=src, protocol=IPPROTO_ICMP, ttl=64, ident=3).pack(msg.build())
    )


def test_icmp_unreachable_in_syn_sent_is_a_hard_error() -> None:
    ctx = Ctx()
    rec = Recorder()
    rec.attach(ctx.tcp.connect(a(ctx.peer), 80))
    syn, _ = ctx.one()
    _icmp_about(ctx, syn, icmpv4.PORT_UNREACHABLE)
    assert isinstance(rec.error, ConnectionRefusedError)
    assert ctx.count("icmp.hard_errors") == 1


def test_icmp_unreachable_when_established_is_a_soft_error() -> None:
    ctx = Ctx()
    ep, _rec, _syn = ctx.active()
    ep.send(b"data")
    seg, _ = ctx.one()
    _icmp_about(ctx, seg, icmpv4.HOST_UNREACHABLE)
    assert _state(ep) is State.ESTABLISHED and ctx.count("icmp.soft_errors") == 1
    forged = TCPHeader(seg.src_port, seg.dst_port, seg.seq + 100000, 0, ACK, 0)
    _icmp_about(ctx, forged, icmpv4.HOST_UNREACHABLE)
    assert ctx.count("icmp.out_of_window") == 1  # RFC 5927 section 4.1


def test_icmp_fragmentation_needed_lowers_mss_and_resends() -> None:
    """RFC 1191 / RFC 8201: a smaller path MTU shrinks the segments and resends at once."""
    ctx = Ctx()
    ep, _rec, _syn = ctx.active(TCPOptions(mss=1460))
    ep.send(b"p" * 2920)
    segs = ctx.out()
    assert [len(d) for _, d in segs] == [1460, 1460]
    _icmp_about(ctx, segs[0][0], icmpv4.FRAGMENTATION_NEEDED, mtu=1000)
    sizes = [len(d) for _, d in ctx.out()]
    assert sizes and max(sizes) == 960 and ep.mss == 960
    assert ctx.count("icmp.pmtu_reductions") == 1


# -- ISN (RFC 6528) --------------------------------------------------------------------------------


def test_rfc6528_isn_depends_on_the_4_tuple_and_the_clock() -> None:
    ctx = Ctx()
    isn = ctx.tcp.isn
    loc, r = a(STACK4), a(HOST4)
    first = isn(loc, 1000, r, 80)
    assert isn(loc, 1000, r, 80) == first
    assert isn(loc, 1001, r, 80) != first
    ctx.clock.advance(1.0)
    assert (isn(loc, 1000, r, 80) - first) & 0xFFFFFFFF == 250_000  # 4 microsecond ticks
    other = Ctx()
    other.stack.rng.seed(99)
    assert add_tcp(other.stack).isn(loc, 1000, r, 80) != first  # a different secret


def test_rfc1122_4_2_3_10_segment_to_multicast_is_dropped_silently() -> None:
    from netstack.header.ipv6 import IPv6Header
    from netstack.header.numbers import IPPROTO_TCP as TCP

    ctx = Ctx(v6=True)
    ctx.listener()
    src, group = a(ctx.peer), a("ff02::1")
    syn = TCPHeader(PEER_PORT, 80, PEER_ISN, 0, SYN, 65535)
    ctx.link.inject(
        IPv6Header(src=src, dst=group, next_header=TCP).pack(build_tcp(src, group, syn))
    )
    assert ctx.out() == []
    assert ctx.count("segments.multicast_dropped") == 1
