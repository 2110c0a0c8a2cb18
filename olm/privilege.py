"""Checks for the Linux capability olm needs to create and configure its TUN device.

Creating a TUN interface (TUNSETIFF on /dev/net/tun) and changing links, addresses and routes
over rtnetlink both require CAP_NET_ADMIN in the network namespace's owning user namespace
(capabilities(7)). These helpers turn a missing capability into one clear message up front
instead of an EPERM from deep inside a netlink call.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = [
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "effective_capabilities",
    "missing_net_admin",
    "require_bind_service",
    "require_net_admin",
]

#: Bit numbers of CAP_NET_BIND_SERVICE and CAP_NET_ADMIN in the capability sets
#: (linux/capability.h).
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
#: Ports below this need CAP_NET_BIND_SERVICE (net.ipv4.ip_unprivileged_port_start).
_UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")

_STATUS = Path("/proc/self/status")


def effective_capabilities(status_path: Path | None = None) -> int | None:
    """Return this process's effective capability mask, or None if it cannot be read.

    The mask is the ``CapEff`` line of ``/proc/self/status`` (proc(5)), a hexadecimal bit set;
    ``status_path`` reads another file of that format instead.
    """
    try:
        text = (status_path or _STATUS).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            try:
                return int(value.strip(), 16)
            except ValueError:
                return None
    return None


def missing_net_admin() -> str | None:
    """Return None if this process holds CAP_NET_ADMIN (effective), else a one-line reason."""
    caps = effective_capabilities()
    if caps is None:
        return f"cannot tell whether CAP_NET_ADMIN is held: no CapEff line in {_STATUS}"
    if caps & (1 << CAP_NET_ADMIN):
        return None
    return "CAP_NET_ADMIN is not in this process's effective capability set"


def require_net_admin(what: str) -> None:
    """Exit with status 2 and a message on stderr unless this process holds CAP_NET_ADMIN.

    ``what`` names the action that needs the capability, e.g. ``"creating the TUN device"``.
    """
    if missing_net_admin() is None:
        return
    print(f"olm: {what} needs CAP_NET_ADMIN (run as root or grant the capability)", file=sys.stderr)
    raise SystemExit(2)


def require_bind_service(port: int) -> None:
    """Exit with status 2 unless this process may bind ``port`` (CAP_NET_BIND_SERVICE).

    Ports from ``net.ipv4.ip_unprivileged_port_start`` (1024 by default) up need nothing.
    """
    try:
        start = int(_UNPRIVILEGED_PORT_START.read_text().strip())
    except (OSError, ValueError):
        start = 1024
    if port >= start:
        return
    caps = effective_capabilities()
    if caps is not None and caps & (1 << CAP_NET_BIND_SERVICE):
        return
    print(
        f"olm: listening on port {port} needs CAP_NET_BIND_SERVICE (run as root, grant the "
        "capability, or use a port from 1024 up)",
        file=sys.stderr,
    )
    raise SystemExit(2)
