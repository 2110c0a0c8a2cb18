"""One transport per upstream, by scheme: what an upstream group is given for each URL."""

from __future__ import annotations

from netstack.counters import Counters
from olm.dns.upstream.address import Upstream
from olm.dns.upstream.base import Transport
from olm.dns.upstream.bootstrap import Bootstrap
from olm.dns.upstream.stream import StreamTransport
from olm.dns.upstream.udp import UdpTransport

__all__ = ["make_transport"]


def make_transport(
    upstream: Upstream, counters: Counters, bootstrap: Bootstrap | None = None
) -> Transport:
    """Return the transport for ``upstream``'s scheme.

    ``udp``: UDP from a socket pool, TCP on TC=1 (through a SOCKS5 proxy: TCP only, since
    python-socks has no UDP ASSOCIATE). ``tcp``, ``tls``: persistent pipelined connections.
    ``https``: DoH over HTTP/2. ``quic``: DoQ.
    """
    scheme = upstream.scheme
    if scheme == "udp" and not upstream.socks5:
        return UdpTransport(upstream, counters, bootstrap=bootstrap)
    if scheme in ("udp", "tcp", "tls"):
        return StreamTransport(upstream, counters, bootstrap=bootstrap)
    if scheme == "https":
        from olm.dns.upstream.doh import DohTransport

        return DohTransport(upstream, counters, bootstrap)
    if scheme == "quic":
        from olm.dns.upstream.doq import DoqTransport

        return DoqTransport(upstream, counters, bootstrap)
    raise ValueError(f"{upstream}: no transport for scheme {scheme}")
