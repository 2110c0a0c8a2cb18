"""Loss recovery: the same scripted losses through Reno (RFC 5681, RFC 6582) and SACK (RFC 6675).

The test plays the receiver. The stack sends ten 1000-byte segments (its initial window); a
script says which transmissions the "network" drops; every segment that arrives is ACKed at
once, with SACK blocks when SACK was negotiated. Each retransmission is recorded with the
cumulative ACK the stack had seen when it sent it, which shows the difference between the two:
NewReno learns of the next hole only from a partial ACK, one hole per round trip; SACK resends
every hole below the highest SACKed byte within the first round trip.
"""

from __future__ import annotations

from typing import Any

import pytest

from netstack.header.tcp import ACK, TCPOptions
from netstack.transport.tcp.recovery import RenoRecovery, SACKRecovery
from tests.test_tcp_segments import PEER_ISN, Ctx

SEG = 1000
TOTAL = 10 * SEG  # exactly the initial window (RFC 6928): all of it leaves at once


class Receiver:
    """The peer: holds what arrives, ACKs every segment, loses what the script says."""

    def __init__(self, sack: bool, lose: dict[int, int]) -> None:
        self.ctx = Ctx()
        self.sack = sack
        options = TCPOptions(mss=SEG, sack_permitted=sack)
        self.ep, _rec, syn = self.ctx.active(options)
        self.first = (syn.seq + 1) & 0xFFFFFFFF
        self.ports: dict[str, Any] = {"sport": 80, "dport": syn.src_port}
        self.lose = dict(lose)  # offset -> how many of its transmissions are lost
        self.held: dict[int, bytes] = {}  # offset -> data, above rcv_nxt
        self.stream = bytearray()  # in order
        self.last_block: tuple[int, int] | None = None
        self.sent: dict[int, int] = {}  # offset -> transmissions seen
        self.retransmissions: list[tuple[int, int]] = []  # (offset, cumulative ACK when sent)
        self.acked = 0  # the last cumulative ACK (an offset) the stack was sent

    def offset(self, seq: int) -> int:
        return (seq - self.first) & 0xFFFFFFFF

    def collect(self) -> list[tuple[int, bytes]]:
        """Take the stack's new segments, noting which are retransmissions."""
        out = []
        for hdr, data in self.ctx.out():
            if not data:
                continue
            off = self.offset(hdr.seq)
            if off in self.sent:
                self.retransmissions.append((off, self.acked))
            self.sent[off] = self.sent.get(off, 0) + 1
            out.append((off, data))
        return out

    def blocks(self) -> tuple[tuple[int, int], ...]:
        """SACK blocks for what is held (RFC 2018 section 4: the newest block first)."""
        ranges: list[list[int]] = []
        for off in sorted(self.held):
            if ranges and ranges[-1][1] == off:
                ranges[-1][1] = off + len(self.held[off])
            else:
                ranges.append([off, off + len(self.held[off])])
        first = self.first
        blocks = [((first + a) & 0xFFFFFFFF, (first + b) & 0xFFFFFFFF) for a, b in ranges]
        if self.last_block is not None:
            last = self.last_block
            blocks.sort(key=lambda b: 0 if self.offset(b[0]) <= last[0] < self.offset(b[1]) else 1)
        return tuple(blocks[:4])

    def arrive(self, off: int, data: bytes) -> None:
        """One segment reaches the peer, which ACKs it at once."""
        rcv_nxt = len(self.stream)
        if off == rcv_nxt:
            self.stream += data
            while len(self.stream) in self.held:
                self.stream += self.held.pop(len(self.stream))
        elif off > rcv_nxt:
            self.held[off] = data
            self.last_block = (off, off + len(data))
        self.acked = len(self.stream)
        options = TCPOptions(sack_blocks=self.blocks()) if self.sack and self.held else None
        self.ctx.inject(
            ACK,
            PEER_ISN + 1,
            self.first + self.acked,
            options=options or TCPOptions(),
            **self.ports,
        )

    def run(self, payload: bytes) -> None:
        """Send ``payload`` and carry segments (losing some) until all of it is acknowledged."""
        self.ep.send(payload)
        queue = self.collect()
        for _ in range(1000):
            if not queue:
                if self.acked == len(payload):
                    return
                clock = self.ctx.clock
                clock.advance_to(clock.next_deadline() or 0)  # a retransmission timeout
                queue = self.collect()
                continue
            off, data = queue.pop(0)
            if self.lose.get(off, 0) > 0:
                self.lose[off] -= 1
            else:
                self.arrive(off, data)
            queue += self.collect()
        raise AssertionError("the transfer did not finish")


