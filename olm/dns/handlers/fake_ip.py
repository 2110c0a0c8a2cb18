"""The fake-IP handler: matching names get an address from a pool, TTL 1 (transparent proxies).

As the fake-IP DNS of Clash/mihomo and sing-box gateways: a name under one of the configured
suffixes (every name when there are none), and under none of the exclusions, is answered with an
address of :class:`olm.dns.fakeip.FakeIpPool` (198.18.0.0/15 by default, RFC 2544's benchmark
range, never routed), so that the traffic that follows, which the FilteredDevice claims for the
whole range, can be mapped back to the name. The same name keeps its address while its mapping
lives. A for the IPv4 pool, AAAA for the IPv6 one (NODATA without one, so clients use IPv4);
other types of a matching name go on down the chain. The reverse name of a pool address gets the
name back (PTR), or NXDOMAIN when the address is not in use.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from netstack.counters import Counters
from olm.dns.answer import NXDOMAIN
from olm.dns.fakeip import FakeIpPool
from olm.dns.handlers import Handler, Result
from olm.dns.local import LocalData, LocalRecord, local_answer
from olm.dns.rdata import name_from_text, name_to_text
from olm.dns.request import Request

__all__ = ["FakeIp"]

_A: Final = 1
_PTR: Final = 12
_AAAA: Final = 28
_TTL: Final = 1
_IN4: Final = name_from_text("in-addr.arpa")
_IN6: Final = name_from_text("ip6.arpa")


def _suffixes(names: Iterable[str]) -> frozenset[bytes]:
    return frozenset(name_from_text(n.removeprefix("*.")) for n in names)


def _under(name: bytes, suffixes: frozenset[bytes]) -> bool:
    """Whether ``name`` is one of ``suffixes`` or below one (walking its label boundaries)."""
    off = 0
    while name[off]:
        if name[off:] in suffixes:
            return True
        off += name[off] + 1
    return False


class FakeIp(Handler):
    """Answers with pool addresses; counters ``answer``, ``ptr``, ``nodata``."""

    name = "fake_ip"

    def __init__(
        self,
        counters: Counters,
        pool: FakeIpPool,
        suffixes: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ) -> None:
        super().__init__(counters)
        self.pool = pool
        self.suffixes = _suffixes(suffixes)
        self.exclude = _suffixes(exclude)
        self._soa = LocalData(negative_ttl=_TTL)

    def matches(self, name: bytes) -> bool:
        """Whether a (wire, lower-case) name gets a fake address."""
        if self.exclude and _under(name, self.exclude):
            return False
        return not self.suffixes or _under(name, self.suffixes)

    def handle(self, request: Request) -> Result:
        """Answer A/AAAA of matching names and PTR of pool addresses; pass the rest on."""
        qtype = request.qtype
        name = request.key[: request.nend - 12]
        if qtype == _PTR and (name.endswith(_IN4) or name.endswith(_IN6)):
            return self._ptr(request, name)
        if qtype not in (_A, _AAAA) or not self.matches(name):
            return self.next.handle(request)
        text = name_to_text(name)
        address = self.pool.address_for(text, 4 if qtype == _A else 6)
        question = request.wire[12 : request.qend]
        if address is None:
            self.counters.inc("nodata")
            soa = self._soa.synthetic_soa(name)
            return local_answer(question, name, [], authority=[soa], authoritative=False)
        self.counters.inc("answer")
        record = LocalRecord(qtype, _TTL, address.packed)
        return local_answer(question, name, [(name, record)], authoritative=False)

    def _ptr(self, request: Request, name: bytes) -> Result:
        address = _reverse_address(name)
        if address is None or not self.pool.contains(address):
            return self.next.handle(request)
        question = request.wire[12 : request.qend]
        target = self.pool.name_for(address)
        if target is None:
            soa = self._soa.synthetic_soa(name)
            return local_answer(question, name, [], rcode=NXDOMAIN, authority=[soa])
        self.counters.inc("ptr")
        record = LocalRecord(_PTR, _TTL, name_from_text(target))
        return local_answer(question, name, [(name, record)])


def _reverse_address(name: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the address a full reverse name stands for (RFC 1035 3.5, RFC 3596 2.5)."""
    labels = name_to_text(name).rstrip(".").split(".")
    try:
        if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
            return ipaddress.IPv4Address(".".join(reversed(labels[:4])))
        if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34:
            nibbles = "".join(reversed(labels[:32]))
            return ipaddress.IPv6Address(int(nibbles, 16))
    except ValueError:
        return None
    return None
