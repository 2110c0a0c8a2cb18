"""Kernel UDP sender for the benchmarks: keeps a window of datagrams in flight to an echo server.

Bounded in count and time; prints one JSON line: sent, received, seconds, datagrams per second.
"""

from __future__ import annotations

import argparse
import json
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=30.0)
    args = parser.parse_args()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((args.host, args.port))
    sock.settimeout(1.0)
    payload = bytes(args.size)
    sent = received = 0
    start = time.perf_counter()
    deadline = start + args.time_limit
    while sent < min(args.window, args.count):
        sock.send(payload)
        sent += 1
    while received < sent and time.perf_counter() < deadline:
        try:
            sock.recv(65535)
        except TimeoutError:
            # A lost datagram: refill the window so the run still ends.
            if sent < args.count:
                sock.send(payload)
                sent += 1
            else:
                break
            continue
        received += 1
        if sent < args.count:
            sock.send(payload)
            sent += 1
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "sent": sent,
                "received": received,
                "seconds": seconds,
                "pps": received / seconds if seconds else 0.0,
            }
        )
    )


if __name__ == "__main__":
    main()
