"""The bare baseline: a minimal pure-Python UDP echo answering straight off a TUN fd.

No stack: for each IPv4/IPv6 UDP packet to the echo port it swaps the addresses and ports and
writes the packet back. Swapping leaves every checksum valid (the one's-complement sum does not
depend on word order), so this is the least work any correct responder can do per packet.
Run as root; stops on SIGTERM/SIGINT and removes its TUN.
"""

from __future__ import annotations

import argparse

from bare_tun import serve


def bare_echo(pkt: bytes, port: bytes = b"\x00\x07") -> bytes | None:
    """Answer one packet: swap addresses and ports of IPv4/IPv6 UDP to ``port``, else None."""
    version = pkt[0] >> 4
    if version == 4 and pkt[9] == 17:
        ihl = (pkt[0] & 15) * 4
        if pkt[ihl + 2 : ihl + 4] != port:
            return None
        return (
            pkt[:12]
            + pkt[16:20]
            + pkt[12:16]
            + pkt[ihl + 2 : ihl + 4]
            + pkt[ihl : ihl + 2]
            + pkt[ihl + 4 :]
        )
    if version == 6 and pkt[6] == 17:
        if pkt[42:44] != port:
            return None
        return pkt[:8] + pkt[24:40] + pkt[8:24] + pkt[42:44] + pkt[40:42] + pkt[44:]
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tun", default="bare0")
    parser.add_argument("--address", action="append", default=[])
    parser.add_argument("--port", type=int, default=7)
    args = parser.parse_args()
    port = args.port.to_bytes(2, "big")
    serve(
        args.tun,
        args.address or ["10.30.30.30", "fd30:30:30::30"],
        lambda pkt: bare_echo(pkt, port),
        "bare echo",
    )


if __name__ == "__main__":
    main()
