"""Write the seed corpora under fuzz/corpus/<harness>/ (deterministic; rerun after changes).

Parser seeds are real packets built with the netstack.header builders, plus edge cases. The
live-stack seeds are inputs for its decoder chosen greedily from pseudo-random ones, each kept
only if it makes the stack bump a counter no earlier seed bumped.

Usage: ``python -m fuzz.make_corpus`` from the repository root.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

from fuzz.live import LiveStack, small_limits
from fuzz.packets import HOST4, HOST6, STACK4, STACK6, decode_ops
from netstack.header import icmpv4, icmpv6
from netstack.header.ipv4 import IPv4Header, build_options
from netstack.header.ipv6 import (
    IPv6Extension,
    IPv6Fragment,
    IPv6Header,
    build_extensions,
    build_tlv_options,
)
from netstack.header.numbers import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from netstack.header.tcp import ACK, SYN, TCPHeader, TCPOptions, build_tcp
from netstack.header.udp import build_udp

CORPUS = Path(__file__).resolve().parent / "corpus"
STACK_SEED_CANDIDATES = 4000


def _ipv4(proto: int, payload: bytes, **fields: Any) -> bytes:
    return IPv4Header(src=HOST4, dst=STACK4, protocol=proto, ident=0x1234, **fields).pack(payload)


def _ipv6(exts: list[IPv6Extension | IPv6Fragment], proto: int, payload: bytes) -> bytes:
    first, chain = build_extensions(exts, proto)
    return IPv6Header(src=HOST6, dst=STACK6, next_header=first).pack(chain + payload)


def tcp_segments(src: bytes, dst: bytes) -> dict[str, bytes]:
    """TCP segments: a SYN with every option, a SACKing ACK, a plain data segment."""
    syn = TCPHeader(
        5353,
        80,
        0xFFFFFF00,
        0,
        SYN,
        64240,
        options=TCPOptions(mss=1460, window_scale=7, sack_permitted=True, timestamp=(123456, 0)),
    )
    sack = TCPHeader(
        5353,
        80,
        1,
        2,
        ACK,
        501,
        options=TCPOptions(timestamp=(5, 6), sack_blocks=((100, 200), (300, 400))),
    )
    return {
        "syn-all-options": build_tcp(src, dst, syn),
        "ack-sack": build_tcp(src, dst, sack),
        "data": build_tcp(src, dst, TCPHeader(5353, 80, 7, 9, ACK | 0x08, 1000), b"GET /\r\n"),
        "bad-option-length": build_tcp(src, dst, TCPHeader(1, 2, 3, 4, SYN, 5))[:12]
        + b"\x70\x02\x00\x05\x00\x00\x00\x00"
        + b"\x02\x05\x05\xb4",
    }


def ipv4_packets() -> dict[str, bytes]:
    """IPv4 seeds: UDP, ICMP, TCP, options, fragments, and broken headers."""
    udp = build_udp(HOST4, STACK4, 5353, 53, b"\x12\x34\x01\x00\x00\x01" + bytes(6))
    echo = icmpv4.echo_request(1, 1, b"ping").build()
    quoted = IPv4Header(src=STACK4, dst=HOST4, protocol=IPPROTO_UDP).pack(
        build_udp(STACK4, HOST4, 5300, 5353, b"q")
    )
    unreach = icmpv4.ICMPv4Message(icmpv4.DEST_UNREACHABLE, 3, 0, quoted).build()
    frag_needed = icmpv4.ICMPv4Message(icmpv4.DEST_UNREACHABLE, 4, 576, quoted[:28]).build()
    packets = {
        "udp-dns": _ipv4(IPPROTO_UDP, udp),
        "icmp-echo": _ipv4(IPPROTO_ICMP, echo),
        "icmp-port-unreachable": _ipv4(IPPROTO_ICMP, unreach),
        "icmp-frag-needed": _ipv4(IPPROTO_ICMP, frag_needed),
        "tcp-syn": _ipv4(IPPROTO_TCP, tcp_segments(HOST4, STACK4)["syn-all-options"]),
        "options-router-alert": _ipv4(IPPROTO_UDP, udp, options=build_options([(0x94, b"\0\0")])),
        "options-nop-eol": _ipv4(IPPROTO_UDP, udp, options=b"\x01\x01\x00\x00"),
        "fragment-first": _ipv4(IPPROTO_UDP, udp[:16], more_fragments=True),
        "fragment-last": _ipv4(IPPROTO_UDP, udp[16:], fragment_offset=16),
        "ttl-zero": _ipv4(IPPROTO_UDP, udp, ttl=0),
    }
    bad = bytearray(packets["udp-dns"])
    bad[10] ^= 0xFF
    packets["bad-checksum"] = bytes(bad)
    packets["ihl-too-big"] = b"\x4f" + packets["udp-dns"][1:24]
    packets["total-length-short"] = packets["udp-dns"][:2] + b"\x00\x13" + packets["udp-dns"][4:]
    return packets


def ipv6_packets() -> dict[str, bytes]:
    """IPv6 seeds: UDP, ICMPv6, every extension header, fragments, jumbogram marker."""
    udp = build_udp(HOST6, STACK6, 5353, 53, b"\x12\x34\x01\x00\x00\x01" + bytes(6))
    echo = icmpv6.echo_request(1, 1, b"ping").build(HOST6, STACK6)
    hbh = IPv6Extension(IPPROTO_HOPOPTS, build_tlv_options([(5, b"\0\0")]))
    dst = IPv6Extension(IPPROTO_DSTOPTS, build_tlv_options([(0xC2, b"\0\0\0\0")]))
    routing = IPv6Extension(IPPROTO_ROUTING, bytes((0, 1)) + bytes(4))
    ah = IPv6Extension(IPPROTO_AH, bytes(14))
    quoted = IPv6Header(src=STACK6, dst=HOST6, next_header=IPPROTO_UDP).pack(
        build_udp(STACK6, HOST6, 5300, 5353, b"q")
    )
    ptb = icmpv6.ICMPv6Message(icmpv6.PACKET_TOO_BIG, 0, 1280, quoted).build(HOST6, STACK6)
    return {
        "udp-dns": _ipv6([], IPPROTO_UDP, udp),
        "icmp-echo": _ipv6([], IPPROTO_ICMPV6, echo),
        "icmp-packet-too-big": _ipv6([], IPPROTO_ICMPV6, ptb),
        "tcp-syn": _ipv6([], IPPROTO_TCP, tcp_segments(HOST6, STACK6)["syn-all-options"]),
        "hbh-router-alert": _ipv6([hbh], IPPROTO_UDP, udp),
        "dstopts-unknown-action3": _ipv6([dst], IPPROTO_UDP, udp),
        "routing-segments-left": _ipv6([routing], IPPROTO_UDP, udp),
        "ah": _ipv6([ah], IPPROTO_UDP, udp),
        "chain-hbh-dst-frag": _ipv6(
            [hbh, dst, IPv6Fragment(offset=0, more=False, ident=9)], IPPROTO_UDP, udp
        ),
        "fragment-first": _ipv6([IPv6Fragment(0, True, 77)], IPPROTO_UDP, udp[:16]),
        "fragment-last": _ipv6([IPv6Fragment(16, False, 77)], IPPROTO_UDP, udp[16:]),
        "jumbogram-marker": IPv6Header(src=HOST6, dst=STACK6, next_header=0).build(0),
    }


def parser_corpora() -> dict[str, dict[str, bytes]]:
    """Seeds of every parser harness, by harness name."""
    v4, v6 = ipv4_packets(), ipv6_packets()
    tcp = tcp_segments(HOST4, STACK4)
    udp4 = build_udp(HOST4, STACK4, 5353, 53, b"query")
    udp6 = build_udp(HOST6, STACK6, 5353, 53, b"query")
    quoted = v4["udp-dns"][:28]
    return {
        "ipv4": v4,
        "ipv6": v6,
        "udp": {
            "udp4": b"\x01" + udp4,
            "udp6": b"\x00" + udp6,
            "udp4-no-checksum": b"\x01" + udp4[:6] + b"\0\0" + udp4[8:],
            "udp-length-short": b"\x01" + udp4[:4] + b"\x00\x07" + udp4[6:],
        },
        "tcp": tcp,
        "icmp": {
            "v4-echo": b"\x01" + icmpv4.echo_request(1, 2, b"abc").build(),
            "v4-unreachable": b"\x01"
            + icmpv4.ICMPv4Message(icmpv4.DEST_UNREACHABLE, 3, 0, quoted).build(),
            "v6-echo": b"\x00" + icmpv6.echo_request(1, 2, b"abc").build(HOST6, STACK6),
            "v6-packet-too-big": b"\x00"
            + icmpv6.ICMPv6Message(icmpv6.PACKET_TOO_BIG, 0, 1280, quoted).build(HOST6, STACK6),
        },
        "summary": {
            **{f"v4-{k}": p for k, p in v4.items()},
            **{f"v6-{k}": p for k, p in v6.items()},
        },
    }


def stack_corpus(candidates: int = STACK_SEED_CANDIDATES) -> dict[str, bytes]:
    """Live-stack seeds: random inputs kept when they bump a counter none before bumped."""
    rng = random.Random(20240601)
    seen: set[str] = set()
    chosen: dict[str, bytes] = {}
    for i in range(candidates):
        data = rng.randbytes(rng.choice((64, 128, 384)))
        live = LiveStack(small_limits() if data[0] & 1 else None, seed=data[0])
        live.run(decode_ops(data[1:]))
        # ICMP types seen are per-value names ("in.type_105"): not new behaviour.
        names = {n for n in live.stack.counters.snapshot() if ".type_" not in n}
        if names - seen:
            seen |= names
            chosen[f"random-{i:04d}"] = data
    return chosen


def dns_corpus() -> dict[str, bytes]:
    """Client messages as dig and kdig send them, plus the hostile cases of the kernel tests.

    The first byte of each seed is the harness's control byte (transport and upstream mode).
    """
    from dnslib import EDNS0, DNSRecord

    from tests.hostile_dns import CASES

    seeds: dict[str, bytes] = {}
    plain = DNSRecord.question("example.test", "A")
    edns = DNSRecord.question("big.example.test", "TXT")
    edns.add_ar(EDNS0(udp_len=1232, flags="do"))
    small = DNSRecord.question("example.test", "AAAA")
    small.add_ar(EDNS0(udp_len=4096))
    for n, record in enumerate((plain, edns, small)):
        record.header.id = 0x1000 + n  # dnslib picks random IDs: keep the seeds reproducible
    for mode in range(4):
        seeds[f"dig_a_udp_mode{mode}"] = bytes([mode]) + bytes(plain.pack())
        seeds[f"dig_txt_edns_udp_mode{mode}"] = bytes([mode]) + bytes(edns.pack())
        seeds[f"kdig_tcp_mode{mode}"] = bytes([0x80 | mode]) + bytes(small.pack())
    for case in CASES:
        seeds[f"hostile_{case.name}"] = b"\x00" + case.message
    return seeds


def config_corpus() -> dict[str, bytes]:
    """Settings files (valid and not) and OLM_* variables, split by a NUL byte."""
    return {
        "full": b"""tun = "olm0"
