"""What every upstream transport shares: the outgoing query, reply matching, the interface.

RFC 5452 is applied here once for every scheme: each try carries a fresh random 16-bit ID, and a
reply counts only if its ID, QR bit and question (name compared case-insensitively, RFC 4343;
type and class exactly) are the ones asked. The transport adds what its scheme can check (UDP:
the source address and port, through a connected socket).
"""

from __future__ import annotations

import secrets
from typing import Final, Protocol

from olm.dns.answer import Answer, learn, raw_answer
from olm.dns.request import Request
from olm.dns.upstream.address import Upstream
from olm.dns.wire import AD, CD, HEADER, RD, U16, UPSTREAM_PAYLOAD, opt_record

__all__ = ["Query", "Transport", "UpstreamFailure", "new_id"]

_QR_BYTE: Final = 0x80
_QDCOUNT_ONE: Final = b"\x00\x01"


class UpstreamFailure(Exception):
    """No good answer came from an upstream (or from any); ``reason`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def new_id() -> int:
    """Return a fresh, unpredictable 16-bit query ID (RFC 5452 section 9.2)."""
    return secrets.randbits(16)


class Query:
    """What is sent upstream for one request, and which replies answer it.

    An ordinary query goes out as the client's question (its spelling kept) with RD and CD
    copied, AD set (we understand it, RFC 6840 section 5.7) and our own OPT: a 1232-byte
    payload and the client's DO bit (RFC 3225 section 3). The client's EDNS options are
    hop-by-hop (RFC 6891 section 6.1.1) and stay behind. A signed query (TSIG) goes out whole,
    only its ID changed, which TSIG allows for (RFC 8945 section 4.3.2: the MAC covers the
    original ID kept in the TSIG record).
    """

    __slots__ = (
        "_match_name",
        "_match_rest",
        "_qend",
        "deadline",
        "nend",
        "signed",
        "tcp_fallback",
        "template",
        "trace",
    )

    def __init__(self, request: Request) -> None:
        qend = request.qend
        if request.tsig:
            self.template = request.wire
            self.signed = True
        else:
            self.template = (
                HEADER.pack(0, request.flags & (RD | CD) | AD, 1, 0, 0, 1)
                + request.wire[12:qend]
                + opt_record(UPSTREAM_PAYLOAD, do=request.do)
            )
            self.signed = False
        nlen = request.nend - 12
        self.nend = request.nend
        self._qend = qend
        self._match_name = request.key[:nlen]
        self._match_rest = request.key[nlen : nlen + 4]
        # A signed query over UDP is answered as the server answers it: the client itself
        # retries over TCP on TC=1, so that its signature checks out.
        self.tcp_fallback = not (self.signed and request.transport == "udp")
        #: When the whole resolution must end (event loop time); set by the group.
        self.deadline = float("inf")
        #: The request's QueryTrace when someone watches it (olm.dns.observe), else None.
        self.trace = request.trace

    def timeout(self, timeout: float, now: float) -> float:
        """Return how long one exchange may take: ``timeout``, cut short by the deadline."""
        return min(timeout, self.deadline - now)

    def wire(self, qid: int) -> bytes:
        """Return the query's bytes with ID ``qid``."""
        trace = self.trace
        if trace is not None and trace.detail:
            trace.event("upstream", f"query id {qid}")
        return U16.pack(qid) + self.template[2:]

    def matches(self, data: bytes, qid: int) -> bool:
        """Whether ``data`` is a response to this query sent with ``qid`` (RFC 5452 9.1)."""
        return (
            len(data) >= self._qend
            and data[0] == qid >> 8
            and data[1] == qid & 0xFF
            and data[2] & _QR_BYTE != 0
            and data[4:6] == _QDCOUNT_ONE
            and data[12 : self.nend].lower() == self._match_name
            and data[self.nend : self._qend] == self._match_rest
        )

    def answer(self, data: bytes) -> Answer:
        """Make the Answer of a matching reply; raises WireError if its layout is broken."""
        if self.signed:
            return raw_answer(data)
        return learn(data)


class Transport(Protocol):
    """One upstream reached by one scheme (UDP with TCP on TC=1, TCP; later DoT, DoH, DoQ)."""

    upstream: Upstream

    async def exchange(self, query: Query, timeout: float) -> Answer:
        """Ask ``query`` once; the first matching, well-formed reply wins.

        Raises TimeoutError after ``timeout`` seconds or at ``query.deadline``, whichever comes
        first, and OSError when the path fails.
        """
        ...

    def close(self) -> None:
        """Release sockets and connections; exchanges in progress fail."""
