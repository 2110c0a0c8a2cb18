"""TCP throughput and connection rate of netstack, beside the Linux kernel measured in the same run.

    python benchmarks/tcp_throughput.py memory             # stack <-> stack on the channel link
    python benchmarks/tcp_throughput.py memory --profile   # ... under cProfile: top functions
    sudo python benchmarks/tcp_throughput.py tun           # over a real TUN in a namespace
    sudo python benchmarks/tcp_throughput.py all

``memory``: two stacks on one asyncio loop (AsyncioClock), joined by
``netstack.link.channel.LoopWire``; a client streams SIZE bytes to a counting server through the
asyncio streams API (IPv4). Both ends are netstack, so this is the stack's cost twice over.

``tun`` (inside a namespace it creates and deletes), each figure a median of ROUNDS:

* kernel -> stack: a kernel client sends SIZE bytes to ``olm stack --tcp-discard`` and waits for
  the stack's FIN (everything was read);
* stack -> kernel: a Stack on its own TUN (``tcp_peer.py stack-send``) sends SIZE bytes to a
  kernel sink on the host side of the TUN (10.30.30.1), which replies with its byte count;
* connections per second: sequential kernel clients, each connect + 100-byte echo + close,
  against ``olm stack --tcp-echo``;
* reference: the same kernel client against a kernel server (``tcp_peer.py kernel-server``, an
  asyncio server on kernel sockets) on 127.0.0.1 in the same namespace, same sizes and counts.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netstack.adapters import open_connection, start_server
from netstack.clock import AsyncioClock
from netstack.link.channel import ChannelEndpoint, LoopWire
from netstack.stack import Stack

HERE = Path(__file__).resolve().parent
PEER = str(HERE / "tcp_peer.py")
CHUNK = 1 << 16


def _host(clock: AsyncioClock, addr: str, link: ChannelEndpoint, seed: int) -> Stack:
    stack = Stack(clock, seed=seed)
    stack.create_nic("eth0", link)
    stack.add_address("eth0", f"{addr}/24")
    stack.add_route("0.0.0.0/0", "eth0")
    return stack


async def _memory_once(size: int) -> float:
    """Seconds to move ``size`` bytes from one stack to another and see the close."""
    clock = AsyncioClock()
    la, lb = ChannelEndpoint(mtu=1500), ChannelEndpoint(mtu=1500)
    client = _host(clock, "10.0.0.1", la, 1)
    server = _host(clock, "10.0.0.2", lb, 2)
    LoopWire(la, lb)
    received = 0
    finished = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        while chunk := await reader.read(1 << 18):
            received += len(chunk)
        writer.close()
        finished.set_result(None)

    srv = await start_server(server, sink, "10.0.0.2", 9)
    data = bytes(range(256)) * (CHUNK // 256)
    t0 = time.perf_counter()
    reader, writer = await open_connection(client, "10.0.0.2", 9)
    sent = 0
    while sent < size:
        writer.write(data)
        sent += len(data)
        await writer.drain()
    writer.write_eof()
    await asyncio.wait_for(finished, 120)
    await reader.read()
    seconds = time.perf_counter() - t0
    writer.close()
    srv.close()
    if received != sent:
        raise AssertionError(f"received {received} of {sent}")
    return sent / seconds / 1e6


def memory(size: int, rounds: int, profile: bool) -> dict[str, Any]:
    """Median MB/s stack -> stack in memory; with ``profile`` the cProfile top 25 as well."""
    speeds = [asyncio.run(_memory_once(size)) for _ in range(rounds)]
    result: dict[str, Any] = {"mb_s": statistics.median(speeds), "rounds": speeds}
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(_memory_once(size))
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        result["profile"] = out.getvalue()
    return result


def _run(ns: str, *argv: str, timeout: float = 180) -> dict[str, Any]:
    from netns import env

    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, *argv],
        capture_output=True,
        text=True,
        check=True,
        env=env(),
        timeout=timeout,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def tun(size: int, rounds: int, conns: int, offload: bool = True) -> dict[str, Any]:
    """Kernel <-> stack over a TUN and the kernel's own loopback, medians of ``rounds``."""
    from netns import Server, namespace

    results: dict[str, Any] = {}
    with namespace("olmtcpbench") as ns:
        kernel = Server(ns, [PEER, "kernel-server", "5001"])  # sink :5001, echo :5002
        try:
            olm = Server(
                ns,
                ["-m", "olm", "stack", "--tun", "bench0", "--tcp-echo", "7", "--tcp-discard", "9"]
                + ([] if offload else ["--no-offload"]),
            )
            try:
                k2s = [
                    _run(ns, PEER, "kernel-send", "10.30.30.30", "9", str(size))["mb_s"]
                    for _ in range(rounds)
                ]
                rr = [
                    _run(ns, PEER, "kernel-rr", "10.30.30.30", "7", str(conns))["per_s"]
                    for _ in range(rounds)
                ]
            finally:
                olm.stop()
            sent = _run(
                ns,
                PEER,
                "stack-send",
                "bench1",
                "10.30.30.1",
                "5001",
                str(size),
                str(rounds),
                *([] if offload else ["--no-offload"]),
            )
            s2k = sent["mb_s"]
            ref_bulk = [
                _run(ns, PEER, "kernel-send", "127.0.0.1", "5001", str(size))["mb_s"]
                for _ in range(rounds)
            ]
            ref_rr = [
                _run(ns, PEER, "kernel-rr", "127.0.0.1", "5002", str(conns))["per_s"]
                for _ in range(rounds)
            ]
        finally:
            kernel.stop()
    results["kernel_to_stack_mb_s"] = statistics.median(k2s)
    results["stack_to_kernel_mb_s"] = statistics.median(s2k)
    results["stack_to_kernel_segments"] = sent["segments"]
    results["stack_conn_per_s"] = statistics.median(rr)
    results["kernel_loopback_mb_s"] = statistics.median(ref_bulk)
    results["kernel_loopback_conn_per_s"] = statistics.median(ref_rr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("what", choices=["memory", "tun", "all"])
    parser.add_argument("--size", type=int, default=20_000_000, help="bytes per bulk transfer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conns", type=int, default=300, help="connections per rate round")
    parser.add_argument("--profile", action="store_true", help="cProfile one memory round")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--no-offload", action="store_true", help="plain TUN: no IFF_VNET_HDR, no TSO/GSO"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.what in ("memory", "all"):
        results["memory"] = memory(args.size, args.rounds, args.profile)
    if args.what in ("tun", "all"):
        results["tun"] = tun(args.size, args.rounds, args.conns, offload=not args.no_offload)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    if "memory" in results:
        m = results["memory"]
        print(f"memory stack -> stack: {m['mb_s']:.1f} MB/s (median of {args.rounds})")
        if "profile" in m:
            print(m["profile"])
    if "tun" in results:
        t = results["tun"]
        print(f"tun kernel -> stack (discard):   {t['kernel_to_stack_mb_s']:.1f} MB/s")
        print(
            f"tun stack -> kernel (sink):      {t['stack_to_kernel_mb_s']:.1f} MB/s "
            f"(stack TCP segments {t['stack_to_kernel_segments']})"
        )
        print(f"tun connections/s (100 B echo):  {t['stack_conn_per_s']:.0f}")
        print(f"kernel loopback bulk:            {t['kernel_loopback_mb_s']:.1f} MB/s")
        print(f"kernel loopback connections/s:   {t['kernel_loopback_conn_per_s']:.0f}")


if __name__ == "__main__":
    main()
