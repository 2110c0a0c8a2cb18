"""Opening connections to upstreams: the address, the SOCKS5 proxy, verified TLS, resumption.

Shared by the stream transports (TCP, DoT: :mod:`~olm.dns.upstream.stream`) and DoH
(:mod:`~olm.dns.upstream.doh`); DoQ finds its address here too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from netstack.counters import Counters
from olm.dns.upstream.address import Upstream
from olm.dns.upstream.base import UpstreamFailure
from olm.dns.upstream.tls import ResumingContext, is_verification_error

if TYPE_CHECKING:
    from olm.dns.upstream.bootstrap import Bootstrap

__all__ = ["IdleSweep", "address_of", "open_connection", "remember_session"]

log = logging.getLogger("olm.dns.upstream")

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def address_of(upstream: Upstream, bootstrap: Bootstrap | None) -> str:
    """Return the address to connect to: the upstream's own, or its name's (bootstrap).

    Raises ConnectionError (a failed try) when a name cannot be found.
    """
    if upstream.is_ip:
        return upstream.host
    if bootstrap is None:
        raise ConnectionError(f"{upstream}: a host name needs bootstrap resolvers")
    try:
        return (await bootstrap.lookup(upstream.host))[0]
    except UpstreamFailure as exc:
        raise ConnectionError(f"{upstream}: {exc}") from None


async def open_connection(
    factory: Callable[[], P],
    upstream: Upstream,
    address: str,
    context: ssl.SSLContext | None,
    counters: Counters,
) -> tuple[asyncio.Transport, P]:
    """Connect to ``address`` at the upstream's port, through its SOCKS5 proxy if it names one.

    With ``context``, TLS with the upstream's TLS name for SNI and the certificate check; a
    certificate that does not verify is counted (``tls_verify_failed``), logged with the
    upstream only, and raised (RFC 8310 section 8: a failed try, never plaintext instead).
    """
    loop = asyncio.get_running_loop()
    name = upstream.tls_name if context is not None else None
    try:
        if upstream.socks5:
            from python_socks import ProxyError
            from python_socks.async_.asyncio import Proxy

            try:
                sock = await Proxy.from_url(upstream.socks5).connect(
                    dest_host=address, dest_port=upstream.port
                )
            except ProxyError as exc:
                raise ConnectionError(f"{upstream}: SOCKS5: {exc}") from None
            transport, protocol = await loop.create_connection(
                factory, sock=sock, ssl=context, server_hostname=name
            )
        else:
            transport, protocol = await loop.create_connection(
                factory, address, upstream.port, ssl=context, server_hostname=name
            )
    except OSError as exc:
        if is_verification_error(exc):
            counters.inc("tls_verify_failed")
            log.warning("upstream %s: certificate not accepted: %s", upstream, exc)
        raise
    if _resumed(transport):
        counters.inc("tls_resumed")
    return transport, protocol


def _resumed(transport: asyncio.BaseTransport) -> bool:
    ssl_object: Any = transport.get_extra_info("ssl_object")
    return ssl_object is not None and bool(ssl_object.session_reused)


def remember_session(
    context: ssl.SSLContext | None, upstream: Upstream, transport: asyncio.BaseTransport
) -> None:
    """Keep a connection's TLS session for the next one (RFC 8446 section 2.2)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if isinstance(context, ResumingContext) and ssl_object is not None:
        context.remember(upstream.tls_name, ssl_object)


class IdleSweep:
    """Runs ``sweep(now)`` every ``idle_timeout / 2`` seconds while there is something to sweep.

    ``sweep`` closes the connections idle for ``idle_timeout`` (RFC 7766 section 6.2.3) and
    returns whether any connection is left; the timer stops when none is, and :meth:`arm`
    starts it again for a new connection.
    """

    def __init__(self, idle_timeout: float, sweep: Callable[[float], bool]) -> None:
        self.idle_timeout = idle_timeout
        self.sweep = sweep
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    def arm(self) -> None:
        """Make sure the sweep will run (a connection was opened)."""
        if self._timer is None and not self._stopped:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.idle_timeout / 2, self._run)

    def _run(self) -> None:
        self._timer = None
        if self.sweep(asyncio.get_running_loop().time()):
            self.arm()

    def stop(self) -> None:
        """Never sweep again (the transport closed)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
