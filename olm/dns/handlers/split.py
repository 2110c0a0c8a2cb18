"""The split handler: names under a configured suffix go to that suffix's upstream group.

Split DNS as VPN clients do it (internal suffixes to internal resolvers): the longest matching
suffix wins; everything else keeps the group chosen before (a view's) or the default. Reverse
zones of private ranges can be sent to a private resolver the same way (AdGuard dnsproxy's
private reverse upstreams; the zones of RFC 6303 and RFC 6761).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from netstack.counters import Counters
from olm.dns.handlers import Handler, Result
from olm.dns.rdata import name_from_text
from olm.dns.request import Request
from olm.dns.upstream import UpstreamGroup

__all__ = ["PRIVATE_REVERSE_ZONES", "Split"]

#: Reverse zones of addresses that are never on the public internet: RFC 1918 (10/8,
#: 172.16/12, 192.168/16), RFC 6598 (100.64/10), loopback, link-local (RFC 3927, RFC 4291),
#: unique local IPv6 (RFC 4193): the locally served zones of RFC 6303 and more.
PRIVATE_REVERSE_ZONES: Final = (
    "10.in-addr.arpa",
    *(f"{n}.172.in-addr.arpa" for n in range(16, 32)),
    "168.192.in-addr.arpa",
    *(f"{n}.100.in-addr.arpa" for n in range(64, 128)),
    "127.in-addr.arpa",
    "254.169.in-addr.arpa",
    "d.f.ip6.arpa",
    "8.e.f.ip6.arpa",
    "9.e.f.ip6.arpa",
    "a.e.f.ip6.arpa",
    "b.e.f.ip6.arpa",
)


class Split(Handler):
    """Routes requests by the longest matching suffix; counts ``routed.<suffix>``."""

    name = "split"

    def __init__(self, counters: Counters, routes: Mapping[str, UpstreamGroup]) -> None:
        super().__init__(counters)
        self.routes = {name_from_text(suffix): group for suffix, group in routes.items()}
        self._names = {
            wire: suffix.rstrip(".").lower()
            for wire, suffix in zip(self.routes, routes, strict=True)
        }

    def handle(self, request: Request) -> Result:
        """Set the request's group if a suffix matches, then pass it on."""
        routes = self.routes
        name = request.key[: request.nend - 12]
        off = 0
        # The name itself, then each parent: the first match is the longest suffix.
        while name[off]:
            group = routes.get(name[off:])
            if group is not None:
                request.route(group)
                self.counters.inc("routed." + self._names[name[off:]])
                break
            off += name[off] + 1
        return self.next.handle(request)
