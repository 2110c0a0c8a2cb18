"""Hostile IP packets for ``olm up``, written straight onto its TUN with an AF_PACKET socket.

    python tests/hostile_packets.py --iface olmdns0 KIND [KIND ...]

Run inside the test's network namespace. A packet transmitted on a TUN interface through an
AF_PACKET socket is handed unchanged to the process reading the TUN, so checksums and lengths
arrive exactly as built here (a raw IP socket would let the kernel fix them). Packets come from
the host side of the TUN (10.30.30.1 and fd30:30:30::1) and a UDP port this script binds, so
the DNS replies the proxy sends to well-formed parts come back to this script and are counted;
flood packets come from spoofed sources in 198.18.0.0/15 (RFC 2544), which exist nowhere: the
namespace's kernel drops what olm sends them. Nothing leaves the namespace.

Prints one JSON object: ``{kind: {"sent": packets, "answers": DNS replies received}}``. The
expected effect of each kind (counters, answers) is asserted by tests/test_kernel_malformed.py.
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import (
    HBHOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.packet import Raw

SERVICE4 = "10.30.30.30"
SERVICE6 = "fd30:30:30::30"
HOST4 = "10.30.30.1"
HOST6 = "fd30:30:30::1"
REPLY_PORT = 40053  # the UDP port this script binds on the host addresses to collect replies
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SYN_FLOOD = 10_000

_rng = random.Random(53)


def dns_query(qid: int, name: str = "example.test", qtype: int = 1) -> bytes:
    """A plain recursive query (RFC 1035 section 4.1) for ``name``, class IN."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def _ids() -> Iterator[int]:
    qid = 0x4000
    while True:
        qid += 1
        yield qid


_next_id = _ids()


def udp4(**ip: Any) -> IP:
    """A DNS query over UDP/IPv4 from this script's reply port (new ID each time)."""
    return (
        IP(src=HOST4, dst=SERVICE4, **ip)
        / UDP(sport=REPLY_PORT, dport=53)
        / Raw(dns_query(next(_next_id)))
    )


def udp6(*ext: object) -> IPv6:
    """A DNS query over UDP/IPv6, after the extension headers ``ext``."""
    pkt = IPv6(src=HOST6, dst=SERVICE6)
    for header in ext:
        pkt = pkt / header
    return pkt / UDP(sport=REPLY_PORT, dport=53) / Raw(dns_query(next(_next_id)))


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def _bad(checksum: int) -> bytes:
    """A checksum value that is surely wrong for a packet whose right one is ``checksum``."""
    return struct.pack("!H", checksum ^ 0x5A5A)


def kind_checksums() -> list[bytes]:
    """Bad IPv4 header, UDP, UDP-over-IPv6 zero, TCP and ICMP checksums: all dropped."""
    good = bytes(udp4())
    bad_ip = _with(good, 10, _bad(struct.unpack_from("!H", good, 10)[0]))
    good = bytes(udp4())
    bad_udp = _with(good, 26, _bad(struct.unpack_from("!H", good, 26)[0]))
    good6 = bytes(udp6())
    zero_udp6 = _with(good6, 46, b"\0\0")  # RFC 8200 section 8.1: zero is invalid over IPv6
    syn = bytes(IP(src=HOST4, dst=SERVICE4) / TCP(sport=40000, dport=53, flags="S", seq=1))
    bad_tcp = _with(syn, 36, _bad(struct.unpack_from("!H", syn, 36)[0]))
    echo = bytes(IP(src=HOST4, dst=SERVICE4) / ICMP(type=8, id=7, seq=1) / Raw(b"ping"))
    bad_icmp = _with(echo, 22, _bad(struct.unpack_from("!H", echo, 22)[0]))
    return [bad_ip, bad_udp, zero_udp6, bad_tcp, bad_icmp]


def kind_truncated() -> list[bytes]:
    """Headers cut short at every layer."""
    v4 = bytes(udp4())
    v6 = bytes(udp6())
    ip4 = bytes(IP(src=HOST4, dst=SERVICE4, proto=17))
    return [
        v4[:19],  # shorter than an IPv4 header: the TUN filter cannot even read the address
        v6[:39],  # shorter than an IPv6 header
        _with(v4[:20], 0, b"\x4f"),  # IHL 15 (60 bytes) in a 20-byte packet
        bytes(IP(src=HOST4, dst=SERVICE4, proto=17) / Raw(b"\x9c\x55\x00")),  # 3-byte UDP
        bytes(IP(src=HOST4, dst=SERVICE4, proto=6) / Raw(b"\x9c\x55\x00\x35" * 3)),  # 12-byte TCP
        bytes(IPv6(src=HOST6, dst=SERVICE6, nh=17) / Raw(b"\x9c\x55")),  # 2-byte UDP over IPv6
        ip4,  # a bare IPv4 header announcing UDP and carrying nothing
    ]


