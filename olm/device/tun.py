"""Open a Linux TUN interface that carries raw IP packets (python-pytun).

The device is opened with ``IFF_TUN | IFF_NO_PI``: each read returns exactly one IPv4 or IPv6
packet and each write takes one, with no 4-byte packet-information prefix
(Documentation/networking/tuntap.rst). That is the framing netstack's link endpoints expect:
the IP version nibble alone tells IPv4 from IPv6.

With ``offload=True`` it is also opened with ``IFF_VNET_HDR`` and the ``TUNSETOFFLOAD`` ioctl
lets the kernel hand over (and take) TCP packets of up to 64 KiB with a partial checksum
(``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6``, include/uapi/linux/if_tun.h). Every read and write
then starts with a 10-byte virtio_net_hdr; :class:`netstack.link.fd.FdEndpoint` with
``vnet_hdr=True`` speaks that framing. When the kernel refuses, the device is reopened without
offloads and :attr:`TunDevice.offload_error` says why.
"""

from __future__ import annotations

import errno
import fcntl
import logging
from types import TracebackType
from typing import Any

import pytun

from olm.device import DeviceError

__all__ = ["IFNAMSIZ", "MAX_MTU", "MIN_MTU", "TUN_OFFLOADS", "TunDevice", "open_tun"]

log = logging.getLogger(__name__)

#: Size of an interface-name buffer including its NUL (linux/if.h): names hold 15 bytes.
IFNAMSIZ = 16
#: Smallest MTU accepted: every IPv4 module must pass a 68-octet datagram (RFC 791 section 3.2).
MIN_MTU = 68
#: Largest MTU the tun driver accepts (drivers/net/tun.c: MAX_MTU = 65535).
MAX_MTU = 65535

_TUN_FLAGS = pytun.IFF_TUN | pytun.IFF_NO_PI
#: TUNSETOFFLOAD = _IOW('T', 208, unsigned int) (include/uapi/linux/if_tun.h).
_TUNSETOFFLOAD = 0x400454D0
_TUN_F_CSUM = 0x01  # we accept packets with a partial checksum
_TUN_F_TSO4 = 0x02  # ... and IPv4 TCP GSO packets
_TUN_F_TSO6 = 0x04  # ... and IPv6 TCP GSO packets
#: The offloads ``open_tun(offload=True)`` enables.
TUN_OFFLOADS = _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6
_NAME_FORBIDDEN = frozenset("/: \t\n\r\v\f")


class TunDevice:
    """An open TUN interface; closing it makes the kernel delete the interface.

    The kernel removes a non-persistent TUN interface, and with it every address and route on
    it, when its last file descriptor is closed.
    """

    __slots__ = ("_closed", "_dev", "_fd", "_name", "_offload", "_offload_error")

    def __init__(
        self, dev: Any, *, offload: bool = False, offload_error: str | None = None
    ) -> None:
        """Wrap an already-open ``pytun.TunTapDevice``; use :func:`open_tun` to make one."""
        self._dev = dev
        self._name: str = dev.name
        self._fd: int = dev.fileno()
        self._closed = False
        self._offload = offload
        self._offload_error = offload_error

    @property
    def offload(self) -> bool:
        """Whether reads and writes carry a virtio_net_hdr with TCP offloads on."""
        return self._offload

    @property
    def offload_error(self) -> str | None:
        """Why offloads were asked for and are off (None if on, or never asked for)."""
        return self._offload_error

    @property
    def name(self) -> str:
        """The interface name the kernel assigned (e.g. ``olm0``)."""
        return self._name

    @property
    def fd(self) -> int:
        """The file descriptor packets are read from and written to."""
        if self._closed:
            raise DeviceError(self._name, "device is closed", errno.EBADF)
        return self._fd

    def fileno(self) -> int:
        """Return :attr:`fd`, so the device can be handed to selectors and event loops."""
        return self.fd

    @property
    def mtu(self) -> int:
        """The interface MTU in bytes; assigning sets it (SIOCSIFMTU)."""
        if self._closed:
            raise DeviceError(self._name, "device is closed", errno.EBADF)
        try:
            return int(self._dev.mtu)
        except OSError as exc:
            raise _device_error(self._name, "reading the MTU", exc) from exc

    @mtu.setter
    def mtu(self, value: int) -> None:
        if self._closed:
            raise DeviceError(self._name, "device is closed", errno.EBADF)
        _check_mtu(self._name, value)
        try:
            self._dev.mtu = value
        except OSError as exc:
            raise _device_error(self._name, f"setting the MTU to {value}", exc) from exc

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Close the file descriptor, which deletes the interface; calling again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._dev.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        extra = " offload" if self._offload else ""
        return f"<TunDevice {self._name} {state}{extra}>"


