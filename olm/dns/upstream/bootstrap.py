"""Bootstrap resolution: the addresses of upstreams written as host names.

``tls://dns.example`` needs the address of ``dns.example`` before the proxy can ask anything,
and the proxy must not ask itself. The bootstrap resolvers are plain DNS addresses given in the
settings (``bootstrap = ["192.0.2.53"]``); their A and AAAA answers are cached for their TTL
(at least 30 s, at most a day), and asked again only when that runs out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Sequence
from typing import Final

from netstack.counters import Counters
from olm.dns.request import Request
from olm.dns.upstream.address import Upstream
from olm.dns.upstream.base import UpstreamFailure
from olm.dns.upstream.group import UpstreamGroup
from olm.dns.upstream.udp import UdpTransport
from olm.dns.wire import HEADER, RD, TYPE_A, TYPE_AAAA, U32, records, skip_name

__all__ = ["Bootstrap"]

_MIN_TTL: Final = 30
_MAX_TTL: Final = 86400


def _question(host: str, qtype: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode("ascii") for p in host.rstrip(".").split("."))
    question = labels + b"\x00" + qtype.to_bytes(2, "big") + b"\x00\x01"
    return HEADER.pack(0, RD, 1, 0, 0, 0) + question


class Bootstrap:
    """Finds upstream host names through plain-DNS bootstrap resolvers; caches the answers.

    Counters (on the node given): ``lookups``, ``cached``, ``failed``.
    """

    def __init__(
        self, resolvers: Sequence[Upstream], counters: Counters, *, timeout: float = 2.0
    ) -> None:
        self.counters = counters
        transports = [UdpTransport(u, counters) for u in resolvers]
        self.group = (
            UpstreamGroup("bootstrap", transports, counters, timeout=timeout, deadline=timeout * 2)
            if transports
            else None
        )
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._lock = asyncio.Lock()

    async def lookup(self, host: str) -> list[str]:
        """Return the addresses of ``host`` (IPv4 first), asking the bootstrap resolvers."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        now = time.monotonic()
        cached = self._cache.get(host)
        if cached is not None and cached[0] > now:
            self.counters.inc("cached")
            return cached[1]
        if self.group is None:
            raise UpstreamFailure("bootstrap", f"{host} is a name and no bootstrap resolver is set")
        async with self._lock:
            self.counters.inc("lookups")
            found: list[str] = []
            ttl = _MAX_TTL
            for qtype in (TYPE_A, TYPE_AAAA):
                try:
                    answer = await self.group.resolve(Request(_question(host, qtype)))
                except UpstreamFailure:
                    continue
                addresses, lowest = _addresses(answer.wire, qtype)
                found += addresses
                if addresses:
                    ttl = min(ttl, lowest)
            if not found:
                self.counters.inc("failed")
                raise UpstreamFailure("bootstrap", f"no address for {host}")
            ttl = min(max(ttl, _MIN_TTL), _MAX_TTL)
            self._cache[host] = (time.monotonic() + ttl, found)
            return found

    def close(self) -> None:
        """Close the bootstrap resolvers' sockets."""
        if self.group is not None:
            self.group.close()


def _addresses(wire: bytes, qtype: int) -> tuple[list[str], int]:
    """Return the addresses of ``qtype`` in an answer, and their smallest TTL."""
    _, _, _, ancount, _, _ = HEADER.unpack_from(wire)
    start = skip_name(wire, 12) + 4
    found: list[str] = []
    lowest = _MAX_TTL
    for record in records(wire, start, (ancount, 0, 0)):
        if record.rtype == qtype and record.end - record.rdata in (4, 16):
            found.append(str(ipaddress.ip_address(wire[record.rdata : record.end])))
            lowest = min(lowest, U32.unpack_from(wire, record.ttl_offset)[0])
    return found, lowest
