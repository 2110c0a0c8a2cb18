"""Upstream transports alone: CPU per query of olm's UDP, TCP, DoT and DoH clients, one run.

    sudo .venv/bin/python benchmarks/dns_transports.py [--queries 3000] [--outstanding 100]
        [--rounds 5] [--only udp|tcp|dot|doh]... [--json]

What runs
    A network namespace the script creates and always deletes, holding only its loopback. In it,
    Debian's unbound as ``benchmarks/dns_encrypted.py`` starts it (every name under
    ``bench.test`` answered from local data over UDP/TCP, DoT and DoH, a throwaway trustme
    certificate), and a client: this script again, inside the namespace, which makes each
    transport with ``olm.dns.upstream.factory.make_transport`` exactly as ``olm`` does (the
    certificate verified through ``ca_file`` and ``server_name``) and sends it ``--queries``
    new names, ``--outstanding`` at a time, after a few untimed ones that open its connections.
    No engine, cache or frontend: the transport's own exchange and nothing else.

What is reported
    Per transport, medians over ``--rounds`` rounds (each round runs every transport once, one
    after the other, so noise hits all alike): q/s, and the client process's CPU time (user +
    system) per query, in microseconds, including building each query (about 20 us of dnslib
    and Query work, the same for all). ``x udp``: that CPU as a multiple of the UDP transport's.

Reading it
    The transports' own costs, apart from olm's miss path: what the encrypted legs add per
    query. unbound shares the machine's two cores; its CPU is not in the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dns_encrypted import DOH_PATH, HOST, SERVER_NAME, UPSTREAM_PORTS, Pki, start_unbound
from dns_qps import ZONE, base_parser, find_binary, script_main

from netns import env, namespace

SCHEMES = {"udp": "udp", "tcp": "tcp", "dot": "tls", "doh": "https"}
CLIENT_COMMAND = "--client"  # argv[1] that makes this script the client (inside the namespace)
WARMUP = 20


async def _drive(
    transport_name: str, ca_file: str, first: int, count: int, width: int
) -> dict[str, float]:
    """Send ``count`` new names through a fresh transport, ``width`` at a time; measure."""
    from dnslib import DNSRecord

    from netstack.counters import Counters
    from olm.dns.request import Request
    from olm.dns.upstream.address import Upstream
    from olm.dns.upstream.base import Query
    from olm.dns.upstream.factory import make_transport

    scheme = SCHEMES[transport_name]
    port = UPSTREAM_PORTS["doh" if scheme == "https" else "dot" if scheme == "tls" else "udp"]
    upstream = Upstream(
        HOST,
        port,
        scheme,
        DOH_PATH if scheme == "https" else "",
        server_name=SERVER_NAME if scheme in ("tls", "https") else None,
        ca_file=ca_file if scheme in ("tls", "https") else None,
    )
    transport = make_transport(upstream, Counters())
    gate = asyncio.Semaphore(width)
    failed = 0

    async def one(number: int) -> None:
        nonlocal failed
        async with gate:
            wire = bytes(DNSRecord.question(f"x{number:08d}.{ZONE}").pack())
            try:
                await transport.exchange(Query(Request(wire)), 5.0)
            except (OSError, TimeoutError):
                failed += 1

    await asyncio.gather(*(one(first - WARMUP + i) for i in range(WARMUP)))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(first + i) for i in range(count)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    transport.close()
    await asyncio.sleep(0.05)  # let closing connections say goodbye
    return {"qps": count / wall, "cpu_us": cpu / count * 1e6, "failed": failed}


def client(argv: list[str]) -> None:
    """Measure one transport and print the figures as JSON (runs inside the namespace)."""
    transport, ca_file, first, count, width = argv
    result = asyncio.run(_drive(transport, ca_file, int(first), int(count), int(width)))
    print(json.dumps(result))


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__, f"a transport: {', '.join(SCHEMES)}")
    parser.set_defaults(rounds=5)
    parser.add_argument("--queries", type=int, default=3000, help="per measurement")
    parser.add_argument("--outstanding", type=int, default=100, help="queries in flight")
    args = parser.parse_args()
    unknown = set(args.only or ()) - set(SCHEMES)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; known: {list(SCHEMES)}")
    return args


def main() -> None:
    args = parse_args()
    unbound = find_binary("unbound")
    if not unbound:
        raise SystemExit("needs unbound (apt-get install unbound)")
    names = args.only or list(SCHEMES)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="dns_transports-") as tmpdir:
        tmp = Path(tmpdir)
        pki = Pki.issue(tmp)
        with namespace("dnstransp") as ns:
            upstream = start_unbound(ns, unbound, tmp, pki)
            try:
                first = 0
                for round_no in range(1, args.rounds + 1):
                    for name in names:
                        first += args.queries + WARMUP
                        argv = [sys.executable, __file__, CLIENT_COMMAND, name, str(pki.ca)]
                        argv += [str(first), str(args.queries), str(args.outstanding)]
                        done = subprocess.run(
                            ["ip", "netns", "exec", ns, *argv],
                            capture_output=True,
                            text=True,
                            timeout=300,
                            env=env(),
                            check=True,
                        )
                        run = json.loads(done.stdout)
                        runs[name].append(run)
                        print(
                            f"round {round_no}: {name} {run['qps']:,.0f} q/s, "
                            f"{run['cpu_us']:.0f} us CPU/query",
                            file=sys.stderr,
                        )
            finally:
                upstream.stop()
    medians = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in runs.items()
    }
    if args.json:
        print(json.dumps({"settings": vars(args), "medians": medians, "runs": runs}, indent=2))
        return
    print(
        f"{args.queries} queries a run, {args.outstanding} outstanding, medians of "
        f"{args.rounds} rounds; unbound on {HOST} in a namespace"
    )
    print(f"{'transport':10} {'q/s':>9} {'CPU/query':>10} {'x udp':>6} {'failed':>6}")
    base = medians.get("udp", {}).get("cpu_us")
    for name, m in medians.items():
        times = f"{m['cpu_us'] / base:.2f}x" if base else "-"
        print(f"{name:10} {m['qps']:9,.0f} {m['cpu_us']:7.0f} us {times:>6} {m['failed']:6.0f}")


if __name__ == "__main__":
    if sys.argv[1:2] == [CLIENT_COMMAND]:
        client(sys.argv[2:])
        sys.exit(0)
    script_main(main)
