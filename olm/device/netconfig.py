"""Kernel-side configuration of the TUN interface over rtnetlink (pyroute2).

:func:`configure_tun` brings the interface up, sets its MTU, gives the host its addresses and
routes each service address into the TUN with a host route, so that the kernel hands every
packet for a service address to olm. It returns a :class:`NetConfig` that records exactly what
was changed; :meth:`NetConfig.undo` takes those changes back and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from olm.device import DeviceError

__all__ = ["IPV6_MIN_MTU", "NetConfig", "configure_tun", "default_host_address"]

#: IPv6 needs every link to carry 1280-octet packets (RFC 8200 section 5); below that the
#: kernel switches IPv6 off on the interface.
IPV6_MIN_MTU = 1280

# linux/if.h and linux/if_addr.h.
_IFF_UP = 0x1
_IFA_F_NODAD = 0x02

#: Errors that mean "already gone" when deleting: the link (ENODEV), the route (ESRCH, ENOENT)
#: or the address (EADDRNOTAVAIL) no longer exists.
_GONE = frozenset({errno.ENODEV, errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL})

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class _AddedAddress:
    """An address configure_tun added to the interface."""

    interface: _Interface

    def __str__(self) -> str:
        return str(self.interface)


@dataclass(frozen=True, slots=True)
class _AddedRoute:
    """A route configure_tun added through the interface (a host route unless ``prefixlen``)."""

    destination: _Address
    prefsrc: _Address | None
    prefixlen: int = -1  # -1: the whole address (a host route)

    @property
    def length(self) -> int:
        """The route's prefix length."""
        return self.destination.max_prefixlen if self.prefixlen < 0 else self.prefixlen

    def __str__(self) -> str:
        return f"{self.destination}/{self.length}"


