"""The errno each adapter reports, as a kernel socket would: one table for every adapter.

Two kinds of failure reach an application:

* an ICMP error about something it sent (a :class:`~netstack.stack.Control`), mapped by the
  transport layer's table (:data:`CONTROL_ERRNO`, shared with the TCP endpoint);
* a request the stack refuses (a :class:`~netstack.errors.StackError`): a port in use, no
  route, an address the stack does not hold, a datagram too long. :data:`STACK_ERRNO` maps each
  kind to the errno ``bind``, ``connect`` or ``sendto`` would fail with.

Both become the ``OSError`` subclass a kernel socket raises (ECONNREFUSED gives
``ConnectionRefusedError``, EADDRINUSE ``OSError`` with that errno), so code written for
asyncio's kernel sockets catches the same exceptions here.
"""

from __future__ import annotations

import errno
from typing import Final

from netstack.errors import AddressError, MessageTooLongError, NoRouteError, StackError
from netstack.ports import PortInUseError, PortsExhaustedError
from netstack.transport.errors import CONTROL_ERRNO, control_error, os_error

__all__ = ["CONTROL_ERRNO", "STACK_ERRNO", "control_error", "os_error", "stack_error"]

#: The errno of each stack refusal; a kind not listed takes its nearest base's entry, and a
#: plain StackError (a bad port, a closed endpoint, a family mismatch) is EINVAL.
STACK_ERRNO: Final[dict[type[StackError], int]] = {
    StackError: errno.EINVAL,
    MessageTooLongError: errno.EMSGSIZE,
    PortInUseError: errno.EADDRINUSE,
    PortsExhaustedError: errno.EAGAIN,
    NoRouteError: errno.ENETUNREACH,
    AddressError: errno.EADDRNOTAVAIL,
}


def stack_error(exc: StackError) -> OSError:
    """Return the OSError a socket raises for the stack's refusal ``exc`` (its text kept)."""
    for kind in type(exc).__mro__:
        code = STACK_ERRNO.get(kind)
        if code is not None:
            return os_error(code, str(exc))
    raise TypeError(f"not a StackError: {exc!r}")  # pragma: no cover: StackError is listed
