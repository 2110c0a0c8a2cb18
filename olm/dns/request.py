"""A query as the engine sees it: the client's wire bytes, a cheap view of them, and who asked.

Building a :class:`Request` reads the header, walks the question once and reads an OPT record
that follows it; nothing is decoded into objects. A query of the ordinary shape (one question,
no answer or authority records, at most an OPT of version 0 with well-formed options) is marked
``ok`` and needs nothing more; anything else is left for the sanitise handler to judge with
dnslib (:mod:`olm.dns.message`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from olm.dns.wire import (
    CD,
    DO_BIT,
    HEADER,
    MAX_TCP_MESSAGE,
    MIN_UDP_PAYLOAD,
    OPCODE_MASK,
    QR,
    RR_FIXED,
    TYPE_OPT,
)

if TYPE_CHECKING:
    from olm.dns.upstream.group import UpstreamGroup

__all__ = ["TCP", "UDP", "Request"]

UDP: Final = "udp"
TCP: Final = "tcp"

#: The last byte of a cache key: the DO and CD bits of the query (RFC 4035 section 3.2).
_FLAG_BYTES: Final = (b"\x00", b"\x01", b"\x02", b"\x03")


class Request:
    """One client query: its wire bytes, their view, the client and the transport.

    View fields (valid when ``nend`` is set, that is the question could be walked):

    * ``id``, ``flags``: the header's ID and flags word.
    * ``nend``, ``qend``: where the question's name and the whole question end; the question
      is ``wire[12:qend]``, spelt as the client spelt it (0x20 case included).
    * ``qtype``: the question's type.
    * ``key``: the cache key: the name in lower case, type and class as on the wire, then one
      byte holding DO and CD.
    * ``edns``, ``payload``, ``do``, ``opt``: whether an OPT came, its UDP payload size, DO bit
      and offset (its version is 0 when ``ok``; :attr:`options` are its options' bytes).
    * ``ok``: the query has the ordinary shape and is ready to be answered; when False, the
      sanitise handler decides (FORMERR, NOTIMP, BADVERS, a signed query, ...).

    The rest: ``client`` and ``local`` (packed addresses), ``port`` (the client's), the
    ``transport`` (``"udp"`` or ``"tcp"``), ``limit`` (the largest reply the client takes),
    ``tsig`` (a signed query, passed through whole), and what handlers decide on the way: the
    ``view`` the client belongs to and the upstream ``group`` to ask.
    """

    __slots__ = (
        "client",
        "do",
        "edns",
        "flags",
        "group",
        "id",
        "key",
        "limit",
        "local",
        "nend",
        "ok",
        "opt",
        "payload",
        "port",
        "qend",
        "qtype",
        "trace",
        "transport",
        "tsig",
        "view",
        "wire",
    )

    def __init__(
        self,
        wire: bytes,
        client: bytes = b"",
        port: int = 0,
        local: bytes = b"",
        transport: str = UDP,
    ) -> None:
        self.wire = wire
        self.client = client
        self.port = port
        self.local = local
        self.transport = transport
        self.view: Any = None
        self.group: UpstreamGroup | None = None
        #: What the query went through, when someone watches (olm.dns.observe.QueryTrace).
        self.trace: Any = None
        self.tsig = False
        self.edns = self.do = self.ok = False
        self.payload = self.nend = self.qend = self.qtype = 0
        self.opt = 0
        self.key = b""
        self.limit = MAX_TCP_MESSAGE if transport != UDP else MIN_UDP_PAYLOAD
        size = len(wire)
        if size < 12:
            self.id = self.flags = 0
            return
        qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire)
        self.id = qid
        self.flags = flags
        if qdcount != 1:
            return
        # The question's name: uncompressed labels (nothing precedes it to point to).
        off = 12
        try:
            while length := wire[off]:
                if length > 63:
                    return
                off += length + 1
        except IndexError:
            return
        nend = off + 1
        qend = nend + 4
        if qend > size or nend - 12 > 255:
            return
        self.nend = nend
        self.qend = qend
        self.qtype = (wire[nend] << 8) | wire[nend + 1]
        ok = not (flags & (QR | OPCODE_MASK) or ancount or nscount)
        if arcount == 0:
            ok = ok and qend == size
        elif arcount == 1 and size >= qend + 11 and wire[qend] == 0:
            rtype, payload, ttl, rdlength = RR_FIXED.unpack_from(wire, qend + 1)
            if rtype == TYPE_OPT:
                self.edns = True
                self.opt = qend
                self.payload = payload
                self.do = bool(ttl & DO_BIT)
                options = qend + 11
                ok = ok and ttl & 0x00FF0000 == 0 and options + rdlength == size
                # Each option is CODE, LENGTH, then LENGTH octets (RFC 6891 section 6.1.2).
                while ok and options < size:
                    if options + 4 > size:
                        ok = False
                        break
                    options += 4 + ((wire[options + 2] << 8) | wire[options + 3])
                ok = ok and options == size
                if transport == UDP:
                    # RFC 6891 section 6.2.5: sizes below 512 are treated as 512.
                    self.limit = min(max(payload, MIN_UDP_PAYLOAD), MAX_TCP_MESSAGE)
            else:
                ok = False
        else:
            ok = False
        self.key = (
            wire[12:nend].lower() + wire[nend:qend] + _FLAG_BYTES[self.do << 1 | bool(flags & CD)]
        )
        self.ok = ok

    def route(self, group: UpstreamGroup) -> None:
        """Send the request to ``group``, and key its cache entry by that group too.

        Split DNS and views choose groups; two groups may answer a name differently, so the
        cache keeps their answers apart (the group's tag ends the key).
        """
        self.group = group
        base = self.nend - 12 + 5  # name, type, class, DO/CD byte
        self.key = self.key[:base] + group.tag

    @property
    def question(self) -> bytes:
        """The question section as the client sent it (empty if it could not be walked)."""
        return self.wire[12 : self.qend]

    @property
    def options(self) -> bytes:
        """The OPT record's options (RFC 6891 section 6.1.2), as sent; empty without one."""
        return self.wire[self.opt + 11 :] if self.opt else b""

    @property
    def name(self) -> str:
        """The question's name in presentation format, lower case (for logs and traces)."""
        labels = []
        off = 12
        wire = self.wire
        while off < self.nend - 1:
            length = wire[off]
            labels.append(wire[off + 1 : off + 1 + length].decode("ascii", "backslashreplace"))
            off += length + 1
        return ".".join(labels).lower() + "."

    def __repr__(self) -> str:
        return (
            f"Request(id={self.id}, {self.name if self.nend else '?'} type {self.qtype}, "
            f"{self.transport}, ok={self.ok})"
        )
