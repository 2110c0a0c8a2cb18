"""The DNS side of olm: a proxy answering on the service addresses from upstream resolvers.

* :mod:`olm.dns.message`: the message rules (checks, EDNS, reply shaping), free of I/O.
* :mod:`olm.dns.upstream`: upstream addresses, policies and RFC 5452 exchanges.
* :mod:`olm.dns.tcp`: DNS-over-TCP connections on asyncio streams (RFC 7766).
* :mod:`olm.dns.proxy`: the proxy object and its UDP protocol.
"""

from __future__ import annotations
