"""Upstream resolvers: addresses, transports per scheme, and groups with a policy.

* :mod:`~olm.dns.upstream.address`: URLs (``udp://``, ``tcp://``, ``tls://``, ``https://``,
  ``quic://``), ``host[:port]``, tables, and resolv.conf defaults.
* :mod:`~olm.dns.upstream.base`: the outgoing :class:`Query` (RFC 5452 matching) and the
  :class:`Transport` interface every scheme implements.
* :mod:`~olm.dns.upstream.udp`: UDP from a pool of connected sockets, TCP on TC=1.
* :mod:`~olm.dns.upstream.tcp`: TCP, one connection per exchange (the TC=1 retry).
* :mod:`~olm.dns.upstream.stream`: pipelined TCP and DoT on persistent connections.
* :mod:`~olm.dns.upstream.doh`, :mod:`~olm.dns.upstream.doq`: DoH (h2, h11) and DoQ (aioquic).
* :mod:`~olm.dns.upstream.tls`, :mod:`~olm.dns.upstream.bootstrap`: verifying TLS contexts;
  the addresses of upstreams given by name.
* :mod:`~olm.dns.upstream.factory`: the transport for a URL's scheme.
* :mod:`~olm.dns.upstream.group`, :mod:`~olm.dns.upstream.health`: an
  :class:`UpstreamGroup`, its :class:`Policy`, timeout, deadline and health records.

Queries leave through the host's own sockets, never through netstack.
"""

from __future__ import annotations

from olm.dns.upstream.address import (
    Upstream,
    UpstreamConfigError,
    parse_upstream,
    resolv_conf_upstreams,
    upstream_from,
)
from olm.dns.upstream.base import Query, Transport, UpstreamFailure
from olm.dns.upstream.group import Policy, UpstreamGroup
from olm.dns.upstream.tcp import TcpTransport
from olm.dns.upstream.udp import UdpTransport

__all__ = [
    "Policy",
    "Query",
    "TcpTransport",
    "Transport",
    "UdpTransport",
    "Upstream",
    "UpstreamConfigError",
    "UpstreamFailure",
    "UpstreamGroup",
    "parse_upstream",
    "resolv_conf_upstreams",
    "upstream_from",
]