def kind_lengths() -> list[bytes]:
    """Total lengths larger and smaller than the packet.

    Two of these are well formed: a datagram followed by link padding (total length smaller
    than the packet, RFC 791 section 3.1 / RFC 8200 section 3 say where it ends) is answered.
    """
    v4 = bytes(udp4())
    v6 = bytes(udp6())
    longer4 = _fix_ipv4_checksum(_with(v4, 2, struct.pack("!H", len(v4) + 100)))
    shorter4 = _fix_ipv4_checksum(_with(v4, 2, struct.pack("!H", 12)))  # below the header
    padded4 = bytes(udp4()) + b"\xee" * 30
    longer6 = _with(v6, 4, struct.pack("!H", len(v6) - 40 + 100))
    padded6 = bytes(udp6()) + b"\xee" * 30
    udp_longer = bytes(udp4())
    udp_longer = _fix_udp4(_with(udp_longer, 24, struct.pack("!H", len(udp_longer) - 20 + 50)))
    return [longer4, shorter4, longer6, udp_longer, padded4, padded6]


def kind_ip_options() -> list[bytes]:
    """IPv4 options and IPv6 extension header chains, well formed and not."""
    nops = bytes(udp4(options=[IPOption_NOP(), IPOption_NOP(), IPOption_RR(routers=["0.0.0.0"])]))
    # An option whose length runs past the header: a host discards the datagram.
    overrun = bytes(udp4(options=[IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()]))
    overrun = _fix_ipv4_checksum(_with(overrun, 20, b"\x07\x28\x04\x00"))
    chain = bytes(
        udp6(IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\0\0\0\0")]), IPv6ExtHdrDestOpt())
    )
    skip = bytes(udp6(IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optdata=b"ab")])))
    discard = bytes(udp6(IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x9E, optdata=b"ab")])))
    routing = bytes(udp6(IPv6ExtHdrRouting(type=0, segleft=1, addresses=["fd30:30:30::99"])))
    hbh_late = bytes(udp6(IPv6ExtHdrDestOpt(), IPv6ExtHdrHopByHop()))
    long_chain = bytes(udp6(*[IPv6ExtHdrDestOpt() for _ in range(40)]))
    return [nops, overrun, chain, skip, discard, routing, hbh_late, long_chain]


def _fragments4(whole: IP, size: int, overlap: bool = False) -> list[bytes]:
    """Split ``whole`` into fragments of ``size`` payload bytes (a multiple of 8)."""
    raw = bytes(whole)
    payload = raw[20:]
    ident = _rng.randrange(1, 0x10000)
    out = []
    step = size - 8 if overlap else size
    offset = 0
    while offset < len(payload):
        chunk = payload[offset : offset + size]
        more = offset + size < len(payload)
        data = bytes(chunk) if not overlap or offset == 0 else bytes(b ^ 0xFF for b in chunk)
        frag = IP(
            src=whole.src,
            dst=whole.dst,
            id=ident,
            proto=17,
            flags="MF" if more else 0,
            frag=offset // 8,
        ) / Raw(data)
        out.append(bytes(frag))
        offset += step
    return out


