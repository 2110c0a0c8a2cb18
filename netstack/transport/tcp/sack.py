"""The sender's SACK scoreboard (RFC 6675 section 3, RFC 2018 section 5).

Ranges are held as byte offsets from SND.UNA so that all ordering is plain integer ordering;
the modular conversion happens once, at the edges (``update`` and ``advance``).
"""

from __future__ import annotations

from collections.abc import Iterable

from netstack.header.seqnum import seq_add, seq_sub


class Scoreboard:
    """Which bytes above SND.UNA the receiver reported holding (merged, sorted ranges)."""

    __slots__ = ("_base", "_ranges", "sacked_bytes")

    def __init__(self, base: int = 0) -> None:
        self._base = base
        self._ranges: list[tuple[int, int]] = []  # [lo, hi) offsets from _base
        self.sacked_bytes = 0

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def reset(self, base: int) -> None:
        """Forget every range and start again at ``base`` (SND.UNA)."""
        self._base = base
        self._ranges = []
        self.sacked_bytes = 0

    @property
    def highest(self) -> int | None:
        """The right edge of the highest SACKed range, or None when nothing is SACKed."""
        return seq_add(self._base, self._ranges[-1][1]) if self._ranges else None

    def ranges(self) -> list[tuple[int, int]]:
        """Return the SACKed ranges as (left, right) sequence numbers, lowest first."""
        base = self._base
        return [(seq_add(base, lo), seq_add(base, hi)) for lo, hi in self._ranges]

    def update(self, blocks: Iterable[tuple[int, int]], snd_max: int) -> int:
        """Merge SACK blocks from one ACK; return how many bytes were newly SACKed.

        Blocks not inside (SND.UNA, SND.MAX] are ignored (RFC 2018 section 4; D-SACK blocks
        of RFC 2883 fall below SND.UNA and are ignored the same way).
        """
        limit = seq_sub(snd_max, self._base)
        before = self.sacked_bytes
        for left, right in blocks:
            lo = seq_sub(left, self._base)
            hi = seq_sub(right, self._base)
            if lo < 0 or hi > limit or hi <= lo:
                continue
            self._insert(lo, hi)
        return self.sacked_bytes - before

    def _insert(self, lo: int, hi: int) -> None:
        out: list[tuple[int, int]] = []
        placed = False
        for a, b in self._ranges:
            if b < lo:
                out.append((a, b))
            elif hi < a:
                if not placed:
                    out.append((lo, hi))
                    placed = True
                out.append((a, b))
            else:
                lo, hi = min(a, lo), max(b, hi)
        if not placed:
            out.append((lo, hi))
        self._ranges = out
        self.sacked_bytes = sum(b - a for a, b in out)

    def advance(self, snd_una: int) -> None:
        """Move the base to a new SND.UNA, dropping what the cumulative ACK now covers."""
        shift = seq_sub(snd_una, self._base)
        if shift <= 0:
            return
        self._base = snd_una
        if not self._ranges:
            return
        out = [(max(a - shift, 0), b - shift) for a, b in self._ranges if b > shift]
        self._ranges = out
        self.sacked_bytes = sum(b - a for a, b in out)

    def is_sacked(self, seq: int) -> bool:
        """Whether the byte at ``seq`` is SACKed."""
        off = seq_sub(seq, self._base)
        return any(a <= off < b for a, b in self._ranges)

    def next_hole(self, seq: int, limit: int) -> tuple[int, int] | None:
        """Return the first un-SACKed range [start, end) at or after ``seq`` and before ``limit``.

        The range ends at the next SACKed byte or at ``limit``; None when there is no hole.
        """
        lo = max(seq_sub(seq, self._base), 0)
        end = seq_sub(limit, self._base)
        for a, b in self._ranges:
            if lo < a:
                break
            lo = max(lo, b)
        if lo >= end:
            return None
        stop = end
        for a, _ in self._ranges:
            if a > lo:
                stop = min(stop, a)
                break
        return seq_add(self._base, lo), seq_add(self._base, stop)

    def unsacked_between(self, start: int, end: int) -> int:
        """Count the bytes in [start, end) that are not SACKed."""
        lo = max(seq_sub(start, self._base), 0)
        hi = seq_sub(end, self._base)
        if hi <= lo:
            return 0
        covered = sum(max(0, min(b, hi) - max(a, lo)) for a, b in self._ranges)
        return hi - lo - covered
