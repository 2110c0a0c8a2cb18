"""The send buffer: bytes the application queued, from SND.UNA on, sent or not yet sent."""

from __future__ import annotations

from netstack.header.seqnum import seq_add, seq_sub


class SendBuffer:
    """Queued data starting at sequence number ``seq`` (SND.UNA once the SYN is acknowledged).

    Holds both sent-but-unacknowledged and not-yet-sent bytes; at most ``limit`` of them, which
    is what gives the application back-pressure.
    """

    __slots__ = ("_buf", "limit", "seq")

    def __init__(self, seq: int, limit: int) -> None:
        self._buf = bytearray()
        self.seq = seq
        self.limit = limit

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def space(self) -> int:
        """Bytes the application may still queue."""
        return max(self.limit - len(self._buf), 0)

    @property
    def end(self) -> int:
        """The sequence number just after the last queued byte."""
        return seq_add(self.seq, len(self._buf))

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as fits; return how many bytes were taken."""
        n = min(len(data), self.space)
        if n:
            self._buf += data[:n] if n < len(data) else data
        return n

    def ack(self, upto: int) -> int:
        """Release the bytes before sequence number ``upto``; return how many were released."""
        n = min(max(seq_sub(upto, self.seq), 0), len(self._buf))
        if n:
            del self._buf[:n]
            self.seq = seq_add(self.seq, n)
        return n

    def slice(self, seq: int, n: int) -> bytes:
        """Return up to ``n`` queued bytes starting at sequence number ``seq``."""
        off = seq_sub(seq, self.seq)
        if off < 0:
            return b""
        return bytes(self._buf[off : off + n])

    def clear(self) -> None:
        """Drop everything queued."""
        self._buf.clear()