class NetConfig:
    """The changes :func:`configure_tun` made to one interface, and the means to undo them.

    ``undo()`` removes the routes and addresses that were added, then restores the MTU and the
    administrative state the interface had before. It is idempotent and tolerates things that
    are already gone (closing a TUN deletes the interface and everything on it). The object is
    also a context manager that undoes on exit.
    """

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index
        self._addresses: list[_AddedAddress] = []
        self._routes: list[_AddedRoute] = []
        self._old_mtu: int | None = None
        self._was_down = False

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses that were added and not yet removed, as ``address/prefixlen``."""
        return tuple(str(a) for a in self._addresses)

    @property
    def routes(self) -> tuple[str, ...]:
        """The host routes that were added and not yet removed, as ``address/prefixlen``."""
        return tuple(str(r) for r in self._routes)

    def undo(self) -> None:
        """Take back every change that was made; raise DeviceError only for real failures.

        Every step is attempted even if an earlier one fails; what could not be undone stays
        recorded so that a later call retries it.
        """
        if not (self._addresses or self._routes or self._old_mtu is not None or self._was_down):
            return
        failures: list[DeviceError] = []
        try:
            ipr = IPRoute()
        except OSError as exc:
            raise DeviceError(self.name, f"cannot open rtnetlink: {exc}", exc.errno) from exc
        with ipr:
            if not self._still_ours(ipr):
                # The interface is gone, and with it everything configured on it.
                self._forget()
                return
            for route in reversed(self._routes):
                if self._attempt(
                    failures, f"deleting route {route}", _route_op, ipr, "del", self.index, route
                ):
                    self._routes.remove(route)
            for address in reversed(self._addresses):
                if self._attempt(
                    failures,
                    f"deleting address {address}",
                    _address_op,
                    ipr,
                    "del",
                    self.index,
                    address,
                ):
                    self._addresses.remove(address)
            if self._old_mtu is not None and self._attempt(
                failures,
                f"restoring MTU {self._old_mtu}",
                _set_link,
                ipr,
                self.index,
                mtu=self._old_mtu,
            ):
                self._old_mtu = None
            if self._was_down and self._attempt(
                failures, "setting the link down", _set_link, ipr, self.index, state="down"
            ):
                self._was_down = False
        if failures:
            raise failures[0]

    def __enter__(self) -> NetConfig:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.undo()

    def __repr__(self) -> str:
        return (
            f"<NetConfig {self.name} index={self.index} addresses={list(self.addresses)} "
            f"routes={list(self.routes)}>"
        )

    def _apply(
        self,
        ipr: Any,
        mtu: int,
        hosts: list[_Interface],
        services: list[_Address],
        prefsrc: dict[int, _Address],
        prefixes: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    ) -> None:
        """Make the changes, recording each as soon as the kernel has accepted it."""
        name, index = self.name, self.index
        try:
            link = ipr.link("get", index=index)[0]
        except NetlinkError as exc:
            raise _netlink_error(name, "looking up the interface", exc) from exc
        old_mtu = int(link.get("mtu"))
        if old_mtu != mtu:
            _checked(name, f"setting the MTU to {mtu}", _set_link, ipr, index, mtu=mtu)
            self._old_mtu = old_mtu
        if not int(link["flags"]) & _IFF_UP:
            _checked(name, "setting the link up", _set_link, ipr, index, state="up")
            self._was_down = True
        for host in hosts:
            added = _AddedAddress(host)
            try:
                _address_op(ipr, "add", index, added)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise _netlink_error(
                        name, f"adding address {added}", exc, ipv6=host.version == 6
                    ) from exc
                # Already on this interface (RTM_NEWADDR with NLM_F_EXCL): not ours to remove.
                continue
            self._addresses.append(added)
        routes = [_AddedRoute(service, prefsrc.get(service.version)) for service in services]
        routes += [
            _AddedRoute(net.network_address, prefsrc.get(net.version), net.prefixlen)
            for net in prefixes
        ]
        for route in routes:
            service = route.destination
            try:
                _route_op(ipr, "add", index, route)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise _netlink_error(
                        name, f"adding route {route}", exc, ipv6=service.version == 6
                    ) from exc
                oif = _route_oif(ipr, service)
                if oif != index:
                    raise DeviceError(
                        name,
                        f"a route to {route} already exists through interface index {oif}; "
                        "remove it first",
                        errno.EEXIST,
                    ) from exc
                continue  # the same route through this interface: not ours to remove
            self._routes.append(route)

    def _still_ours(self, ipr: Any) -> bool:
        """Tell whether interface ``index`` still exists under the name that was configured."""
        try:
            links = ipr.link("get", index=self.index)
        except NetlinkError as exc:
            if exc.code in _GONE:
                return False
            raise _netlink_error(self.name, "looking up the interface", exc) from exc
        return bool(links) and links[0].get("ifname") == self.name

    def _forget(self) -> None:
        self._addresses.clear()
        self._routes.clear()
        self._old_mtu = None
        self._was_down = False

    def _attempt(
        self, failures: list[DeviceError], action: str, op: Any, *args: Any, **kwargs: Any
    ) -> bool:
        """Run one undo step; True if it is done (or already was), else record the failure."""
        try:
            op(*args, **kwargs)
        except NetlinkError as exc:
            if exc.code in _GONE:
                return True
            failures.append(_netlink_error(self.name, action, exc))
            return False
        return True


def configure_tun(
    name: str,
    *,
    mtu: int,
    host_addresses: list[str],
    service_addresses: list[str],
    prefixes: list[str] | None = None,
) -> NetConfig:
    """Bring ``name`` up with ``mtu``, add ``host_addresses`` and a host route per service.

    ``host_addresses`` are ``address[/prefixlen]`` strings (``10.30.30.1/32``,
    ``fd30:30:30::1/128``); IPv6 ones are added with IFA_F_NODAD, so they are usable at once
    instead of after duplicate address detection (RFC 4862 section 5.4). Each entry of
    ``service_addresses`` gets a /32 or /128 route through the interface whose preferred source
    is the first host address of the same family, so the kernel's replies and queries to the
    service come from a predictable address. Each of ``prefixes`` (``198.18.0.0/15``) is routed
    through the interface too, so that the traffic for a whole range (fake-IP addresses) comes
    to us. On failure everything done so far is undone and :class:`DeviceError` is raised.
    """
    hosts = [_parse_interface(name, text) for text in host_addresses]
    services = [_parse_address(name, text) for text in service_addresses]
    networks = [ipaddress.ip_network(text) for text in prefixes or ()]
    if mtu < IPV6_MIN_MTU and any(a.version == 6 for a in [*hosts, *services]):
        raise DeviceError(
            name,
            f"MTU {mtu} is below the IPv6 minimum of {IPV6_MIN_MTU} (RFC 8200 section 5)",
            errno.EINVAL,
        )
    prefsrc: dict[int, _Address] = {}
    for host in hosts:
        prefsrc.setdefault(host.version, host.ip)

    try:
        ipr = IPRoute()
    except OSError as exc:
        raise DeviceError(name, f"cannot open rtnetlink: {exc}", exc.errno) from exc
    with ipr:
        index = _link_index(ipr, name)
        config = NetConfig(name, index)
        try:
            config._apply(ipr, mtu, hosts, services, prefsrc, networks)
        except BaseException:
            # The original failure is the one worth reporting.
            with contextlib.suppress(DeviceError):
                config.undo()
            raise
    return config


def default_host_address(service: str) -> str:
    """Return the host-side address that pairs with ``service`` on the TUN, with its prefix.

    The host address lies in the service address's /24 (IPv4) or /64 (IPv6) with host part 1
    (2 if the service itself is .1), as a host prefix: ``10.30.30.30`` -> ``10.30.30.1/32``,
    ``fd30:30:30::30`` -> ``fd30:30:30::1/128``.
    """
    addr = ipaddress.ip_address(service)
    network = ipaddress.ip_network(f"{addr}/{24 if addr.version == 4 else 64}", strict=False)
    host = network.network_address + 1
    if host == addr:
        host = network.network_address + 2
    return f"{host}/{host.max_prefixlen}"


def _set_link(ipr: Any, index: int, **kwargs: Any) -> None:
    ipr.link("set", index=index, **kwargs)


def _address_op(ipr: Any, command: str, index: int, address: _AddedAddress) -> None:
    interface = address.interface
    kwargs: dict[str, Any] = {}
    if interface.version == 6:
        kwargs["flags"] = _IFA_F_NODAD
    ipr.addr(
        command,
        index=index,
        address=str(interface.ip),
        prefixlen=interface.network.prefixlen,
        **kwargs,
    )


def _route_op(ipr: Any, command: str, index: int, route: _AddedRoute) -> None:
    kwargs: dict[str, Any] = {}
    if route.prefsrc is not None and command == "add":
        kwargs["prefsrc"] = str(route.prefsrc)
    ipr.route(
        command,
        family=socket.AF_INET if route.destination.version == 4 else socket.AF_INET6,
        dst=str(route.destination),
        dst_len=route.length,
        oif=index,
        **kwargs,
    )


def _route_oif(ipr: Any, destination: _Address) -> int | None:
    """Return the output interface the kernel now picks for ``destination``, if any."""
    try:
        found = ipr.route("get", dst=str(destination))
    except NetlinkError:
        return None
    if not found:
        return None
    oif = found[0].get("oif")
    return int(oif) if oif is not None else None


def _link_index(ipr: Any, name: str) -> int:
    try:
        indices = ipr.link_lookup(ifname=name)
    except NetlinkError as exc:
        raise _netlink_error(name, "looking up the interface", exc) from exc
    if not indices:
        raise DeviceError(name, "no such interface", errno.ENODEV)
    return int(indices[0])


def _checked(name: str, action: str, op: Any, *args: Any, **kwargs: Any) -> None:
    """Run one netlink operation, turning a NetlinkError into a DeviceError."""
    try:
        op(*args, **kwargs)
    except NetlinkError as exc:
        raise _netlink_error(name, action, exc) from exc


def _parse_interface(name: str, text: str) -> _Interface:
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise DeviceError(name, f"bad host address {text!r}: {exc}", errno.EINVAL) from exc


def _parse_address(name: str, text: str) -> _Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise DeviceError(name, f"bad service address {text!r}: {exc}", errno.EINVAL) from exc


def _netlink_error(name: str, action: str, exc: NetlinkError, *, ipv6: bool = False) -> DeviceError:
    """Translate a NetlinkError into a DeviceError a user can act on."""
    code = int(exc.code)
    reason = exc.args[1] if len(exc.args) > 1 else str(exc)
    if code == errno.EPERM:
        message = f"{action} needs CAP_NET_ADMIN (run as root or grant the capability): {reason}"
    elif code == errno.EACCES and ipv6:
        # net/ipv6/addrconf.c refuses with EACCES when the interface has disable_ipv6 set.
        message = (
            f"{action} failed: IPv6 is disabled on the interface "
            f"(sysctl net.ipv6.conf.{name}.disable_ipv6): {reason}"
        )
    elif code in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
        message = f"{action} failed: the address family is not supported (IPv6 off?): {reason}"
    else:
        message = f"{action} failed: {reason}"
    return DeviceError(name, message, code)
