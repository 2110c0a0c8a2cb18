"""The receive side's out-of-order buffer (RFC 9293 section 3.10.7.4, "seventh") and SACK blocks.

Segments that arrive beyond RCV.NXT wait here, merged into disjoint ranges, until the hole
before them fills. The buffer is bounded in bytes and in ranges; what does not fit is dropped
(and will be retransmitted by the peer).
"""

from __future__ import annotations

from netstack.header.seqnum import seq_add, seq_sub


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
