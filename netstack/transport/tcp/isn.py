"""Initial sequence numbers (RFC 6528) and SYN cookies (RFC 4987 section 3.6).

Both are keyed hashes of the connection's 4-tuple with a secret drawn once from the stack's
random source, so they are unpredictable to an off-path attacker yet reproducible for a seeded
stack in tests.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable
from typing import Final

from netstack.clock import Clock
from netstack.header.seqnum import SEQ_MASK

ISNFunction = Callable[[bytes, int, bytes, int], int]
"""``isn(local address, local port, remote address, remote port) -> initial sequence number``."""

_PORTS: Final = struct.Struct("!HH")
_COOKIE_EXTRA: Final = struct.Struct("!II")

COOKIE_MSS: Final = (536, 1220, 1360, 1400, 1440, 1452, 1460, 8960)
"""MSS values a SYN cookie can carry (3 bits); the largest not above the peer's is chosen."""
_COOKIE_PERIOD: Final = 64.0
"""Seconds per step of the cookie's 5-bit counter (as Linux)."""
_COOKIE_MAX_AGE: Final = 2
"""Counter steps a cookie stays valid (so between 64 and 192 seconds)."""


def _digest(key: bytes, *parts: bytes) -> int:
    h = hashlib.blake2b(b"".join(parts), digest_size=4, key=key)
    return int.from_bytes(h.digest(), "big")


class ISNGenerator:
    """RFC 6528 section 3: ISN = M + F(localip, localport, remoteip, remoteport, secretkey).

    M is a 4-microsecond timer read from the injected clock; F is a keyed BLAKE2b hash.
    """

    __slots__ = ("_clock", "_key", "_rng")

    def __init__(self, clock: Clock, rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng
        self._key = b""  # drawn on first use, so a stack that never uses TCP keeps its rng

    def __call__(self, local: bytes, local_port: int, remote: bytes, remote_port: int) -> int:
        """Return the ISN for a new connection on this 4-tuple."""
        if not self._key:
            self._key = self._rng.getrandbits(128).to_bytes(16, "big")
        m = int(self._clock.now() * 250_000)  # RFC 6528 section 3: 4 microsecond ticks
        f = _digest(self._key, local, remote, _PORTS.pack(local_port, remote_port))
        return (m + f) & SEQ_MASK


class SynCookies:
    """Stateless SYN-ACK sequence numbers that encode the peer's MSS (RFC 4987 section 3.6).

    Layout of the 32 bits: 5-bit time counter, 3-bit MSS index, 24-bit keyed hash over the
    4-tuple, the peer's ISN and the counter.
    """

    __slots__ = ("_clock", "_key", "_rng")

    def __init__(self, clock: Clock, rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng
        self._key = b""  # drawn on first use

    def _count(self) -> int:
        return int(self._clock.now() / _COOKIE_PERIOD) & 0x1F

    def _hash(
        self, local: bytes, lport: int, remote: bytes, rport: int, peer_isn: int, count: int
    ) -> int:
        if not self._key:
            self._key = self._rng.getrandbits(128).to_bytes(16, "big")
        extra = _PORTS.pack(lport, rport) + _COOKIE_EXTRA.pack(peer_isn, count)
        return _digest(self._key, local, remote, extra) & 0xFFFFFF

    def make(
        self, local: bytes, lport: int, remote: bytes, rport: int, peer_isn: int, mss: int
    ) -> tuple[int, int]:
        """Return (cookie ISN, MSS it encodes) for a SYN whose sequence number is ``peer_isn``."""
        index = 0
        for i, value in enumerate(COOKIE_MSS):
            if value <= mss:
                index = i
        count = self._count()
        h = self._hash(local, lport, remote, rport, peer_isn, count)
        return (count << 27) | (index << 24) | h, COOKIE_MSS[index]

    def check(
        self, local: bytes, lport: int, remote: bytes, rport: int, peer_isn: int, cookie: int
    ) -> int | None:
        """Return the MSS a valid, fresh ``cookie`` encodes, or None for a forged or stale one."""
        count = cookie >> 27
        if (self._count() - count) & 0x1F > _COOKIE_MAX_AGE:
            return None
        if self._hash(local, lport, remote, rport, peer_isn, count) != cookie & 0xFFFFFF:
            return None
        return COOKIE_MSS[(cookie >> 24) & 0x7]
