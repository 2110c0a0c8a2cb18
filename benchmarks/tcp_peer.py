"""The peers ``tcp_throughput.py`` runs inside its namespace: kernel sockets and a stack client.

    tcp_peer.py kernel-server PORT            sink and echo servers (PORT and PORT+1), both families
    tcp_peer.py kernel-send HOST PORT SIZE    send SIZE bytes, half-close, wait for the peer's close
    tcp_peer.py kernel-rr HOST PORT COUNT     COUNT x (connect, 100-byte echo, close), sequentially
    tcp_peer.py stack-send TUN HOST PORT SIZE ROUNDS
                                              a Stack on TUN sends SIZE bytes to a kernel sink

Every client prints one JSON line; the servers print "ready" and run until stopped. Loops are
bounded by their count and by a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK = 1 << 18
DEADLINE = 120.0  # seconds: no client runs longer than this


def _payload(size: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


def kernel_server(port: int) -> None:
    """Sink on ``port`` (replies its byte count after EOF) and echo on ``port + 1``, both families.

    asyncio streams on kernel sockets: the same shape as ``olm stack``'s services on the stack.
    """

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while chunk := await reader.read(CHUNK):
            total += len(chunk)
        writer.write(str(total).encode())
        await writer.drain()
        writer.close()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    async def serve() -> None:
        for p, handler in ((port, sink), (port + 1, echo)):
            for host in ("0.0.0.0", "::"):
                await asyncio.start_server(handler, host, p, reuse_address=True, backlog=512)
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(serve())


def kernel_send(host: str, port: int, size: int) -> dict[str, float]:
    """Send ``size`` bytes, half-close, and time until the peer has closed its side too."""
    data = _payload(size)
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=DEADLINE) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(CHUNK):
            pass
    seconds = time.perf_counter() - t0
    return {"bytes": size, "seconds": seconds, "mb_s": size / seconds / 1e6}


def kernel_rr(host: str, port: int, count: int) -> dict[str, float]:
    """Open, exchange 100 bytes with an echo server, and close, ``count`` times in a row."""
    msg = _payload(100)
    deadline = time.monotonic() + DEADLINE
    t0 = time.perf_counter()
    done = 0
    while done < count and time.monotonic() < deadline:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(CHUNK)
                if not chunk:
                    raise ConnectionError("echo closed early")
                got += chunk
            if got != msg:
                raise ValueError("echo mismatch")
        done += 1
    seconds = time.perf_counter() - t0
    return {"connections": done, "seconds": seconds, "per_s": done / seconds}


def stack_send(
    tun: str, host: str, port: int, size: int, rounds: int, offload: bool = True
) -> dict[str, Any]:
    """Run a Stack on ``tun``; ``rounds`` times send ``size`` bytes to the kernel sink."""
    from netstack.adapters import open_connection
    from olm.runtime import TunStack, TunStackConfig

    async def run() -> dict[str, Any]:
        data = _payload(size)
        speeds: list[float] = []
        async with TunStack(TunStackConfig(tun=tun, offload=offload)) as running:
            stack = running.stack
            assert stack is not None
            for _ in range(rounds):
                t0 = time.perf_counter()
                reader, writer = await open_connection(stack, host, port)
                for i in range(0, size, CHUNK):
                    writer.write(data[i : i + CHUNK])
                    await writer.drain()
                writer.write_eof()
                reply = await reader.read()
                seconds = time.perf_counter() - t0
                writer.close()
                if int(reply) != size:
                    raise ValueError(f"sink counted {reply!r}, sent {size}")
                speeds.append(size / seconds / 1e6)
            tcp = stack.counters.child("tcp").values
            segments = {k: tcp.get(k, 0) for k in ("segments.in", "segments.out", "retransmits")}
        return {"mb_s": speeds, "segments": segments}

    return asyncio.run(asyncio.wait_for(run(), DEADLINE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("kernel-server")
    p.add_argument("port", type=int)
    p = sub.add_parser("kernel-send")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("size", type=int)
    p = sub.add_parser("kernel-rr")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p = sub.add_parser("stack-send")
    p.add_argument("tun")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("size", type=int)
    p.add_argument("rounds", type=int)
    p.add_argument("--no-offload", action="store_true")
    args = parser.parse_args()
    if args.role == "kernel-server":
        kernel_server(args.port)
    elif args.role == "kernel-send":
        print(json.dumps(kernel_send(args.host, args.port, args.size)))
    elif args.role == "kernel-rr":
        print(json.dumps(kernel_rr(args.host, args.port, args.count)))
    else:
        print(
            json.dumps(
                stack_send(
                    args.tun, args.host, args.port, args.size, args.rounds, not args.no_offload
                )
            )
        )


if __name__ == "__main__":
    main()
