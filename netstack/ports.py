"""The port table and the transport demultiplexer.

There is one :class:`Demux` per transport protocol. Endpoints register under one of two kinds
of key:

* connected: ``(local address, local port, remote address, remote port)``
* bound: ``(local address, local port)``, where the local address may be the
  unspecified address of its family (``0.0.0.0`` or ``::``) to receive on every address.

An inbound packet is matched against the exact 4-tuple first, then against its destination
address and port, then against the unspecified address and port (gVisor's transport demuxer
and Linux's socket lookup take the same order). Sockets bound to ``::`` receive IPv6 only, as
if IPV6_V6ONLY were set.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Generic, TypeVar

from netstack.errors import StackError

E = TypeVar("E")

UNSPECIFIED_V4 = bytes(4)
UNSPECIFIED_V6 = bytes(16)


def unspecified(family_len: int) -> bytes:
    """Return the unspecified address of the family whose addresses are ``family_len`` bytes."""
    return UNSPECIFIED_V4 if family_len == 4 else UNSPECIFIED_V6


class PortInUseError(StackError):
    """The requested (address, port) is already bound (EADDRINUSE)."""


class PortsExhaustedError(StackError):
    """No ephemeral port is free (EAGAIN on connect/bind to port 0)."""


class Demux(Generic[E]):
    """Maps transport keys to endpoints; one instance per transport protocol."""

    __slots__ = ("_hi", "_lo", "_reserved", "_rng", "bound", "connected")

    def __init__(self, rng: random.Random, ephemeral: tuple[int, int] = (32768, 60999)) -> None:
        self.connected: dict[tuple[bytes, int, bytes, int], E] = {}
        self.bound: dict[tuple[bytes, int], E] = {}
        self._rng = rng
        self._lo, self._hi = ephemeral
        # port -> number of reservations per local address (an address may hold a port once).
        self._reserved: dict[int, dict[bytes, int]] = {}

    # -- lookup --------------------------------------------------------------------------

    def lookup(self, local: bytes, local_port: int, remote: bytes, remote_port: int) -> E | None:
        """Return the endpoint for an inbound packet, most specific match first."""
        ep = self.connected.get((local, local_port, remote, remote_port))
        if ep is not None:
            return ep
        ep = self.bound.get((local, local_port))
        if ep is not None:
            return ep
        return self.bound.get((UNSPECIFIED_V4 if len(local) == 4 else UNSPECIFIED_V6, local_port))

    # -- port reservation ----------------------------------------------------------------

    def reserve(self, local: bytes, port: int) -> int:
        """Reserve ``port`` on ``local`` (0 picks a free ephemeral port); return the port."""
        if port == 0:
            return self._reserve_ephemeral(local)
        if not self._is_free(local, port):
            raise PortInUseError(f"port {port} is in use")
        self._take(local, port)
        return port

    def release(self, local: bytes, port: int) -> None:
        """Give back a reservation made with :meth:`reserve`."""
        holders = self._reserved.get(port)
        if holders is None or local not in holders:
            return
        holders[local] -= 1
        if holders[local] <= 0:
            del holders[local]
        if not holders:
            del self._reserved[port]

    def is_reserved(self, local: bytes, port: int) -> bool:
        """Tell whether ``port`` is held on exactly ``local``."""
        return local in self._reserved.get(port, {})

    def _is_free(self, local: bytes, port: int) -> bool:
        holders = self._reserved.get(port)
        if not holders:
            return True
        unspec = unspecified(len(local))
        if local == unspec:
            # A wildcard bind conflicts with any address of the same family.
            return not any(len(a) == len(local) for a in holders)
        return local not in holders and unspec not in holders

    def _take(self, local: bytes, port: int) -> None:
        holders = self._reserved.setdefault(port, {})
        holders[local] = holders.get(local, 0) + 1

    def _reserve_ephemeral(self, local: bytes) -> int:
        # RFC 6056 section 3.3.1 (algorithm 1): start at a random point, probe sequentially.
        span = self._hi - self._lo + 1
        start = self._rng.randrange(span)
        for i in range(span):
            port = self._lo + (start + i) % span
            if self._is_free(local, port):
                self._take(local, port)
                return port
        raise PortsExhaustedError("no free ephemeral port")

    # -- registration ----------------------------------------------------------------------

    def register_bound(self, local: bytes, port: int, endpoint: E) -> None:
        """Receive packets for (local, port); ``local`` may be the unspecified address."""
        key = (local, port)
        if key in self.bound:
            raise PortInUseError(f"port {port} already has a listener")
        self.bound[key] = endpoint

    def unregister_bound(self, local: bytes, port: int, endpoint: E) -> None:
        """Undo :meth:`register_bound` (only if ``endpoint`` is the one registered)."""
        key = (local, port)
        if self.bound.get(key) is endpoint:
            del self.bound[key]

    def register_connected(
        self, local: bytes, port: int, remote: bytes, remote_port: int, endpoint: E
    ) -> None:
        """Receive packets for the exact 4-tuple."""
        key = (local, port, remote, remote_port)
        if key in self.connected:
            raise PortInUseError("4-tuple already in use")
        self.connected[key] = endpoint

    def unregister_connected(
        self, local: bytes, port: int, remote: bytes, remote_port: int, endpoint: E
    ) -> None:
        """Undo :meth:`register_connected` (only if ``endpoint`` is the one registered)."""
        key = (local, port, remote, remote_port)
        if self.connected.get(key) is endpoint:
            del self.connected[key]

    def endpoints(self) -> Iterator[E]:
        """Yield every registered endpoint once: connected ones, then bound ones.

        Iterates over a snapshot, so the tables may change while the caller walks it.
        """
        seen: set[int] = set()
        for ep in [*self.connected.values(), *self.bound.values()]:
            if id(ep) not in seen:
                seen.add(id(ep))
                yield ep

    def __len__(self) -> int:
        return len(self.connected) + len(self.bound)
