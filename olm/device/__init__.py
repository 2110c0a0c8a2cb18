"""The host side of olm: the TUN device and the kernel configuration around it.

Submodules:

* :mod:`olm.device.tun` opens the TUN interface (python-pytun).
* :mod:`olm.device.netconfig` brings it up and adds addresses and routes (pyroute2), and
  takes them away again.

They are imported explicitly (``from olm.device.tun import open_tun``) so that importing this
package stays cheap and free of third-party imports.
"""

from __future__ import annotations

import errno as _errno

__all__ = ["DeviceError"]


class DeviceError(Exception):
    """The TUN device could not be opened or configured.

    ``device`` names the interface and ``errno`` is the operating-system error number behind
    the failure, if there was one. The message says what went wrong in words a user can act
    on (a missing capability, a busy interface name, a conflicting route).
    """

    def __init__(self, device: str, message: str, errno: int | None = None) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device
        self.message = message
        self.errno = errno

    @property
    def is_permission_error(self) -> bool:
        """Whether the failure was EPERM or EACCES, i.e. most likely a missing capability."""
        return self.errno in (_errno.EPERM, _errno.EACCES)