def payload() -> bytes:
    return bytes((i * 7 + i // SEG) % 251 for i in range(TOTAL))


def transfer(sack: bool, lose: dict[int, int]) -> Receiver:
    peer = Receiver(sack, lose)
    recovery = peer.ep.snd.recovery
    assert isinstance(recovery, SACKRecovery if sack else RenoRecovery)
    assert peer.ep.info()["loss_recovery"] == ("sack" if sack else "reno")
    data = payload()
    peer.run(data)
    assert bytes(peer.stream) == data  # every byte, in order, exactly once
    assert peer.ep.in_flight == 0 and not peer.ep.info()["in_recovery"]
    return peer


@pytest.mark.parametrize("sack", [False, True], ids=["reno", "sack"])
def test_one_lost_segment_is_resent_once_by_fast_retransmit(sack: bool) -> None:
    """RFC 5681 section 3.2 / RFC 6675 section 5: the third duplicate ACK (or, with SACK,
    more than 2 SMSS SACKed) resends the one lost segment; the next ACK covers everything."""
    peer = transfer(sack, {2 * SEG: 1})
    assert peer.retransmissions == [(2 * SEG, 2 * SEG)]
    assert peer.ctx.count("fast_retransmits") == 1 and peer.ctx.count("timeouts") == 0
    assert peer.ctx.count("retransmits") == 1 and peer.ctx.count("recoveries") == 1


def test_reno_repairs_two_holes_one_per_partial_ack() -> None:
    """RFC 6582 section 3.2 step 4: without SACK the sender learns of the second hole only from
    the partial ACK that the first retransmission draws, and resends it then."""
    peer = transfer(False, {2 * SEG: 1, 5 * SEG: 1})
    assert peer.retransmissions == [(2 * SEG, 2 * SEG), (5 * SEG, 5 * SEG)]
    assert peer.ctx.count("fast_retransmits") == 1 and peer.ctx.count("timeouts") == 0
    assert peer.ctx.count("recoveries") == 1  # one recovery episode covered both


def test_sack_repairs_two_holes_in_one_round_trip() -> None:
    """RFC 6675 section 5: both holes are below the highest SACKed byte, so both go out while
    the cumulative ACK still stands at the first hole."""
    peer = transfer(True, {2 * SEG: 1, 5 * SEG: 1})
    assert peer.retransmissions == [(2 * SEG, 2 * SEG), (5 * SEG, 2 * SEG)]
    assert peer.ctx.count("fast_retransmits") == 1 and peer.ctx.count("timeouts") == 0
    assert peer.ctx.count("recoveries") == 1


@pytest.mark.parametrize("sack", [False, True], ids=["reno", "sack"])
def test_a_lost_retransmission_is_repaired_by_the_timeout(sack: bool) -> None:
    """RFC 6298 section 5 and RFC 5681 section 3.1: when the fast retransmission is lost too,
    no further duplicate ACKs can help; the retransmission timer resends the segment (from
    SND.UNA, skipping what is SACKed) and the transfer completes."""
    peer = transfer(sack, {2 * SEG: 2})
    assert peer.retransmissions == [(2 * SEG, 2 * SEG), (2 * SEG, 2 * SEG)]
    assert peer.ctx.count("fast_retransmits") == 1 and peer.ctx.count("timeouts") == 1
    assert peer.ctx.count("retransmits") == 2


@pytest.mark.parametrize("sack", [False, True], ids=["reno", "sack"])
def test_three_holes_are_each_resent_once(sack: bool) -> None:
    """Three holes in one window: both recoveries resend exactly the lost segments, once each;
    Reno needs a partial ACK per hole, SACK none."""
    lost = (1 * SEG, 4 * SEG, 7 * SEG)
    peer = transfer(sack, dict.fromkeys(lost, 1))
    assert [off for off, _ in peer.retransmissions] == list(lost)
    acks_seen = [ack for _, ack in peer.retransmissions]
    assert acks_seen == ([SEG, SEG, SEG] if sack else list(lost))
    assert peer.ctx.count("timeouts") == 0
