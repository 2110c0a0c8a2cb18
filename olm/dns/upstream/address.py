"""Upstream addresses: ``host[:port]`` as configured, and the defaults from resolv.conf."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Upstream", "UpstreamConfigError", "parse_upstream", "resolv_conf_upstreams"]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UpstreamConfigError(ValueError):
    """An upstream address is malformed, or no usable upstream could be found."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream resolver: an IP address literal and a port."""

    host: str
    port: int = 53

    @property
    def address(self) -> _IPAddress:
        """The host as an :mod:`ipaddress` object."""
        return ipaddress.ip_address(self.host)

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_upstream(text: str) -> Upstream:
    """Parse ``host[:port]`` (IPv6 as ``[addr]:port`` or a bare address) into an Upstream.

    The host must be an IP address: resolving a name would need a resolver, which may be us.
    """
    text = text.strip()
    port = 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise UpstreamConfigError(f"{text!r}: missing ']' after an IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise UpstreamConfigError(f"{text!r}: expected ':port' after ']'")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(text, port_text)
    else:
        host = text  # IPv4 without port, or a bare IPv6 address
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UpstreamConfigError(
            f"{text!r}: not an IP address (write host[:port], IPv6 as [addr]:port)"
        ) from None
    return Upstream(str(address), port)


def _port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UpstreamConfigError(f"{text!r}: port must be a number from 1 to 65535")
    return int(port_text)


def resolv_conf_upstreams(
    path: str | Path = "/etc/resolv.conf", exclude: Iterable[str] = ()
) -> list[Upstream]:
    """Return the nameservers of a resolv.conf(5) file, skipping the addresses in ``exclude``.

    ``exclude`` holds the proxy's own service addresses, which would make the proxy its own
    upstream. Raises :class:`UpstreamConfigError` when the file yields no usable nameserver.
    """
    excluded = {ipaddress.ip_address(a) for a in exclude}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UpstreamConfigError(
            f"no upstreams configured and {path} cannot be read: {exc.strerror}"
        ) from None
    found: list[Upstream] = []
    skipped: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue  # comments (# or ;), other options, blank lines
        try:
            upstream = Upstream(str(ipaddress.ip_address(fields[1])))
        except ValueError:
            skipped.append(fields[1])
            continue
        if upstream.address in excluded:
            skipped.append(fields[1])
            continue
        if upstream not in found:
            found.append(upstream)
    if not found:
        why = f" (skipped: {', '.join(skipped)})" if skipped else ""
        raise UpstreamConfigError(
            f"no upstreams configured and no usable nameserver in {path}{why}; "
            "set upstreams in the configuration"
        )
    return found
