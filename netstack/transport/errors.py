"""The errno a transport endpoint reports when the network fails it.

RFC 1122 sections 3.2.2.1 and 4.2.3.9 (TCP), 4.1.3.3 (UDP): the transport passes ICMP errors
up to the application. Endpoints speak the socket API's vocabulary, an ``OSError`` with an
errno, so the same table serves the TCP endpoint (hard and soft errors) and the socket adapters
above it (``netstack.adapters.errors``, which adds the stack's own refusals).

``OSError(code, message)`` picks its subclass from the errno: ECONNREFUSED gives
``ConnectionRefusedError``, ETIMEDOUT ``TimeoutError``, EPIPE ``BrokenPipeError``.
"""

from __future__ import annotations

import errno
import os
from typing import Final

from netstack.protocols import Control

#: What each ICMP error means to a socket. Linux gives the same errno for each, except for
#: protocol unreachable (ENOPROTOOPT there: refused here, as the peer refused the protocol)
#: and IPv6's administratively prohibited (EACCES there).
CONTROL_ERRNO: Final[dict[Control, int]] = {
    Control.NET_UNREACHABLE: errno.ENETUNREACH,
    Control.HOST_UNREACHABLE: errno.EHOSTUNREACH,
    Control.PROTOCOL_UNREACHABLE: errno.ECONNREFUSED,
    Control.PORT_UNREACHABLE: errno.ECONNREFUSED,
    Control.ADMIN_PROHIBITED: errno.EHOSTUNREACH,
    Control.TIME_EXCEEDED: errno.EHOSTUNREACH,
    Control.PARAMETER_PROBLEM: errno.EPROTO,
    Control.PACKET_TOO_BIG: errno.EMSGSIZE,
}


def os_error(code: int, message: str | None = None) -> OSError:
    """Return the OSError subclass for ``code``, with ``message`` or the system's text."""
    return OSError(code, os.strerror(code) if message is None else message)


def control_error(control: Control) -> OSError:
    """Return the OSError a socket reports for an ICMP error (e.g. ConnectionRefusedError)."""
    return os_error(CONTROL_ERRNO[control])