def _fragments6(whole: IPv6, size: int, overlap: bool = False) -> list[bytes]:
    raw = bytes(whole)
    payload = raw[40:]  # the UDP header and the query (no extension headers in ``whole``)
    ident = _rng.randrange(1, 1 << 32)
    out = []
    step = size - 8 if overlap else size
    offset = 0
    while offset < len(payload):
        chunk = payload[offset : offset + size]
        more = offset + size < len(payload)
        data = bytes(chunk) if not overlap or offset == 0 else bytes(b ^ 0xFF for b in chunk)
        frag = (
            IPv6(src=HOST6, dst=SERVICE6)
            / IPv6ExtHdrFragment(nh=17, id=ident, m=int(more), offset=offset // 8)
            / Raw(data)
        )
        out.append(bytes(frag))
        offset += step
    return out


def kind_fragments() -> list[bytes]:
    """Tiny fragments (8 bytes each) that reassemble into queries, and overlapping ones.

    RFC 791 section 3.2 allows 8-byte fragments; RFC 5722 and RFC 8200 section 4.5 make an
    IPv6 datagram with overlapping fragments silently discarded.
    """
    tiny4 = _fragments4(udp4(), 8)
    tiny6 = _fragments6(udp6(), 8)
    overlap4 = _fragments4(udp4(), 16, overlap=True)
    overlap6 = _fragments6(udp6(), 16, overlap=True)
    return tiny4 + tiny6 + overlap4 + overlap6


def kind_fragment_flood() -> list[bytes]:
    """5000 IPv4 and 2000 IPv6 first fragments that never complete (1 KB each)."""
    out = []
    filler = b"\xab" * 1024
    for i in range(5000):
        src = f"198.18.{i // 250}.{i % 250 + 1}"
        out.append(bytes(IP(src=src, dst=SERVICE4, id=i, proto=17, flags="MF") / Raw(filler)))
    for i in range(2000):
        out.append(
            bytes(
                IPv6(src=f"fd30:30:31::{i + 1:x}", dst=SERVICE6)
                / IPv6ExtHdrFragment(nh=17, id=i, m=1, offset=0)
                / Raw(filler)
            )
        )
    return out


def kind_tcp_flags() -> list[bytes]:
    """SYN+FIN, null, Xmas, FIN alone, and data before any handshake, to the listener on :53."""
    base = IP(src=HOST4, dst=SERVICE4)
    out = []
    for sport, flags in ((40001, "SF"), (40002, ""), (40003, "FSRPAU"), (40004, "F")):
        out.append(bytes(base / TCP(sport=sport, dport=53, flags=flags, seq=1000)))
    out.append(bytes(base / TCP(sport=40005, dport=53, flags="PA", seq=1, ack=1) / Raw(b"\0\x0c")))
    out.append(
        bytes(IPv6(src=HOST6, dst=SERVICE6) / TCP(sport=40006, dport=53, flags="FPU", seq=5))
    )
    return out


def _spoofed_syns(count: int) -> list[bytes]:
    """``count`` SYNs to :53 from random spoofed sources, built with struct for speed."""
    out = []
    dst = socket.inet_aton(SERVICE4)
    for i in range(count):
        src = socket.inet_aton(f"198.18.{(i >> 8) & 0xFF}.{i & 0xFF}")
        sport = 1024 + _rng.randrange(60000)
        seq = _rng.randrange(1 << 32)
        # MSS option (RFC 9293 section 3.2): kind 2, length 4, 1460.
        tcp = struct.pack("!HHIIBBHHH", sport, 53, seq, 0, 6 << 4, 0x02, 64240, 0, 0)
        tcp += b"\x02\x04\x05\xb4"
        csum = _checksum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        out.append(ip + tcp)
    return out


def kind_syn_flood() -> list[bytes]:
    """10,000 SYNs to port 53 from spoofed sources (the backlog fills; SYN cookies answer)."""
    return _spoofed_syns(SYN_FLOOD)


def kind_udp_flood() -> list[bytes]:
    """5000 UDP datagrams to :53 from spoofed sources: garbage, short, and QR=1 messages."""
    out = []
    dst = socket.inet_aton(SERVICE4)
    for i in range(5000):
        src = socket.inet_aton(f"198.19.{(i >> 8) & 0xFF}.{i & 0xFF}")
        payload = (b"\x12\x34", b"\x12\x34\x81\x80" + b"\0" * 8)[i % 2]  # unreadable, response
        udp = struct.pack("!HHHH", 1024 + i, 53, 8 + len(payload), 0) + payload
        csum = _checksum(src + dst + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF
        udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        out.append(ip + udp)
    return out


def kind_good() -> list[bytes]:
    """One well-formed query per family: the control that proves replies come back."""
    return [bytes(udp4()), bytes(udp6())]


def rst_attack(iface: str) -> tuple[int, int]:
    """RSTs against a live connection; return (packets sent, DNS answers read on it after).

    A kernel TCP connection to :53 is opened while an AF_PACKET tap on the TUN watches for its
    SYN, which gives the client's ISN and so the server's RCV.NXT. Then: a RST far outside the
    window (RFC 9293 section 3.10.7.4: dropped), a RST inside the window but not at RCV.NXT
    (RFC 5961 section 3.2: a challenge ACK, the connection lives), and a SYN on the established
    connection (RFC 5961 section 4.2: a challenge ACK too). A query on the connection must
    still be answered.
    """
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003)) as tap:
        tap.bind((iface, 0))
        tap.settimeout(3)
        conn = socket.create_connection((SERVICE4, 53), timeout=5)
        sport = conn.getsockname()[1]
        isn = None
        deadline = time.monotonic() + 3
        while isn is None and time.monotonic() < deadline:
            seen = tap.recv(65535)
            if seen[0] >> 4 == 4 and seen[9] == 6:
                ihl = (seen[0] & 0xF) * 4
                src_port, _, seq = struct.unpack_from("!HHI", seen, ihl)
                if src_port == sport and seen[ihl + 13] & 0x02:
                    isn = seq
    if isn is None:
        conn.close()
        return 0, 0
    rcv_nxt = (isn + 1) & 0xFFFFFFFF
    base = IP(src=HOST4, dst=SERVICE4)
    packets = [
        bytes(base / TCP(sport=sport, dport=53, flags="R", seq=(rcv_nxt + (1 << 31)) % (1 << 32))),
        bytes(base / TCP(sport=sport, dport=53, flags="R", seq=(rcv_nxt + 100) % (1 << 32))),
        bytes(base / TCP(sport=sport, dport=53, flags="S", seq=(rcv_nxt + 7) % (1 << 32))),
    ]
    send_all(iface, packets)
    time.sleep(0.2)
    query = dns_query(next(_next_id))
    answers = 0
    with conn:
        conn.sendall(struct.pack("!H", len(query)) + query)
        try:
            head = conn.recv(2)
            if len(head) == 2 and len(conn.recv(65535)) > 0:
                answers = 1
        except OSError:
            answers = 0
    return len(packets), answers


