"""The receive side: acceptability, trimming, the queues, the window and when to ACK.

RFC 9293 sections 3.10.7.4 ("first": the acceptability test and trimming; "seventh": segment
text), 3.8.6.2.2 (receiver SWS avoidance), 3.8.6.3 (delayed ACKs); RFC 5681 section 4.2
(immediate ACKs for out-of-order data); RFC 2018 (SACK blocks); RFC 7323 section 2 (scaling).

Segments that arrive beyond RCV.NXT wait in :class:`Reassembly`, merged into disjoint ranges,
until the hole before them fills. It is bounded in bytes and in ranges; what does not fit is
dropped (and will be retransmitted by the peer).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from netstack.header.seqnum import seq_add, seq_max, seq_sub

if TYPE_CHECKING:
    from netstack.counters import Counters
    from netstack.transport.tcp.config import TCPConfig


class Reassembly:
    """Out-of-order data keyed by sequence number, merged into disjoint ranges."""

    __slots__ = ("_last", "_ranges", "bytes", "max_bytes", "max_ranges")

    def __init__(self, max_bytes: int, max_ranges: int) -> None:
        self.max_bytes = max_bytes
        self.max_ranges = max_ranges
        self._ranges: list[tuple[int, bytes]] = []  # (first seq, data), ordered from RCV.NXT
        self._last: int | None = None  # a seq inside the most recently added range
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._ranges)

    def clear(self) -> None:
        """Drop everything held."""
        self._ranges = []
        self._last = None
        self.bytes = 0

    def add(self, seq: int, data: bytes, rcv_nxt: int) -> bool:
        """Hold ``data`` (which starts after ``rcv_nxt``); return False if it did not fit."""
        lo = seq_sub(seq, rcv_nxt)
        hi = lo + len(data)
        merged_lo, merged_hi = lo, hi
        keep: list[tuple[int, bytes]] = []
        overlapping: list[tuple[int, bytes]] = []
        for start, chunk in self._ranges:
            a = seq_sub(start, rcv_nxt)
            b = a + len(chunk)
            if b < lo or a > hi:
                keep.append((start, chunk))
            else:
                overlapping.append((a, chunk))
                merged_lo, merged_hi = min(merged_lo, a), max(merged_hi, b)
        added = (merged_hi - merged_lo) - sum(len(c) for _, c in overlapping)
        if added > 0 and self.bytes + added > self.max_bytes:
            return False
        if not overlapping and len(self._ranges) >= self.max_ranges:
            return False
        if overlapping:
            buf = bytearray(merged_hi - merged_lo)
            for a, chunk in overlapping:
                buf[a - merged_lo : a - merged_lo + len(chunk)] = chunk
            buf[lo - merged_lo : hi - merged_lo] = data
            new = (seq_add(rcv_nxt, merged_lo), bytes(buf))
        else:
            new = (seq, data)
        keep.append(new)
        keep.sort(key=lambda r: seq_sub(r[0], rcv_nxt))
        self._ranges = keep
        self.bytes += added
        self._last = seq
        return True

    def pop(self, rcv_nxt: int) -> bytes | None:
        """Take the data that now continues at ``rcv_nxt`` (None if the hole is still there).

        Ranges wholly below ``rcv_nxt`` are discarded on the way.
        """
        while self._ranges:
            start, chunk = self._ranges[0]
            off = seq_sub(rcv_nxt, start)
            if off < 0:
                return None
            del self._ranges[0]
            self.bytes -= len(chunk)
            if off < len(chunk):
                return chunk[off:]
        return None

    def sack_blocks(self, rcv_nxt: int, limit: int) -> tuple[tuple[int, int], ...]:
        """Up to ``limit`` SACK blocks (RFC 2018 section 4): the newest range first."""
        blocks = [(s, seq_add(s, len(c))) for s, c in self._ranges if seq_sub(s, rcv_nxt) > 0]
        last = self._last
        if last is not None:
            for i, (s, e) in enumerate(blocks):
                if seq_sub(last, s) >= 0 and seq_sub(e, last) > 0:
                    blocks.insert(0, blocks.pop(i))
                    break
        return tuple(blocks[:limit])


class Receiver:
    """The receive side of one connection: receive sequence space, queues and window.

    RCV.NXT (``nxt``), the right edge of the window we advertised (``adv``, never moved left),
    our window shift, the in-order queue the application reads, the out-of-order
    :class:`Reassembly`, and whether the next ACK is due now or may be delayed.
    """

    __slots__ = (
        "ack_later",
        "ack_now",
        "adv",
        "buffer",
        "counters",
        "fin_received",
        "irs",
        "mss",
        "nxt",
        "ooo",
        "peer_fin",
        "queue",
        "queued",
        "unacked",
        "wscale",
    )

    def __init__(self, config: TCPConfig, counters: Counters) -> None:
        self.counters = counters
        self.buffer = config.receive_buffer
        self.irs = 0  # IRS
        self.nxt = 0  # RCV.NXT
        self.adv = 0  # RCV.NXT + RCV.WND as last advertised
        self.wscale = 0  # our window shift (RFC 7323 section 2.3)
        self.mss = config.default_mss  # the MSS we advertised
        self.queue: deque[bytes] = deque()  # in order, not yet taken by the application
        self.queued = 0
        self.ooo = Reassembly(config.reassembly_limit, config.reassembly_segments)
        self.peer_fin: int | None = None  # sequence number of the peer's FIN, if seen
        self.fin_received = False
        self.unacked = 0  # bytes received since the last ACK we sent
        self.ack_now = False
        self.ack_later = False

    def start(self, irs: int) -> None:
        """Take the peer's ISN ``irs``: RCV.NXT = IRS + 1; the first window is unscaled."""
        self.irs = irs
        self.nxt = seq_add(irs, 1)
        self.adv = seq_add(self.nxt, min(self.buffer, 0xFFFF))

    @property
    def window(self) -> int:
        """RCV.WND: what the peer may still send beyond RCV.NXT."""
        return max(seq_sub(self.adv, self.nxt), 0)

    # -- RFC 9293 section 3.10.7.4, "first" -----------------------------------------------------

    def acceptable(self, seq: int, seglen: int) -> bool:
        """Apply the acceptability test of RFC 9293 section 3.10.7.4 (its four cases)."""
        nxt = self.nxt
        wnd = seq_sub(self.adv, nxt)
        if wnd <= 0:
            return seglen == 0 and seq == nxt
        if seglen == 0:
            return 0 <= seq_sub(seq, nxt) < wnd
        return 0 <= seq_sub(seq, nxt) < wnd or 0 <= seq_sub(seq_add(seq, seglen - 1), nxt) < wnd

    def trim(self, seq: int, data: memoryview, fin: bool) -> tuple[int, memoryview, bool]:
        """Cut an acceptable segment to the window: drop what is below RCV.NXT or beyond it.

        RFC 9293 section 3.10.7.4, "first", last paragraph. A FIN beyond the window goes too.
        """
        nxt = self.nxt
        front = seq_sub(nxt, seq)
        if front > 0:
            data = data[front:]
            seq = nxt
        room = seq_sub(seq_add(nxt, self.window), seq)
        if len(data) > room:
            data = data[: max(room, 0)]
            fin = False
            self.counters.inc("segments.trimmed")
        return seq, data, fin

    # -- RFC 9293 section 3.10.7.4, "seventh" and "eighth" --------------------------------------

    def receive(self, seq: int, data: bytes) -> bool:
        """Queue in-window text, or hold it for reassembly; True if the peer's FIN is now next.

        ACKs: at once for out-of-order data and for data that fills a hole (RFC 5681 section
        4.2), at least every second full segment, else after the delayed-ACK timer (RFC 9293
        section 3.8.6.3).
        """
        nxt = self.nxt
        if seq != nxt:
            if self.ooo.add(seq, data, nxt):
                self.counters.inc("segments.out_of_order")
            else:
                self.counters.inc("segments.reassembly_full")
            self.ack_now = True
            return False
        queue = self.queue
        queue.append(data)
        received = len(data)
        nxt = seq_add(nxt, received)
        ooo = self.ooo
        if len(ooo):
            while (more := ooo.pop(nxt)) is not None:
                queue.append(more)
                nxt = seq_add(nxt, len(more))
                received += len(more)
            self.ack_now = True  # a hole filled
        self.nxt = nxt
        self.queued += received
        self.unacked += received
        if self.unacked >= 2 * self.mss:
            self.ack_now = True
        else:
            self.ack_later = True
        return self.peer_fin == nxt and not self.fin_received

    def take_fin(self) -> None:
        """Take the in-order FIN: it uses one sequence number; no more data follows."""
        self.fin_received = True
        self.nxt = seq_add(self.nxt, 1)
        self.ooo.clear()

    # -- what goes into our segments ------------------------------------------------------------

    def window_field(self, syn: bool) -> int:
        """Return the window to advertise: free buffer space, never moving the right edge left.

        Receiver SWS avoidance (RFC 9293 section 3.8.6.2.2): the right edge only moves by at
        least min(buffer / 2, MSS). RFC 7323 section 2.3: shifted right by our scale, except in
        SYN segments.
        """
        nxt = self.nxt
        right = seq_add(nxt, max(self.buffer - self.queued, 0))
        step = seq_sub(right, self.adv)
        if step > 0 and (step >= min(self.buffer // 2, self.mss) or seq_sub(self.adv, nxt) <= 0):
            self.adv = right
        wnd = max(seq_sub(self.adv, nxt), 0)
        if syn:
            return min(wnd, 0xFFFF)
        shift = self.wscale
        field = min((wnd + (1 << shift) - 1) >> shift, 0xFFFF)
        # Rounding up keeps the promise; note the edge actually advertised.
        self.adv = seq_max(self.adv, seq_add(nxt, field << shift))
        return field

    def take_all(self) -> bytes:
        """Take every queued byte at once."""
        data = b"".join(self.queue)
        self.queue.clear()
        self.queued = 0
        return data

    def clear(self) -> None:
        """Drop every byte held (abort, or the connection closed)."""
        self.queue.clear()
        self.queued = 0
        self.ooo.clear()