def open_tun(name: str = "olm0", mtu: int = 1500, *, offload: bool = False) -> TunDevice:
    """Create the TUN interface ``name`` (IFF_TUN | IFF_NO_PI) with the given MTU.

    With ``offload``, also IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
    if the kernel refuses either, a warning is logged, the device is opened without them, and
    :attr:`TunDevice.offload` is false with :attr:`TunDevice.offload_error` saying why.

    The interface is left administratively down and without addresses; see
    :func:`olm.device.netconfig.configure_tun`. A name containing ``%d`` lets the kernel pick
    the number. Raises :class:`DeviceError` with an actionable message on failure.
    """
    _check_name(name)
    _check_mtu(name, mtu)
    tun: TunDevice | None = None
    error: str | None = None
    if offload:
        tun, error = _open_offload(name)
    if tun is None:
        try:
            dev = pytun.TunTapDevice(name=name, flags=_TUN_FLAGS)
        except OSError as exc:
            raise _device_error(name, "opening the TUN device", exc) from exc
        tun = TunDevice(dev, offload_error=error)
    try:
        if tun.mtu != mtu:
            tun.mtu = mtu
    except DeviceError:
        tun.close()
        raise
    return tun


def _open_offload(name: str) -> tuple[TunDevice | None, str | None]:
    """Open ``name`` with IFF_VNET_HDR and enable TCP offloads; on refusal return the reason."""
    try:
        dev = pytun.TunTapDevice(name=name, flags=_TUN_FLAGS | pytun.IFF_VNET_HDR)
    except OSError as exc:
        reason = f"IFF_VNET_HDR refused: {exc.strerror or exc}"
    else:
        try:
            fcntl.ioctl(dev.fileno(), _TUNSETOFFLOAD, TUN_OFFLOADS)
        except OSError as exc:
            dev.close()  # deletes the interface; the caller opens it again without offloads
            reason = f"TUNSETOFFLOAD refused: {exc.strerror or exc}"
        else:
            return TunDevice(dev, offload=True), None
    log.warning("%s: TUN offloads off (%s); one packet per system call", name, reason)
    return None, reason


def _check_name(name: str) -> None:
    """Reject names the kernel would refuse (net/core/dev.c: dev_valid_name)."""
    encoded = name.encode("utf-8", errors="replace")
    if len(encoded) >= IFNAMSIZ:
        raise DeviceError(
            name,
            f"interface name is {len(encoded)} bytes; at most {IFNAMSIZ - 1} fit",
            errno.EINVAL,
        )
    if name in (".", "..") or not _NAME_FORBIDDEN.isdisjoint(name):
        raise DeviceError(
            name, "interface name must not be '.', '..' or contain '/', ':' or spaces", errno.EINVAL
        )


def _check_mtu(name: str, mtu: int) -> None:
    """Reject an MTU outside what IPv4 requires and the tun driver allows."""
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise DeviceError(name, f"MTU {mtu} is outside {MIN_MTU}..{MAX_MTU}", errno.EINVAL)


def _device_error(name: str, action: str, exc: OSError) -> DeviceError:
    """Translate an OSError from the TUN driver into a DeviceError a user can act on."""
    code = exc.errno
    reason = exc.strerror or str(exc)
    if code in (errno.EPERM, errno.EACCES):
        message = (
            f"{action} needs CAP_NET_ADMIN and read/write access to /dev/net/tun "
            f"(run as root or grant the capability): {reason}"
        )
    elif code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        message = f"{action} failed: /dev/net/tun is unavailable (modprobe tun?): {reason}"
    elif code == errno.EBUSY:
        message = f"{action} failed: the interface is already open in another process: {reason}"
    elif code == errno.EINVAL:
        message = (
            f"{action} failed: invalid argument, or the name belongs to an interface "
            f"that is not a TUN device: {reason}"
        )
    else:
        message = f"{action} failed: {reason}"
    return DeviceError(name, message, code)
