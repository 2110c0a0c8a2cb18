"""olm: a virtual DNS proxy that answers on a TUN device through the netstack TCP/IP stack.

The application owns the edges (the TUN device, its addresses and routes, the upstream
resolvers); everything between the TUN file descriptor and the DNS proxy's sockets is
:mod:`netstack`, a sans-I/O userspace TCP/IP stack.
"""

from __future__ import annotations

__all__: list[str] = []
__version__ = "0.1.0"
