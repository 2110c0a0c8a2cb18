"""The bare baseline: a minimal pure-Python UDP echo answering straight off a TUN fd.

No stack: for each IPv4/IPv6 UDP packet to the echo port it swaps the addresses and ports and
writes the packet back. Swapping leaves every checksum valid (the one's-complement sum does not
depend on word order), so this is the least work any correct responder can do per packet.
Run as root; stops on SIGTERM/SIGINT and removes its TUN.
"""

from __future__ import annotations

import argparse
import os
import select
import signal

from olm.device.netconfig import configure_tun, default_host_address
from olm.device.tun import open_tun


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tun", default="bare0")
    parser.add_argument("--address", action="append", default=[])
    parser.add_argument("--port", type=int, default=7)
    args = parser.parse_args()
    addresses = args.address or ["10.30.30.30", "fd30:30:30::30"]
    dev = open_tun(args.tun, 1500)
    net = configure_tun(
        dev.name,
        mtu=1500,
        host_addresses=[default_host_address(a) for a in addresses],
        service_addresses=addresses,
    )
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fd = dev.fd
    port = args.port.to_bytes(2, "big")
    print("bare echo: ready", flush=True)
    read, write = os.read, os.write
    while not stop:
        try:
            ready, _, _ = select.select([fd], [], [], 0.2)
        except InterruptedError:
            continue
        if not ready:
            continue
        pkt = read(fd, 65535)
        version = pkt[0] >> 4
        if version == 4 and pkt[9] == 17:
            ihl = (pkt[0] & 15) * 4
            if pkt[ihl + 2 : ihl + 4] != port:
                continue
            out = (
                pkt[:12]
                + pkt[16:20]
                + pkt[12:16]
                + pkt[ihl + 2 : ihl + 4]
                + pkt[ihl : ihl + 2]
                + pkt[ihl + 4 :]
            )
        elif version == 6 and pkt[6] == 17:
            if pkt[42:44] != port:
                continue
            out = pkt[:8] + pkt[24:40] + pkt[8:24] + pkt[42:44] + pkt[40:42] + pkt[44:]
        else:
            continue
        write(fd, out)
    net.undo()
    dev.close()


if __name__ == "__main__":
    main()
