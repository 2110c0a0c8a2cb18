"""DNS over HTTPS to one upstream (RFC 8484), over HTTP/2 with httpx.

httpx (with h2 for HTTP/2 and socksio for SOCKS) is a maintained asyncio HTTP client that
multiplexes concurrent requests as streams of one HTTP/2 connection, keeps connections in a
pool for reuse, and reaches servers through a SOCKS5 proxy. aiohttp has no HTTP/2 client, and
a hand-written HTTP/2 client over h2 would repeat httpx's flow control, pooling and error
handling for no gain.

Each query is one request on a kept connection: HTTP/2, which RFC 8484 section 5.2 recommends,
when the server offers it by ALPN, else HTTP/1.1. POST carries the message as the body; GET
carries it as the ``dns`` parameter, base64url without padding (section 4.1.1). The DNS ID is 0
in both (section 4.1: it keeps equal queries equal for HTTP caches). The request goes to the
upstream's address, while the Host header (HTTP/2 ``:authority``), the TLS SNI and the
certificate check use the upstream's TLS name: the address in the URL, the name in the Host
header and in httpx's documented ``sni_hostname`` request extension. A certificate or name
that does not verify fails the try; there is never a plaintext fallback (RFC 8310 section 8).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, Final

import httpx

from netstack.counters import Counters
from olm.dns.answer import Answer
from olm.dns.upstream.address import Upstream
from olm.dns.upstream.base import Query, UpstreamFailure
from olm.dns.upstream.tls import client_context, is_verification_error
from olm.dns.wire import WireError

if TYPE_CHECKING:
    from olm.dns.upstream.bootstrap import Bootstrap

__all__ = ["DohError", "DohTransport"]

#: RFC 8484 section 6: the media type of a DNS message.
DNS_MESSAGE: Final = "application/dns-message"
#: The largest DNS message (RFC 8484 section 6: the body is one message).
_MAX_BODY: Final = 65535
#: HTTP/1.1 connections kept at most (HTTP/2 needs one); idle ones closed after this long.
_MAX_CONNECTIONS: Final = 16
_KEEPALIVE: Final = 30.0
#: Request headers httpx adds by default and we leave out: the User-Agent (RFC 8484 section
#: 8.2: headers that tell clients apart), and Accept-Encoding (a DNS message is small).
_DROPPED_HEADERS: Final = ("user-agent", "accept-encoding")


class DohError(OSError):
    """A DoH exchange got an HTTP response that is not a DNS answer to the query."""


class DohTransport:
    """DoH exchanges with one upstream over one shared httpx client.

    Counters (on the node given): ``doh.requests``, ``doh.responses`` (answers returned),
    ``doh.connections`` (TLS connections made), ``doh.http2`` and ``doh.http1`` (HTTP
    responses by version), ``doh.http_error.<status>``, ``doh.bad_content_type``,
    ``doh.too_large``, ``doh.mismatch``, ``doh.malformed``, ``tls_verify_failed``.
    """

    def __init__(
        self, upstream: Upstream, counters: Counters, bootstrap: Bootstrap | None = None
    ) -> None:
        self.upstream = upstream
        self.counters = counters
        self.bootstrap = bootstrap
        name = upstream.tls_name
        # The authority names the server, with the port unless it is https' own (RFC 9110
        # section 7.2); an IPv6 literal is bracketed.
        host = f"[{name}]" if ":" in name else name
        self._authority = host if upstream.port == 443 else f"{host}:{upstream.port}"
        self._extensions: dict[str, Any] = {"sni_hostname": name, "trace": self._trace}
        self._client: httpx.AsyncClient | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def _client_now(self) -> httpx.AsyncClient:
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(
                http2=True,
                verify=client_context(self.upstream.ca_file, alpn=["h2"]),
                proxy=self.upstream.socks5,
                # Proxies and CA bundles come from the upstream's settings only, never from
                # HTTPS_PROXY or similar variables of the environment.
                trust_env=False,
                follow_redirects=False,
                # No cookies kept: they would tell our queries apart (RFC 8484 section 8.2).
                cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
                limits=httpx.Limits(
                    max_connections=_MAX_CONNECTIONS,
                    max_keepalive_connections=_MAX_CONNECTIONS,
                    keepalive_expiry=_KEEPALIVE,
                ),
            )
            for header in _DROPPED_HEADERS:
                client.headers.pop(header, None)
        return client

    async def _url(self) -> str:
        """Return the request URL: the upstream's address, port and path."""
        upstream = self.upstream
        address = upstream.host
        if not upstream.is_ip:
            if self.bootstrap is None:
                raise ConnectionError(f"DoH {upstream}: a host name needs bootstrap resolvers")
            try:
                address = (await self.bootstrap.lookup(upstream.host))[0]
            except UpstreamFailure as exc:
                raise ConnectionError(f"DoH {upstream}: {exc}") from None
        host = f"[{address}]" if ":" in address else address
        return f"https://{host}:{upstream.port}{upstream.path}"

    async def _trace(self, event: str, info: dict[str, Any]) -> None:
        """Count the TLS connections httpcore makes (its ``trace`` request extension)."""
        if event.endswith(".start_tls.complete"):  # connection. or socks.
            self.counters.inc("doh.connections")

    async def exchange(self, query: Query, timeout: float) -> Answer:
        """Ask once over HTTPS; raise TimeoutError, or OSError when no answer came back."""
        if self._closed:
            raise ConnectionError("transport closed")
        loop = asyncio.get_running_loop()
        limit = query.timeout(timeout, loop.time())
        if limit <= 0:
            raise TimeoutError
        try:
            async with asyncio.timeout(limit):
                return await self._exchange(query, limit)
        except httpx.TimeoutException:
            raise TimeoutError(f"DoH {self.upstream}: no answer within {limit:.3g} s") from None

    async def _exchange(self, query: Query, limit: float) -> Answer:
        url = await self._url()
        client = self._client_now()
        wire = query.wire(0)  # RFC 8484 section 4.1: ID 0
        headers = {"host": self._authority, "accept": DNS_MESSAGE}
        if self.upstream.method == "GET":
            dns = base64.urlsafe_b64encode(wire).rstrip(b"=").decode("ascii")
            request = client.build_request(
                "GET",
                f"{url}?dns={dns}",
                headers=headers,
                timeout=limit,
                extensions=self._extensions,
            )
        else:
            headers["content-type"] = DNS_MESSAGE
            request = client.build_request(
                "POST",
                url,
                content=wire,
                headers=headers,
                timeout=limit,
                extensions=self._extensions,
            )
        self.counters.inc("doh.requests")
        try:
            response = await client.send(request, stream=True)
            try:
                data = await self._body(response)
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as exc:
            failure = _verification_error(exc)
            if failure is not None:
                self.counters.inc("tls_verify_failed")
                raise failure from None
            raise ConnectionError(f"DoH {self.upstream}: {exc or type(exc).__name__}") from exc
        if not query.matches(data, 0):
            self.counters.inc("doh.mismatch")
            raise DohError(f"DoH {self.upstream}: the reply does not answer the query")
        try:
            answer = query.answer(data)
        except WireError as exc:
            self.counters.inc("doh.malformed")
            raise DohError(f"DoH {self.upstream}: malformed reply ({exc})") from None
        self.counters.inc("doh.responses")
        return answer

    async def _body(self, response: httpx.Response) -> bytes:
        """Return the body of a 200 response carrying a DNS message; raise DohError if not."""
        counters = self.counters
        counters.inc("doh.http2" if response.http_version == "HTTP/2" else "doh.http1")
        status = response.status_code
        # RFC 8484 section 4.2.1: a DNS answer, whatever its RCODE, comes with a 2xx status;
        # servers send 200, and anything else carries no message to use.
        if status != 200:
            counters.inc(f"doh.http_error.{status}")
            raise DohError(f"DoH {self.upstream}: HTTP status {status}")
        media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != DNS_MESSAGE:
            counters.inc("doh.bad_content_type")
            raise DohError(f"DoH {self.upstream}: content type {media or 'missing'}")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > _MAX_BODY:
            counters.inc("doh.too_large")
            raise DohError(f"DoH {self.upstream}: a body of {length} bytes")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > _MAX_BODY:
                counters.inc("doh.too_large")
                raise DohError(f"DoH {self.upstream}: a body over {_MAX_BODY} bytes")
        return bytes(body)

    def close(self) -> None:
        """Close the connections; exchanges in progress fail."""
        self._closed = True
        client, self._client = self._client, None
        if client is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop left to close on: the sockets go with their loop
        task = loop.create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close the connections and wait until they are closed."""
        self.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _verification_error(exc: BaseException) -> ssl.SSLError | None:
    """Return the failed certificate check behind an httpx error, if that is what it was."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if is_verification_error(cause):
            assert isinstance(cause, ssl.SSLError)
            return cause
        cause = cause.__cause__ or cause.__context__
    return None
