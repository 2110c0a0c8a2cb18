"""Upstream addresses: URLs of every scheme, ``host[:port]`` as before, resolv.conf defaults.

An upstream is written as a URL: ``udp://host[:port]`` (the default when there is no scheme:
UDP, and TCP on TC=1), ``tcp://``, ``tls://host[:853]`` (DNS over TLS, RFC 7858),
``https://host[:443]/dns-query`` (DNS over HTTPS, RFC 8484) or ``quic://host[:853]`` (DNS over
QUIC, RFC 9250). In a settings file it may also be a table naming the TLS server name apart
from the address connected to, a CA file to trust, a SOCKS5 proxy, and GET for DoH::

    { url = "tls://192.0.2.53", server_name = "dns.example", ca_file = "ca.pem",
      socks5 = "socks5://127.0.0.1:1080" }

The host may be a name when a bootstrap resolver is configured to find its address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = [
    "SCHEMES",
    "Upstream",
    "UpstreamConfigError",
    "parse_upstream",
    "resolv_conf_upstreams",
    "upstream_from",
]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Schemes and their default ports: DNS 53, DoT and DoQ 853 (RFC 7858 3.1, RFC 9250 4.1.1),
#: DoH 443 (RFC 8484 uses https).
SCHEMES: Final = {"udp": 53, "tcp": 53, "tls": 853, "https": 443, "quic": 853}
ENCRYPTED: Final = frozenset({"tls", "https", "quic"})
#: One label of a host name (RFC 1123 section 2.1, with "_" as seen in practice). Labels are
#: checked one by one: a single pattern over the whole name backtracks exponentially.
_LABEL: Final = re.compile(r"[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?")
_TABLE_KEYS: Final = {"url", "server_name", "ca_file", "socks5", "method"}


class UpstreamConfigError(ValueError):
    """An upstream address is malformed, or no usable upstream could be found."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream resolver: where it is, by which scheme, and how to trust it.

    ``host`` is an IP address literal or a host name (found through the bootstrap resolvers).
    ``server_name`` is the name its certificate must hold (default: the host), ``ca_file`` a
    CA bundle to trust instead of the system's, ``socks5`` a proxy to connect through,
    ``method`` POST or GET for DoH.
    """

    host: str
    port: int = 53
    scheme: str = "udp"
    path: str = ""
    server_name: str | None = None
    ca_file: str | None = None
    socks5: str | None = None
    method: str = "POST"

    @property
    def is_ip(self) -> bool:
        """Whether the host is an IP address literal (no bootstrap lookup needed)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def address(self) -> _IPAddress:
        """The host as an :mod:`ipaddress` object; ValueError for a host name."""
        return ipaddress.ip_address(self.host)

    @property
    def encrypted(self) -> bool:
        """Whether the scheme encrypts (DoT, DoH, DoQ)."""
        return self.scheme in ENCRYPTED

    @property
    def tls_name(self) -> str:
        """The name the server's certificate must hold (RFC 8310 section 8)."""
        return self.server_name or self.host

    @property
    def url(self) -> str:
        """The upstream as a URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme == "udp":
            return f"{host}:{self.port}"  # as written before schemes existed
        return self.url


def _port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UpstreamConfigError(f"{text!r}: port must be a number from 1 to 65535")
    return int(port_text)


def _is_host_name(host: str) -> bool:
    """Whether ``host`` is a host name: labels of letters, digits, ``-`` and ``_``."""
    name = host[:-1] if host.endswith(".") else host
    if not 1 <= len(name) <= 253 or name.replace(".", "").isdigit():
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def _host(text: str, host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _is_host_name(host):
        raise UpstreamConfigError(
            f"{text!r}: not an IP address or host name (write host[:port], IPv6 as [addr]:port)"
        )
    return host.lower().rstrip(".")


def parse_upstream(text: str) -> Upstream:
    """Parse a URL (``tls://dns.example``) or ``host[:port]`` into an Upstream."""
    text = text.strip()
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise UpstreamConfigError(
                f"{text!r}: scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise UpstreamConfigError(f"{text!r}: no user, query or fragment in an upstream URL")
        try:
            port = parts.port or SCHEMES[scheme]
        except ValueError:
            raise UpstreamConfigError(f"{text!r}: port must be a number from 1 to 65535") from None
        host = _host(text, parts.hostname or "")
        path = parts.path if scheme == "https" else ""
        if scheme != "https" and parts.path not in ("", "/"):
            raise UpstreamConfigError(f"{text!r}: only https:// upstreams have a path")
        if scheme == "https" and not path:
            path = "/dns-query"  # RFC 8484 section 4.1 (the usual template)
        return Upstream(host, port, scheme, path)
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
        host = text  # IPv4 or a name without port, or a bare IPv6 address
    if not host:
        raise UpstreamConfigError(f"{text!r}: not an IP address")
    return Upstream(_host(text, host), port)


def upstream_from(spec: str | Mapping[str, Any]) -> Upstream:
    """Parse an upstream written as a string or as a settings table."""
    if isinstance(spec, str):
        return parse_upstream(spec)
    unknown = set(spec) - _TABLE_KEYS
    if unknown:
        raise UpstreamConfigError(
            f"unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_TABLE_KEYS))})"
        )
    url = spec.get("url")
    if not isinstance(url, str):
        raise UpstreamConfigError('an upstream table needs url = "scheme://host"')
    upstream = parse_upstream(url)
    extras: dict[str, Any] = {}
    for key in ("server_name", "ca_file", "socks5"):
        value = spec.get(key)
        if value is not None and not isinstance(value, str):
            raise UpstreamConfigError(f"{key} must be a string")
        if value:
            extras[key] = value
    if "server_name" in extras:
        _host(url, extras["server_name"])
    if "socks5" in extras:
        proxy = urlsplit(extras["socks5"])
        if proxy.scheme != "socks5" or not proxy.hostname or not proxy.port:
            raise UpstreamConfigError("socks5 must be socks5://host:port")
    method = str(spec.get("method", "POST")).upper()
    if method not in ("POST", "GET"):
        raise UpstreamConfigError("method must be POST or GET")
    if method == "GET" and upstream.scheme != "https":
        raise UpstreamConfigError("method applies to https:// upstreams only")
    return replace(upstream, method=method, **extras)


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
