"""Loss recovery behind one interface: NewReno (RFC 5681, RFC 6582) and SACK (RFC 6675).

Recovery decides *that* segments were lost and *which* to resend; the congestion controller
(:mod:`.congestion`) decides how much may be in flight. Both implementations share the phases
and the retransmission loop:

* ``FAST``: fast retransmit and fast recovery, entered on the third duplicate ACK (RFC 5681
  section 3.2) or, with SACK, when more than 2 SMSS above SND.UNA are SACKed (RFC 6675
  section 5, IsLost); it ends when SND.UNA passes the recovery point (SND.NXT at entry);
* ``TIMEOUT``: after a retransmission timeout everything in flight is presumed lost and resent
  in order from SND.UNA (RFC 6298 section 5, RFC 5681 section 3.1), skipping SACKed ranges.

They differ in what a partial ACK and a duplicate ACK mean: :class:`RenoRecovery` resends one
hole per partial ACK and inflates the window by one segment per duplicate ACK (RFC 6582);
:class:`SACKRecovery` keeps a scoreboard and resends every hole below the highest SACKed byte
as the estimated ``pipe`` allows, so all holes of a window go out in about one RTT (RFC 6675).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, Protocol

from netstack.header.seqnum import seq_add, seq_geq, seq_gt, seq_lt, seq_max, seq_min, seq_sub
from netstack.transport.tcp.sack import Scoreboard

if TYPE_CHECKING:
    from netstack.counters import Counters
    from netstack.transport.tcp.congestion import CongestionControl
    from netstack.transport.tcp.sendbuffer import SendBuffer
    from netstack.transport.tcp.timers import RTTEstimator, Timer


class Phase(enum.Enum):
    """Whether, and why, the sender is resending."""

    NONE = 0
    FAST = 1  # fast retransmit / fast recovery (RFC 5681 3.2, RFC 6582, RFC 6675)
    TIMEOUT = 2  # after a retransmission timeout (RFC 6298 section 5, RFC 5681 3.1)


DUPACK_THRESHOLD = 3
"""RFC 5681 section 3.2 (DupThresh of RFC 6675): duplicate ACKs that signal a loss."""


class SendSide(Protocol):
    """What loss recovery needs of its connection's send side (a :class:`.sender.Sender`).

    The send sequence space, the segment size, the congestion controller it reports to, the
    buffer and FIN it resends from, the RTT sample it cancels (Karn) and the retransmission
    timer it arms.
    """

    una: int
    nxt: int
    mss: int
    cc: CongestionControl
    counters: Counters
    buf: SendBuffer
    fin_seq: int | None
    rtt_seq: int | None
    rtt: RTTEstimator
    rexmit_timer: Timer

    def send_range(self, seq: int, n: int, fin: bool, *, retransmit: bool) -> None:
        """Send the ``n`` queued bytes at ``seq`` (with FIN if ``fin``), new or resent."""


class LossRecovery:
    """The interface the sender drives, and the state both implementations share.

    Bytes in [``rexmit_nxt``, ``loss_end``) are presumed lost and not yet resent;
    ``point`` is the recovery point and ``recover`` RFC 6582's highest sequence number sent
    before the last timeout.
    """

    name: ClassVar[str] = ""
    """``TCPEndpoint.info()["loss_recovery"]``."""

    __slots__ = ("dupacks", "loss_end", "phase", "point", "recover", "rexmit_nxt", "snd")

    def __init__(self, snd: SendSide) -> None:
        self.snd = snd
        self.phase = Phase.NONE
        self.point = snd.una
        self.recover = snd.una
        self.rexmit_nxt = snd.una
        self.loss_end = snd.una
        self.dupacks = 0

    # -- what the sender reads -----------------------------------------------------------------

    @property
    def sacked_bytes(self) -> int:
        """Bytes above SND.UNA the receiver reported holding (0 without SACK)."""
        return 0

    def sack_ranges(self) -> list[tuple[int, int]]:
        """Return the SACKed ranges as (left, right) sequence numbers (empty without SACK)."""
        return []

    def pipe(self) -> int:
        """Bytes estimated to be in the network (RFC 6675 section 4, "pipe")."""
        raise NotImplementedError

    # -- events --------------------------------------------------------------------------------

    def reset(self, una: int) -> None:
        """Our SYN was acknowledged: start the bookkeeping at SND.UNA."""
        self.point = self.recover = self.rexmit_nxt = self.loss_end = una

    def on_sack(self, blocks: Iterable[tuple[int, int]]) -> None:
        """Take the SACK blocks of one ACK (RFC 2018 section 5); ignored without SACK."""

    def on_ack_advanced(self, ack: int, acked: int) -> None:
        """SND.UNA moved to ``ack`` (``acked`` new bytes): grow cwnd, end or continue recovery."""
        snd = self.snd
        if seq_geq(ack, self.recover):
            self.recover = ack  # RFC 6582: past the timed-out window
        phase = self.phase
        self.dupacks = 0
        if phase is Phase.NONE:
            snd.cc.on_ack(acked, snd.mss)
        elif seq_geq(ack, self.point):
            if phase is Phase.FAST:
                snd.cc.on_recovery_exit(seq_sub(snd.nxt, ack), snd.mss)
            self.phase = Phase.NONE
            snd.counters.inc("recoveries")
        else:
            # A partial ACK (RFC 6582 section 3.2 step 4, RFC 6675 section 5 step C).
            self.rexmit_nxt = seq_max(self.rexmit_nxt, ack)
            if phase is Phase.TIMEOUT:
                snd.cc.on_ack(acked, snd.mss)  # slow start again (RFC 5681 section 3.1)
            else:
                self._partial_ack(ack)

    def on_duplicate_ack(self) -> None:
        """Count a duplicate ACK (RFC 5681 section 2); enter fast recovery on a loss."""
        self.dupacks += 1
        snd = self.snd
        snd.counters.inc("dupacks")
        phase = self.phase
        if phase is Phase.NONE:
            if seq_lt(snd.una, self.recover):
                return  # RFC 6582 section 3.2 step 2: still inside a timed-out window
            if self._loss_detected():
                self._enter_fast_recovery()
        elif phase is Phase.FAST:
            self._dupack_in_recovery()

    def on_timeout(self) -> None:
        """Presume everything in flight lost after a timeout (RFC 5681 3.1, RFC 6582 3.2)."""
        snd = self.snd
        first = self.phase is not Phase.TIMEOUT
        snd.cc.on_timeout(seq_sub(snd.nxt, snd.una), snd.mss, first)
        self.phase = Phase.TIMEOUT
        self.point = self.recover = self.loss_end = snd.nxt
        self.rexmit_nxt = snd.una
        self.dupacks = 0

    def on_path_mtu(self) -> None:
        """Resend everything in flight at a smaller MSS, cwnd untouched (RFC 8201)."""
        snd = self.snd
        if self.phase is Phase.NONE:
            self.phase = Phase.TIMEOUT
            self.point = snd.nxt
        self.rexmit_nxt = snd.una
        self.loss_end = snd.nxt

    def retransmit(self, *, force: bool) -> bool:
        """Resend the next lost, un-SACKed segment below the loss mark; False if none.

        Without ``force`` only if the pipe leaves room in cwnd (RFC 6675 section 5 step 4).
        """
        if not seq_lt(self.rexmit_nxt, self.loss_end):
            return False
        hole = self._next_hole(self.rexmit_nxt, self.loss_end)
        if hole is None:
            self.rexmit_nxt = self.loss_end
            return False
        snd = self.snd
        if not force and self.pipe() >= snd.cc.cwnd:
            return False
        start, end = hole
        n = max(min(seq_sub(end, start), snd.mss, seq_sub(snd.buf.end, start)), 0)
        fin_seq = snd.fin_seq
        fin = fin_seq is not None and seq_geq(seq_add(start, n), fin_seq)
        snd.send_range(start, n, fin, retransmit=True)
        nxt = seq_add(start, n + (1 if fin else 0))
        self.rexmit_nxt = nxt if seq_gt(nxt, start) else seq_add(start, 1)
        snd.rexmit_timer.start_if_stopped(snd.rtt.rto)
        return True

    # -- what the implementations differ in ----------------------------------------------------

    def _loss_detected(self) -> bool:
        return self.dupacks >= DUPACK_THRESHOLD

    def _enter_fast_recovery(self) -> None:
        """RFC 5681 section 3.2 / RFC 6675 section 5: reduce cwnd, resend the first hole."""
        snd = self.snd
        snd.counters.inc("fast_retransmits")
        snd.cc.on_fast_retransmit(seq_sub(snd.nxt, snd.una), snd.mss)
        self.phase = Phase.FAST
        self.point = snd.nxt
        self.rexmit_nxt = snd.una
        self.loss_end = self._loss_mark(seq_min(seq_add(snd.una, snd.mss), snd.nxt))
        snd.rtt_seq = None  # Karn: no samples from retransmitted data
        self.retransmit(force=True)

    def _loss_mark(self, first_segment_end: int) -> int:
        """Where the bytes presumed lost end on entering fast recovery."""
        return first_segment_end

    def _dupack_in_recovery(self) -> None:
        pass

    def _partial_ack(self, ack: int) -> None:
        pass

    def _next_hole(self, start: int, limit: int) -> tuple[int, int] | None:
        return start, limit


class RenoRecovery(LossRecovery):
    """NewReno fast recovery without SACK (RFC 5681 section 3.2, RFC 6582 section 3.2).

    Each duplicate ACK means a segment left the network, so it adds one SMSS of credit to the
    pipe (the window inflation of RFC 5681 step 4); each partial ACK resends the one next hole.
    """

    name = "reno"

    __slots__ = ("credit",)

    def __init__(self, snd: SendSide) -> None:
        super().__init__(snd)
        self.credit = 0  # bytes the duplicate ACKs showed have left the network

    def pipe(self) -> int:
        """Return flight size less the duplicate-ACK credit and the bytes presumed lost."""
        snd = self.snd
        pipe = seq_sub(snd.nxt, snd.una) - self.credit
        if self.phase is not Phase.NONE:
            lost = seq_sub(self.loss_end, self.rexmit_nxt)
            if lost > 0:
                pipe -= lost
        return pipe if pipe > 0 else 0

    def on_timeout(self) -> None:
        """Presume everything in flight lost; the duplicate-ACK credit goes."""
        super().on_timeout()
        self.credit = 0

    def _enter_fast_recovery(self) -> None:
        # RFC 5681 section 3.2 step 3: the three duplicate ACKs inflate cwnd by 3 SMSS.
        self.credit = DUPACK_THRESHOLD * self.snd.mss
        super()._enter_fast_recovery()

    def _dupack_in_recovery(self) -> None:
        self.credit += self.snd.mss  # RFC 5681 section 3.2 step 4: another segment left

    def _partial_ack(self, ack: int) -> None:
        # RFC 6582 section 3.2 step 4: resend the first unacknowledged segment, deflate.
        snd = self.snd
        self.loss_end = seq_max(self.loss_end, seq_min(seq_add(ack, snd.mss), snd.nxt))
        self.credit = 0
        self.retransmit(force=True)


class SACKRecovery(LossRecovery):
    """SACK-based loss recovery with a scoreboard (RFC 6675 sections 4 and 5, RFC 2018).

    Everything below the highest SACKed byte that is not SACKed counts as lost; the sender
    resends those holes, lowest first, whenever the pipe is below cwnd.
    """

    name = "sack"

    __slots__ = ("scoreboard",)

    def __init__(self, snd: SendSide) -> None:
        super().__init__(snd)
        self.scoreboard = Scoreboard(snd.una)

    @property
    def sacked_bytes(self) -> int:
        """Bytes the scoreboard holds as SACKed."""
        return self.scoreboard.sacked_bytes

    def sack_ranges(self) -> list[tuple[int, int]]:
        """Return the scoreboard's ranges as sequence numbers."""
        return self.scoreboard.ranges()

    def pipe(self) -> int:
        """Return flight size less SACKed bytes and holes presumed lost (RFC 6675 section 4)."""
        snd = self.snd
        scoreboard = self.scoreboard
        pipe = seq_sub(snd.nxt, snd.una) - scoreboard.sacked_bytes
        if self.phase is not Phase.NONE and seq_lt(self.rexmit_nxt, self.loss_end):
            pipe -= scoreboard.unsacked_between(self.rexmit_nxt, self.loss_end)
        return pipe if pipe > 0 else 0

    def reset(self, una: int) -> None:
        """Start the bookkeeping and an empty scoreboard at SND.UNA."""
        super().reset(una)
        self.scoreboard.reset(una)

    def on_sack(self, blocks: Iterable[tuple[int, int]]) -> None:
        """Merge the blocks into the scoreboard; in recovery more may now count as lost."""
        scoreboard = self.scoreboard
        scoreboard.update(blocks, self.snd.nxt)
        if self.phase is Phase.FAST:
            highest = scoreboard.highest
            if highest is not None:
                self.loss_end = seq_max(self.loss_end, highest)  # RFC 6675 section 4 IsLost

    def on_ack_advanced(self, ack: int, acked: int) -> None:
        """Drop what the cumulative ACK covers from the scoreboard, then as Reno."""
        self.scoreboard.advance(ack)
        super().on_ack_advanced(ack, acked)

    def _loss_detected(self) -> bool:
        # RFC 6675 section 5: DupThresh duplicate ACKs, or more than (DupThresh - 1) * SMSS
        # SACKed above SND.UNA (IsLost(SND.UNA)).
        return (
            self.dupacks >= DUPACK_THRESHOLD
            or self.scoreboard.sacked_bytes > (DUPACK_THRESHOLD - 1) * self.snd.mss
        )

    def _loss_mark(self, first_segment_end: int) -> int:
        # RFC 6675 section 5 step 4: every un-SACKed byte below the highest SACKed one.
        highest = self.scoreboard.highest
        return first_segment_end if highest is None else seq_max(first_segment_end, highest)

    def _next_hole(self, start: int, limit: int) -> tuple[int, int] | None:
        return self.scoreboard.next_hole(start, limit)
