"""Hostile DNS messages for the proxy, and what RFC 8906 says the answer to each must be.

    python tests/hostile_dns.py --server 10.30.30.30 [--server fd30:30:30::30]

Run inside the test's network namespace: sends every case of :data:`CASES` over UDP and over
TCP (one connection per message, RFC 1035 section 4.2.2 framing) with the kernel's sockets, and
prints one JSON object ``{server: {transport: {case: outcome}}}`` where an outcome is
``{"rcode": full RCODE (RFC 6891 section 6.1.3, with the OPT's upper bits), "id": bool (the
reply carries the query's ID), "qr": bool, "opt": whether the reply has an OPT, "z": the OPT's
Z flags, "answers": ANCOUNT}`` or ``null`` when nothing came back within the wait.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
from dataclasses import dataclass

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
OPT = 41
_HEADER = struct.Struct("!HHHHHH")


@dataclass(frozen=True, slots=True)
class Case:
    """One hostile message and the RCODE it must get (None: no reply at all)."""

    name: str
    message: bytes
    rcode: int | None
    opt: bool | None = None  # whether the reply must carry an OPT (None: not checked)
    answered_upstream: bool = False  # a query that is forwarded and answered from the zone


def name(text: str) -> bytes:
    """Encode a domain name as uncompressed labels (RFC 1035 section 3.1)."""
    parts = [p for p in text.split(".") if p]
    return b"".join(bytes([len(p)]) + p.encode() for p in parts) + b"\0"


def header(
    qid: int, *, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    """A message header (RFC 1035 section 4.1.1); RD is set by default."""
    return _HEADER.pack(qid, flags, qd, an, ns, ar)


def question(qname: str = "example.test", qtype: int = 1, qclass: int = 1) -> bytes:
    """A question entry (RFC 1035 section 4.1.2)."""
    return name(qname) + struct.pack("!HH", qtype, qclass)


def opt(
    *,
    payload: int = 1232,
    version: int = 0,
    flags: int = 0,
    options: bytes = b"",
    owner: bytes = b"\0",
) -> bytes:
    """An OPT pseudo-RR (RFC 6891 section 6.1.2): owner, TYPE 41, CLASS = payload, TTL, RDATA."""
    ttl = (version << 16) | flags
    return owner + struct.pack("!HHIH", OPT, payload, ttl, len(options)) + options


def _cases() -> list[Case]:
    q = question()
    long_name = ".".join(["a" * 63] * 5)  # 5 * 64 + 1 = 321 octets: over RFC 1035's 255
    cases = [
        Case("control", header(1) + q, NOERROR, answered_upstream=True),
        # RFC 1035 section 4.1.4: a pointer to itself (offset 12) is a compression loop.
        Case("compression_loop", header(2) + b"\xc0\x0c" + struct.pack("!HH", 1, 1), FORMERR),
        Case(
            "compression_loop_two_step",
            header(3) + b"\x01a\xc0\x0e" + struct.pack("!HH", 1, 1),
            FORMERR,
        ),
        Case("pointer_out_of_range", header(4) + b"\xc0\xff" + struct.pack("!HH", 1, 1), FORMERR),
        Case("qdcount_0", header(5, qd=0), FORMERR),
        Case("qdcount_2", header(6, qd=2) + q + question("www.example.test"), FORMERR),
        Case("qdcount_1_missing", header(7), FORMERR),
        Case("question_cut", header(8) + q[:-3], FORMERR),
        # RFC 6891 section 5 / RFC 2671: label type 0b01 (length byte 64-127) is not a length.
        Case("label_64", header(9) + b"\x40" + b"a" * 64 + b"\0\0\x01\0\x01", FORMERR),
        Case("name_over_255", header(10) + question(long_name), FORMERR),
        Case("arcount_lies", header(11, ar=65535) + q, FORMERR),
        # RFC 8906 section 3.1.1 / RFC 3597: unknown types are answered like any other.
        Case("unknown_type", header(12) + question(qtype=65280), NOERROR, answered_upstream=True),
        # Unknown EDNS options are ignored (RFC 6891 section 6.1.2, RFC 8906 section 3.2.4).
        Case(
            "edns_unknown_option",
            header(13, ar=1) + q + opt(options=struct.pack("!HH", 65001, 3) + b"xyz"),
            NOERROR,
            opt=True,
            answered_upstream=True,
        ),
        # Unknown EDNS flags (Z) are ignored and not echoed (RFC 6891 section 6.1.4).
        Case(
            "edns_unknown_flags",
            header(14, ar=1) + q + opt(flags=0x7FFF),
            NOERROR,
            opt=True,
            answered_upstream=True,
        ),
        Case("edns_two_opts", header(15, ar=2) + q + opt() + opt(), FORMERR, opt=True),
        Case("edns_opt_in_answer", header(16, an=1) + q + opt(), FORMERR, opt=True),
        Case("edns_opt_owner", header(17, ar=1) + q + opt(owner=name("x.test")), FORMERR, opt=True),
        # RFC 6891 section 6.1.3: version 1 gets BADVERS (16) with an OPT of version 0.
        Case("edns_version_1", header(18, ar=1) + q + opt(version=1), BADVERS, opt=True),
        # Responses are never answered; a message without a header cannot be.
        Case("response", header(19, flags=0x8180) + q, None),
        Case("short", b"\x00\x14\x01\x00\x00", None),
    ]
    # RFC 1035 section 4.1.1 / RFC 8906 section 3.1.4: opcodes other than QUERY get NOTIMP.
    for opcode in (1, 2, 3, 4, 5, 6, 15):
        cases.append(Case(f"opcode_{opcode}", header(100 + opcode, flags=opcode << 11) + q, NOTIMP))
    return cases


CASES: list[Case] = _cases()


def outcome(case: Case, data: bytes | None) -> dict[str, object] | None:
    """Summarise a reply to ``case`` (or None for no reply)."""
    if data is None:
        return None
    qid, flags, _, ancount, _, _ = _HEADER.unpack_from(data)
    rcode = flags & 0xF
    has_opt, z = False, 0
    try:
        from dnslib import DNSRecord

        record = DNSRecord.parse(data)
        for rr in record.ar:
            if rr.rtype == OPT:
                has_opt = True
                rcode |= ((rr.ttl >> 24) & 0xFF) << 4
                z = rr.ttl & 0x7FFF
    except Exception as exc:  # a reply the proxy sent must parse; report it if not
        return {"error": repr(exc)}
    return {
        "rcode": rcode,
        "id": qid == _HEADER.unpack_from(case.message.ljust(12, b"\0"))[0],
        "qr": bool(flags & 0x8000),
        "opt": has_opt,
        "z": z,
        "answers": ancount,
    }


def ask_udp(server: str, message: bytes, wait: float) -> bytes | None:
    """Send ``message`` in one datagram; return the first reply or None."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        sock.sendto(message, (server, 53))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def ask_tcp(server: str, message: bytes, wait: float) -> bytes | None:
    """Send ``message`` framed on a new TCP connection; return the reply or None."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect((server, 53))
        sock.sendall(struct.pack("!H", len(message)) + message)
        sock.settimeout(wait)
        try:
            head = _recv_exactly(sock, 2)
            if head is None:
                return None
            return _recv_exactly(sock, struct.unpack("!H", head)[0])
        except TimeoutError:
            return None


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main() -> int:
    """Ask every case over UDP and TCP and print the outcomes as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", action="append", required=True)
    parser.add_argument("--wait", type=float, default=3.0, help="seconds to wait for an answer")
    args = parser.parse_args()
    result: dict[str, dict[str, dict[str, object]]] = {}
    for server in args.server:
        per = result.setdefault(server, {"udp": {}, "tcp": {}})
        for case in CASES:
            # Silence is expected only for the no-reply cases: wait less for those.
            wait = 0.5 if case.rcode is None else args.wait
            per["udp"][case.name] = outcome(case, ask_udp(server, case.message, wait))
            per["tcp"][case.name] = outcome(case, ask_tcp(server, case.message, wait))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
