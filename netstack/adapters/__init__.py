"""The socket-like API over the stack (gVisor's adapters/gonet, shaped for asyncio).

The one place where the stack meets asyncio: everything below (transport, network, header)
is sans-I/O and knows nothing of event loops. Addresses here are ``(host, port)`` text for
both families (:mod:`.address`); failures are the ``OSError`` subclasses a kernel socket
raises (:mod:`.errors`).

* :class:`UDPSocket` (:mod:`.udp`): ``bind``/``connect``/``sendto`` and awaitable ``recvfrom``
  with a bounded receive queue;
* :func:`create_datagram_endpoint` (:mod:`.datagram`): the callback form of
  ``loop.create_datagram_endpoint``; ``datagram_received`` runs inside the receive path;
* :func:`start_server` and :func:`open_connection` (:mod:`.streams`): TCP with the standard
  library's own ``StreamReader``/``StreamWriter``.
"""

from __future__ import annotations

from netstack.adapters.address import Address
from netstack.adapters.datagram import StackDatagramTransport, create_datagram_endpoint
from netstack.adapters.streams import Server, TCPTransport, open_connection, start_server
from netstack.adapters.udp import UDPSocket

__all__ = [
    "Address",
    "Server",
    "StackDatagramTransport",
    "TCPTransport",
    "UDPSocket",
    "create_datagram_endpoint",
    "open_connection",
    "start_server",
]
