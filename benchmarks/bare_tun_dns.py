"""The bare DNS baseline: a minimal pure-Python responder answering straight off a TUN fd.

No stack and no upstream: for each IPv4 UDP packet to port 53 it turns the query into a
response in place (QR=1, one A record appended, compressed pointer to the question), swaps the
addresses and ports, fixes the lengths and checksums, and writes it back. This is the least work
any TUN-based DNS answer can cost in Python. Run as root; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import struct

from bare_tun import serve

from netstack.header.checksum import checksum, pseudo_header_sum

# Answer: pointer to the question name (0xC00C), type A, class IN, TTL 60, 4 bytes of address.
_ANSWER = struct.pack("!HHHIH4s", 0xC00C, 1, 1, 60, 4, bytes([192, 0, 2, 10]))


def answer(pkt: bytes) -> bytes | None:
    """Return the response packet for one IPv4/UDP/53 query, or None to ignore the packet."""
    if pkt[0] != 0x45 or pkt[9] != 17 or pkt[22:24] != b"\x00\x35" or len(pkt) < 40:
        return None
    dns = bytearray(pkt[28:])
    dns[2] = 0x80 | (dns[2] & 0x79) | 0x04  # QR=1, keep opcode and RD, AA=1
    dns[3] = 0x80  # RA=1, RCODE=0
    dns[6:8] = b"\x00\x01"  # ANCOUNT=1
    dns[10:12] = b"\x00\x00"  # drop any OPT record count (ARCOUNT=0)
    # Keep the header and the question only (question ends after the name + 4 bytes).
    end = 12
    while end < len(dns) and dns[end]:
        end += dns[end] + 1
    dns = dns[: end + 5] + _ANSWER
    src, dst = pkt[16:20], pkt[12:16]
    length = 8 + len(dns)
    udp = struct.pack("!HHHH", 53, int.from_bytes(pkt[20:22], "big"), length, 0) + dns
    csum = checksum(udp, pseudo_header_sum(src, dst, 17, length)) or 0xFFFF
    udp = udp[:6] + csum.to_bytes(2, "big") + udp[8:]
    ip = bytearray(pkt[:20])
    ip[2:4] = (20 + length).to_bytes(2, "big")
    ip[10:12] = b"\0\0"
    ip[12:16], ip[16:20] = src, dst
    ip[10:12] = checksum(ip).to_bytes(2, "big")
    return bytes(ip) + udp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tun", default="bare0")
    parser.add_argument("--address", default="10.30.30.30")
    args = parser.parse_args()
    serve(args.tun, [args.address], answer, "bare dns")


if __name__ == "__main__":
    main()
