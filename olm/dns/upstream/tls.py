"""TLS for the encrypted upstreams: one way to build a client context, with verification on.

Every encrypted scheme (DoT, DoH, DoQ) verifies the server's certificate and name (RFC 8310
section 8: the strict privacy profile; no silent downgrade): against ``ca_file`` when one is
given, else the system's trust store, which ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` override as
they do for OpenSSL. TLS 1.2 is the least accepted (RFC 8310 section 9, RFC 9325 section 3.1.1).

:class:`ResumingContext` keeps the last session per server name and offers it on the next
connection, so a reconnect costs an abbreviated handshake (RFC 8446 section 2.2, RFC 7858
section 3.4).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

__all__ = ["ResumingContext", "client_context", "is_verification_error"]


class ResumingContext(ssl.SSLContext):
    """An SSLContext that offers, per server name, the last session it saw."""

    sessions: dict[str, ssl.SSLSession]

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        """Wrap as usual, offering the remembered session for ``server_hostname``."""
        if session is None and server_hostname is not None:
            session = self.sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def remember(self, server_hostname: str, ssl_object: Any) -> None:
        """Keep the session of a connection (call once its handshake is over)."""
        session = getattr(ssl_object, "session", None)
        if session is not None:
            self.sessions[server_hostname] = session


def client_context(
    ca_file: str | None = None, alpn: Sequence[str] = (), *, resuming: bool = False
) -> ssl.SSLContext:
    """Return a client context that verifies certificate and name, TLS 1.2 or later.

    ``alpn``: the protocols to offer (``dot`` for DoT, RFC 7858 with RFC 9461's registration;
    ``h2`` for DoH; ``doq`` for DoQ, RFC 9250 section 4.1).
    """
    kind = ResumingContext if resuming else ssl.SSLContext
    context = kind(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs()  # honours SSL_CERT_FILE and SSL_CERT_DIR
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if isinstance(context, ResumingContext):
        context.sessions = {}
    return context


def is_verification_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed certificate or name check (counted; never retried plain)."""
    return isinstance(exc, ssl.SSLCertVerificationError) or (
        isinstance(exc, ssl.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc)
    )
