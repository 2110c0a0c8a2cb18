"""A lean wildcard DNS responder for benchmarks: every A question under a zone, UDP and TCP.

    python benchmarks/dns_upstream.py [--host 127.0.0.1] [--port 5300] [--zone bench.test]
        [--a 192.0.2.10] [--ttl 300]

For any name under ``--zone`` (the zone apex included) it answers NOERROR, AA, with one A record
(``--a``, TTL ``--ttl``); other types under the zone get NOERROR with no records, names outside
the zone REFUSED. No dnslib: the answer is the query's own header and question, patched in place,
with one fixed record appended (a compression pointer to the question name), and any EDNS record
dropped. One thread, one selector loop; UDP datagrams are drained in batches.

``benchmarks/dns_qps.py`` uses it as the upstream only when dnsmasq is missing: dnsmasq answering
``--address=/bench.test/...`` is faster (about 2x on the machine the benchmark was written on).
Prints ``dns upstream: ready`` once listening; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import ipaddress
import selectors
import signal
import socket
import struct

_HEADER_FLAGS_MASK = 0x79  # opcode and RD from the query's third header byte


def make_answer(zone: str, address: str, ttl: int) -> tuple[bytes, bytes]:
    """The zone as a lowercased wire-format suffix, and the fixed answer record."""
    wire = b"".join(bytes([len(p)]) + p.encode() for p in zone.strip(".").lower().split("."))
    record = struct.pack("!HHHIH4s", 0xC00C, 1, 1, ttl, 4, ipaddress.IPv4Address(address).packed)
    return wire + b"\x00", record


def respond(query: bytes, zone: bytes, record: bytes) -> bytes | None:
    """The response to one DNS query message, or None to drop it (not a plain query)."""
    if len(query) < 17 or query[2] & 0x80 or query[4:6] != b"\x00\x01":
        return None
    end = 12
    size = len(query)
    while end < size and query[end]:
        if query[end] & 0xC0:
            return None  # no compression in a question we answer
        end += query[end] + 1
    end += 1  # the root label
    if end + 4 > size:
        return None
    name = query[12:end].lower()
    in_zone = name.endswith(zone) and (
        len(name) == len(zone) or _label_boundary(name, len(name) - len(zone))
    )
    flags = bytes([0x84 | (query[2] & _HEADER_FLAGS_MASK), 0x80 if in_zone else 0x85])
    is_a = query[end : end + 4] == b"\x00\x01\x00\x01"
    counts = b"\x00\x01\x00\x01\x00\x00\x00\x00" if in_zone and is_a else b"\x00\x01" + bytes(6)
    head = query[:2] + flags + counts + query[12 : end + 4]
    return head + record if in_zone and is_a else head


def _label_boundary(name: bytes, offset: int) -> bool:
    """True if ``offset`` in the wire name ``name`` is the start of a label."""
    pos = 0
    while pos < offset:
        pos += name[pos] + 1
    return pos == offset


def serve(host: str, port: int, zone: bytes, record: bytes) -> None:
    """Answer on UDP and TCP ``host:port`` until SIGTERM/SIGINT."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    udp.bind((host, port))
    udp.setblocking(False)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(udp, selectors.EVENT_READ, "udp")
    sel.register(listener, selectors.EVENT_READ, "listen")
    inbox: dict[socket.socket, bytearray] = {}
    outbox: dict[socket.socket, bytearray] = {}
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def close(conn: socket.socket) -> None:
        sel.unregister(conn)
        inbox.pop(conn, None)
        outbox.pop(conn, None)
        conn.close()

    def flush(conn: socket.socket) -> None:
        pending = outbox[conn]
        try:
            sent = conn.send(pending)
        except BlockingIOError:
            sent = 0
        except OSError:
            close(conn)
            return
        del pending[:sent]
        sel.modify(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0), "tcp")

    print(f"dns upstream: ready udp+tcp {host} {port}", flush=True)
    recvfrom, sendto = udp.recvfrom, udp.sendto
    while not stop:
        try:
            events = sel.select(0.2)
        except InterruptedError:
            continue
        for key, mask in events:
            if key.data == "udp":
                for _ in range(256):
                    try:
                        data, addr = recvfrom(4096)
                    except (BlockingIOError, InterruptedError):
                        break
                    reply = respond(data, zone, record)
                    if reply is not None:
                        try:
                            sendto(reply, addr)
                        except OSError:
                            continue  # the client's socket is gone
            elif key.data == "listen":
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                inbox[conn], outbox[conn] = bytearray(), bytearray()
                sel.register(conn, selectors.EVENT_READ, "tcp")
            else:
                conn = key.fileobj  # type: ignore[assignment]  # only sockets are registered
                if mask & selectors.EVENT_WRITE:
                    flush(conn)
                    if conn not in outbox:
                        continue
                if not mask & selectors.EVENT_READ:
                    continue
                try:
                    chunk = conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    close(conn)
                    continue
                buf = inbox[conn]
                buf += chunk
                out = outbox[conn]
                while len(buf) >= 2:
                    size = int.from_bytes(buf[:2], "big")
                    if len(buf) < 2 + size:
                        break
                    reply = respond(bytes(buf[2 : 2 + size]), zone, record)
                    del buf[: 2 + size]
                    if reply is not None:
                        out += len(reply).to_bytes(2, "big") + reply
                if out:
                    flush(conn)
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5300)
    parser.add_argument("--zone", default="bench.test")
    parser.add_argument("--a", default="192.0.2.10")
    parser.add_argument("--ttl", type=int, default=300)
    args = parser.parse_args()
    zone, record = make_answer(args.zone, args.a, args.ttl)
    serve(args.host, args.port, zone, record)


if __name__ == "__main__":
    main()
