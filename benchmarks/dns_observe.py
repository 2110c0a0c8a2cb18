"""What looking inside costs: metrics, the trace hook and the query log on olm's cache-hit path.

    sudo .venv/bin/python benchmarks/dns_observe.py [--seconds 10] [--rounds 3] [--only NAME]...
        [--transport udp|tcp]... [--json]

What runs
    The set-up of benchmarks/dns_qps.py (one namespace, created and always deleted; its lean
    upstream on 127.0.0.1:5300; dnsperf -c 10 -q 100 asking the same 100 names over and over,
    so that after the first hundred every query is a cache hit), and these servers, one at a
    time, each started afresh for every run and stopped by its PID:

    * ``bare``: benchmarks/bare_tun_dns.py, the floor for a pure-Python TUN responder;
    * ``olm plain``: ``olm up --control none``: nothing looks inside, no control socket;
    * ``olm idle``: ``olm up`` with its control socket, nobody tracing: the trace hook idle
      (the default: this row against the one above is the cost of an idle hook);
    * ``olm metrics``: ``olm up --metrics``: the request-duration histogram observes every
      query (scraped once at the end of each run, not during it);
    * ``olm tracing``: ``olm up`` while an ``olm trace --name never.invalid`` session is
      attached: every packet is decoded and every query checked against the filter, and none
      matches (what a forgotten ``olm trace`` costs);
    * ``olm querylog``: ``olm up --query-log FILE``: one JSON line per query.

What is reported
    Per server, medians over ``--rounds`` runs: q/s, CPU microseconds per query (the server's
    user + system time over answered queries), and both as a multiple of ``olm plain``'s and of
    the bare responder's in the same run. The absolute figures move from day to day on this
    shared machine; the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from dns_procs import Proc
from dns_qps import (
    HERE,
    PROBE_NAME,
    SERVICE,
    TUN,
    UPSTREAM_HOST,
    UPSTREAM_PORT,
    Workload,
    base_parser,
    hit_names,
    measure,
    median_of,
    script_main,
    upstream_proc,
)

from netns import env, namespace

SCRAPE = (
    "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9153/metrics').read().decode())"
)

OLM = [sys.executable, "-m", "olm"]

#: label -> extra ``olm up`` arguments ("{tmp}" is the run's temporary folder).
VARIANTS: dict[str, list[str]] = {
    "olm plain": ["--control", "none"],
    "olm idle": ["--control", "{tmp}/olm.sock"],
    "olm metrics": ["--control", "none", "--metrics", "127.0.0.1:9153"],
    "olm tracing": ["--control", "{tmp}/olm.sock"],
    "olm querylog": ["--control", "none", "--query-log", "{tmp}/queries.jsonl"],
}


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__, "a server: bare, 'olm plain', 'olm idle', ... or 'olm'")
    parser.add_argument("--transport", action="append", choices=["udp", "tcp"], help="default: udp")
    return parser.parse_args()


def argv_of(label: str, tmp: Path) -> list[str]:
    python = sys.executable
    if label == "bare":
        return [python, str(HERE / "bare_tun_dns.py"), "--tun", TUN, "--address", SERVICE]
    olm = [python, "-m", "olm", "up", "--tun", TUN, "--address", SERVICE, "--log-level"]
    olm += ["WARNING", "--upstream", f"{UPSTREAM_HOST}:{UPSTREAM_PORT}"]
    return olm + [arg.replace("{tmp}", str(tmp)) for arg in VARIANTS[label]]


def one_run(
    ns: str,
    label: str,
    transport: str,
    workload: Workload,
    upstream: Proc,
    seconds: float,
    tmp: Path,
) -> dict[str, float]:
    """Start ``label`` afresh, wait until it answers, measure one run, stop it."""
    server = Proc(ns, argv_of(label, tmp), tmp / f"{label}.log")
    tracer: subprocess.Popen[str] | None = None
    try:
        server.wait_ready(ns, SERVICE, 53, PROBE_NAME, "ready", transport == "tcp")
        if label == "olm tracing":
            tracer = subprocess.Popen(
                [*OLM, "trace", "--control", f"{tmp}/olm.sock", "--name", "never.invalid"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env(),
            )
            assert tracer.stderr is not None
            line = tracer.stderr.readline()
            if "tracing" not in line:
                raise RuntimeError(f"olm trace did not start: {line}")
        run = measure(ns, server, upstream, SERVICE, 53, transport, workload, seconds)
        if label == "olm metrics":
            scraped = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", SCRAPE],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout
            if "olm_" not in scraped:
                raise RuntimeError("the metrics endpoint served no olm_ metrics")
    finally:
        if tracer is not None:
            tracer.terminate()
            tracer.wait(10)
        server.stop()
    return run


def main() -> None:
    args = parse_args()
    labels = ["bare", *VARIANTS]
    if args.only:
        labels = [x for x in labels if x in args.only or x.split()[0] in args.only]
    transports = args.transport or ["udp"]
    samples: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="dns_observe-") as tmpdir:
        tmp = Path(tmpdir)
        workload = Workload.write(tmp / "hit.txt", hit_names(), once=False)
        with namespace("dnsobs") as ns:
            upstream = upstream_proc(ns, "python", tmp)
            try:
                for round_no in range(1, args.rounds + 1):
                    for transport in transports:
                        for label in labels:
                            if label == "bare" and transport == "tcp":
                                continue
                            run = one_run(
                                ns, label, transport, workload, upstream, args.seconds, tmp
                            )
                            samples.setdefault(f"{label} {transport}", []).append(run)
                            print(
                                f"round {round_no}: {label} {transport}: {run['qps']:,.0f} q/s, "
                                f"{run['cpu_us_per_query']:.1f} us CPU/query",
                                file=sys.stderr,
                            )
            finally:
                upstream.stop()
    results = {name: median_of(runs) for name, runs in samples.items()}
    if args.json:
        print(json.dumps({"seconds": args.seconds, "rounds": args.rounds, "results": results}))
        return
    print(f"cache hits, dnsperf -c 10 -q 100, medians of {args.rounds} x {args.seconds:g} s")
    print(f"{'server':18} {'q/s':>9} {'CPU/query':>10} {'x plain q/s':>12} {'x plain CPU':>12}")
    for name, r in results.items():
        transport = name.rsplit(" ", 1)[1]
        plain = results.get(f"olm plain {transport}")
        rel = ""
        if plain:
            qps = r["qps"] / plain["qps"]
            cpu = r["cpu_us_per_query"] / plain["cpu_us_per_query"]
            rel = f"{qps:>12.2f} {cpu:>12.2f}"
        print(f"{name:18} {r['qps']:>9,.0f} {r['cpu_us_per_query']:>8.1f}us {rel}")
    bare = results.get("bare udp")
    if bare:
        print(f"(bare udp: {bare['qps']:,.0f} q/s, {bare['cpu_us_per_query']:.1f} us CPU/query)")


if __name__ == "__main__":
    script_main(main)
