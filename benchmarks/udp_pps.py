"""UDP datagrams per second through the stack, beside a bare baseline measured in the same run.

    python benchmarks/udp_pps.py memory        # in-memory link: inject, deliver, echo, drain
    sudo python benchmarks/udp_pps.py tun      # over a real TUN against a kernel sender
    sudo python benchmarks/udp_pps.py all

``memory`` runs the stack (channel link -> IPv4 -> UDP demux -> DatagramProtocol echo ->
UDP -> IPv4 -> channel) and the bare responder (swap addresses and ports) over the same
packets, several rounds each, and reports medians. ``tun`` starts ``olm stack --udp-echo`` and
then ``bare_tun_echo.py`` inside a namespace it creates and deletes, drives each with the
kernel's UDP sockets (a window of datagrams in flight), and reports datagrams per second and
the server's CPU time per datagram (from /proc/PID/stat).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bare_tun_echo import bare_echo

from netstack.adapters import create_datagram_endpoint
from netstack.clock import ManualClock
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Header
from netstack.header.udp import build_udp
from netstack.link.channel import ChannelEndpoint
from netstack.stack import Stack, parse_address

HERE = Path(__file__).resolve().parent


def _packet(src: str, dst: str, size: int) -> bytes:
    s, d = parse_address(src), parse_address(dst)
    datagram = build_udp(s, d, 40000, 7, bytes(size))
    if len(s) == 4:
        return IPv4Header(src=s, dst=d, protocol=17).pack(datagram)
    return IPv6Header(src=s, dst=d, next_header=17).pack(datagram)


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


def memory(count: int, rounds: int, size: int) -> dict[str, Any]:
    """Median seconds per datagram for the stack and the bare responder, same packets."""

    async def run() -> dict[str, Any]:
        results: dict[str, Any] = {}
        for family, (client, server) in (
            ("ipv4", ("10.0.0.1", "10.0.0.2")),
            ("ipv6", ("fd00::1", "fd00::2")),
        ):
            stack = Stack(ManualClock(), seed=1)
            link = ChannelEndpoint(mtu=1500, capacity=count + 16)
            stack.create_nic("eth0", link)
            stack.add_address("eth0", server)
            stack.add_route("0.0.0.0/0" if family == "ipv4" else "::/0", "eth0")
            await create_datagram_endpoint(stack, _Echo, local_addr=(server, 7))
            pkt = _packet(client, server, size)
            stack_times, bare_times = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(count):
                    link.inject(pkt)
                out = link.drain()
                stack_times.append((time.perf_counter() - t0) / count)
                assert len(out) == count
                t0 = time.perf_counter()
                sink = []
                for _ in range(count):
                    sink.append(bare_echo(pkt))
                bare_times.append((time.perf_counter() - t0) / count)
            s, b = statistics.median(stack_times), statistics.median(bare_times)
            results[family] = {
                "stack_us": s * 1e6,
                "bare_us": b * 1e6,
                "stack_pps": 1 / s,
                "bare_pps": 1 / b,
                "ratio": s / b,
            }
        return results

    return asyncio.run(run())


def tun(count: int, rounds: int, size: int) -> dict[str, Any]:
    """Datagrams per second and server CPU per datagram over a TUN, stack vs bare responder."""
    from netns import Server, env, namespace

    results: dict[str, Any] = {}
    # "stack" matches the bare responder's plain TUN; "stack_offload" is olm's default TUN mode
    # (IFF_VNET_HDR with checksum offload: the kernel leaves UDP checksums to the stack).
    servers = {
        "stack": ["-m", "olm", "stack", "--tun", "bench0", "--udp-echo", "7", "--no-offload"],
        "stack_offload": ["-m", "olm", "stack", "--tun", "bench0", "--udp-echo", "7"],
        "bare": [str(HERE / "bare_tun_echo.py"), "--tun", "bench0", "--port", "7"],
    }
    with namespace() as ns:
        for family, host in (("ipv4", "10.30.30.30"), ("ipv6", "fd30:30:30::30")):
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
            for _ in range(rounds):
                for name, argv in servers.items():
                    server = Server(ns, argv)
                    try:
                        cpu0 = server.cpu_seconds()
                        out = subprocess.run(
                            [
                                "ip",
                                "netns",
                                "exec",
                                ns,
                                sys.executable,
                                str(HERE / "udp_client.py"),
                                host,
                                "7",
                                "--count",
                                str(count),
                                "--size",
                                str(size),
                            ],
                            capture_output=True,
                            text=True,
                            check=True,
                            env=env(),
                            timeout=120,
                        ).stdout
                        cpu = server.cpu_seconds() - cpu0
                    finally:
                        server.stop()
                    run = json.loads(out)
                    samples[name].append((run["pps"], cpu / max(1, run["received"])))
            entry: dict[str, float] = {}
            for name, vals in samples.items():
                entry[f"{name}_pps"] = statistics.median(v[0] for v in vals)
                entry[f"{name}_cpu_us"] = statistics.median(v[1] for v in vals) * 1e6
            entry["cpu_ratio"] = entry["stack_cpu_us"] / entry["bare_cpu_us"]
            entry["pps_ratio"] = entry["bare_pps"] / entry["stack_pps"]
            entry["offload_cpu_ratio"] = entry["stack_offload_cpu_us"] / entry["bare_cpu_us"]
            results[family] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("what", choices=["memory", "tun", "all"])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.what in ("memory", "all"):
        results["memory"] = memory(args.count, args.rounds, args.size)
    if args.what in ("tun", "all"):
        results["tun"] = tun(args.count, max(1, args.rounds // 2), args.size)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for family, r in results.get("memory", {}).items():
        print(
            f"memory {family}: stack {r['stack_pps']:,.0f} dgram/s ({r['stack_us']:.2f} us), "
            f"bare {r['bare_pps']:,.0f} dgram/s ({r['bare_us']:.2f} us), "
            f"stack/bare cost {r['ratio']:.1f}x"
        )
    for family, r in results.get("tun", {}).items():
        print(
            f"tun {family}: stack {r['stack_pps']:,.0f} dgram/s, {r['stack_cpu_us']:.1f} us CPU; "
            f"bare {r['bare_pps']:,.0f} dgram/s, {r['bare_cpu_us']:.1f} us CPU; "
            f"CPU ratio {r['cpu_ratio']:.2f}x, throughput ratio {r['pps_ratio']:.2f}x; "
            f"with offload {r['stack_offload_pps']:,.0f} dgram/s, "
            f"{r['stack_offload_cpu_us']:.1f} us CPU ({r['offload_cpu_ratio']:.2f}x)"
        )


if __name__ == "__main__":
    main()
