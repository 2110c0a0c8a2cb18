"""Upstream resolvers: addresses, transports per scheme, and groups with a policy.

* :mod:`~olm.dns.upstream.address`: ``host[:port]`` and resolv.conf defaults.
* :mod:`~olm.dns.upstream.base`: the outgoing :class:`Query` (RFC 5452 matching) and the
  :class:`Transport` interface every scheme implements.
* :mod:`~olm.dns.upstream.udp`: UDP from a pool of connected sockets, TCP on TC=1.
* :mod:`~olm.dns.upstream.tcp`: TCP, one connection per exchange.
* :mod:`~olm.dns.upstream.group`: an :class:`UpstreamGroup`, its :class:`Policy`, timeout and
  deadline.

Queries leave through the host's own sockets, never through netstack.
"""

from __future__ import annotations

from olm.dns.upstream.address import (
    Upstream,
    UpstreamConfigError,
    parse_upstream,
    resolv_conf_upstreams,
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
]
