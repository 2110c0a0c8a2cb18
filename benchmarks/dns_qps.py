"""DNS queries per second against olm, beside two baselines measured in the same run.

    sudo .venv/bin/python benchmarks/dns_qps.py [--seconds 10] [--rounds 3]

Everything runs inside a network namespace this script creates and deletes. An upstream
(tests/dnsserver.py) listens on 127.0.0.1:5300 in the namespace. Then, one at a time:

* ``olm up`` on a TUN, serving 10.30.30.30:53, every query forwarded to the upstream (there is
  no cache yet), driven by dnsperf over UDP and over TCP;
* ``python -m dnslib.proxy`` on 127.0.0.1:5353 forwarding to the same upstream through kernel
  sockets (UDP, and TCP with --tcp): the same job without a TUN or a userspace stack;
* ``benchmarks/bare_tun_dns.py``: answers A queries straight off a TUN fd with no upstream, the
  floor for a pure-Python TUN responder.

Reported per server: queries per second (dnsperf), lost queries, and the server process's CPU
time per answered query (user + system from /proc/PID/stat; the upstream's own CPU is not
included, and it is the same for the two forwarding servers).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from netns import Server, namespace

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def dnsperf(
    ns: str, server: str, port: int, mode: str, seconds: float, datafile: str
) -> dict[str, float]:
    """Run dnsperf inside the namespace; return qps, sent, completed, lost."""
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "dnsperf",
            "-s",
            server,
            "-p",
            str(port),
            "-m",
            mode,
            "-d",
            datafile,
            "-l",
            str(seconds),
            "-c",
            "4",
            "-q",
            "64",
            "-t",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout

    def grab(label: str) -> float:
        match = re.search(rf"{label}:\s+([\d.]+)", out)
        return float(match.group(1)) if match else 0.0

    return {
        "qps": grab("Queries per second"),
        "sent": grab("Queries sent"),
        "completed": grab("Queries completed"),
        "lost": grab("Queries lost"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("example.test A\nwww.example.test A\nexample.test AAAA\n" * 10)
        datafile = f.name
    # Both forwarders get the same upstream; dnslib.proxy is told explicitly (its default
    # upstream is a public resolver) and keeps quiet (no per-query logging, like olm).
    olm = [
        "-m",
        "olm",
        "up",
        "--tun",
        "bench0",
        "--upstream",
        "127.0.0.1:5300",
        "--log-level",
        "WARNING",
    ]
    dnslib = ["-m", "dnslib.proxy", "-a", "127.0.0.1", "-p", "5353", "-u", "127.0.0.1:5300"]
    log_off = "--log=-request,-reply,-truncated,-error,-recv,-send,-data"
    servers: dict[str, tuple[list[str], str, int, str]] = {
        "olm udp": (olm, "10.30.30.30", 53, "udp"),
        "olm tcp": (olm, "10.30.30.30", 53, "tcp"),
        "dnslib.proxy udp": ([*dnslib, log_off], "127.0.0.1", 5353, "udp"),
        "dnslib.proxy tcp": ([*dnslib, "--tcp", log_off], "127.0.0.1", 5353, "tcp"),
        "bare TUN responder udp": (
            [str(HERE / "bare_tun_dns.py"), "--tun", "bench0"],
            "10.30.30.30",
            53,
            "udp",
        ),
    }
    results: dict[str, dict[str, Any]] = {}
    with namespace() as ns:
        upstream = Server(ns, [str(REPO / "tests" / "dnsserver.py"), "--port", "5300"])
        try:
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, (argv, host, port, mode) in servers.items():
                    ready = "Proxy" if "dnslib" in name else "ready"
                    server = Server(ns, argv, ready=ready)
                    try:
                        cpu0 = server.cpu_seconds()
                        run = dnsperf(ns, host, port, mode, args.seconds, datafile)
                        run["cpu_us_per_query"] = (
                            (server.cpu_seconds() - cpu0) / max(1.0, run["completed"]) * 1e6
                        )
                    finally:
                        server.stop()
                    samples[name].append(run)
        finally:
            upstream.stop()
    for name, runs in samples.items():
        results[name] = {
            key: statistics.median(r[key] for r in runs)
            for key in ("qps", "completed", "lost", "cpu_us_per_query")
        }
    Path(datafile).unlink()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    base = results["dnslib.proxy udp"]
    for name, r in results.items():
        print(
            f"{name:24} {r['qps']:9,.0f} q/s  lost {r['lost']:6.0f}  "
            f"{r['cpu_us_per_query']:7.1f} us CPU/query  "
            f"({r['qps'] / base['qps']:.2f}x dnslib.proxy udp q/s)"
        )


if __name__ == "__main__":
    sys.exit(main())