KINDS: dict[str, Callable[[], list[bytes]]] = {
    name[len("kind_") :]: fn for name, fn in globals().items() if name.startswith("kind_")
}


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071), independent of netstack's implementation."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _fix_ipv4_checksum(packet: bytes) -> bytes:
    ihl = (packet[0] & 0xF) * 4
    header = packet[:10] + b"\0\0" + packet[12:ihl]
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + packet[ihl:]


def _fix_udp4(packet: bytes) -> bytes:
    """Recompute the UDP checksum over the bytes actually present (20-byte IPv4 header)."""
    udp = packet[20:26] + b"\0\0" + packet[28:]
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    csum = _checksum(pseudo + udp) or 0xFFFF
    return packet[:26] + struct.pack("!H", csum) + packet[28:]


def send_all(iface: str, packets: list[bytes], pace: int = 256) -> None:
    """Write ``packets`` onto ``iface`` through AF_PACKET, pausing briefly every ``pace``."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM) as sock:
        for i, packet in enumerate(packets):
            proto = ETH_P_IPV6 if packet and packet[0] >> 4 == 6 else ETH_P_IP
            sock.sendto(packet, (iface, proto))
            if i % pace == pace - 1:
                time.sleep(0.002)


def collect(socks: list[socket.socket], quiet: float) -> int:
    """Count the datagrams arriving until none has come for ``quiet`` seconds (at most 10 s)."""
    count = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], quiet)
        if not ready:
            break
        for sock in ready:
            sock.recv(65535)
            count += 1
    return count


def main() -> int:
    """Send each named kind and print what was sent and answered, as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--iface", required=True)
    parser.add_argument("--quiet", type=float, default=0.5, help="seconds of silence that end")
    parser.add_argument("kinds", nargs="+", choices=sorted([*KINDS, "rst_attack"]))
    args = parser.parse_args()
    socks = []
    for family, host in ((socket.AF_INET, HOST4), (socket.AF_INET6, HOST6)):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, REPLY_PORT))
        socks.append(sock)
    result = {}
    for kind in args.kinds:
        if kind == "rst_attack":
            sent, answers = rst_attack(args.iface)
            result[kind] = {"sent": sent, "answers": answers}
            continue
        packets = KINDS[kind]()
        send_all(args.iface, packets)
        result[kind] = {"sent": len(packets), "answers": collect(socks, args.quiet)}
    for sock in socks:
        sock.close()
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