addresses = ["10.30.30.30", "fd30:30:30::30"]
upstreams = ["127.0.0.1:5300", "[::1]:53"]
policy = "race"
timeout = 1.5
deadline = 4
max_inflight = 512
tcp_idle_timeout = 10.0
mtu = 1400
log_level = "DEBUG"
""",
        "bad_policy": b'upstreams = ["127.0.0.1"]\n\npolicy = "fastest"\n',
        "unknown_key": b"colour = 3\n",
        "syntax": b"upstreams = [\n",
        "env_only": b"\0UPSTREAMS=127.0.0.1,::1\nPOLICY=round-robin\nTIMEOUT=0.5",
        "env_bad": b"mtu = 1500\0MTU=huge",
    }


def pcap_seeds(path: Path, per_harness: int = 12) -> dict[str, dict[str, bytes]]:
    """Real packets from a pcap the kernel tests or ``olm ... --pcap`` wrote.

    Raw IP packets feed the ipv4, ipv6 and summary harnesses; DNS messages to or from port 53
    feed the dns harness (control byte 0: UDP, answering upstream). At most ``per_harness``
    distinct packets each, of distinct lengths, in capture order.
    """
    from netstack.link.pcap import read_pcap

    out: dict[str, dict[str, bytes]] = {"ipv4": {}, "ipv6": {}, "summary": {}, "dns": {}}
    lengths: dict[str, set[int]] = {name: set() for name in out}

    def add(name: str, data: bytes) -> None:
        if len(out[name]) < per_harness and len(data) not in lengths[name]:
            lengths[name].add(len(data))
            out[name][f"pcap_{path.stem}_{len(out[name]):02}"] = data

    with path.open("rb") as stream:
        for _, packet in read_pcap(stream):
            if not packet:
                continue
            version = packet[0] >> 4
            add("ipv4" if version == 4 else "ipv6", packet)
            add("summary", packet)
            hl = (packet[0] & 15) * 4 if version == 4 else 40
            proto = packet[9] if version == 4 else packet[6]
            if proto == IPPROTO_UDP and len(packet) > hl + 8:
                ports = packet[hl : hl + 4]
                if ports[0:2] == b"\x00\x35" or ports[2:4] == b"\x00\x35":
                    add("dns", b"\x00" + packet[hl + 8 :])
    return out


def write(name: str, seeds: dict[str, bytes]) -> None:
    """Replace fuzz/corpus/<name>/ with ``seeds``."""
    folder = CORPUS / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for label, data in seeds.items():
        (folder / label).write_bytes(data)


def main() -> None:
    """Write every harness's seed corpus (``--pcap FILE...`` adds real captured packets)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fuzz.make_corpus")
    parser.add_argument("--pcap", nargs="*", type=Path, default=[], help="captures to add")
    args = parser.parse_args()
    corpora = parser_corpora()
    corpora["stack"] = stack_corpus()
    corpora["dns"] = dns_corpus()
    corpora["config"] = config_corpus()
    for capture in args.pcap or sorted((CORPUS.parent / "captures").glob("*.pcap")):
        for name, seeds in pcap_seeds(capture).items():
            corpora.setdefault(name, {}).update(seeds)
    for name, seeds in corpora.items():
        write(name, seeds)
    for folder in sorted(CORPUS.iterdir()):
        files = list(folder.iterdir())
        print(f"{folder.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
