"""DNS queries per second: olm beside a bare floor and two real caching forwarders, one run.

    sudo .venv/bin/python benchmarks/dns_qps.py [--seconds 10] [--rounds 3] [--only NAME]...
        [--workload hit|miss|local|blocked]... [--olm-arg=ARG]... [--blocklist-size N]
        [--upstream-impl python|dnsmasq]
        [--miss-names N] [--dnsmasq-cache N] [--json]

What runs
    Everything runs in one network namespace the script creates and always deletes (also on a
    failure, Ctrl-C or SIGTERM). It holds loopback and, while olm or the bare responder runs,
    their TUN with 10.30.30.30; there is no route out, and nothing is configured to leave it.
    One upstream serves the whole run on 127.0.0.1:5300 (UDP and TCP): any name under
    ``bench.test`` gets NOERROR with one A record (192.0.2.10, TTL 300). By default it is
    ``benchmarks/dns_upstream.py``, a lean wildcard responder; ``--upstream-impl dnsmasq`` uses
    dnsmasq ``--address=/bench.test/192.0.2.10 --local-ttl=300`` instead (as fast over UDP, but
    dnsmasq forks a process per TCP connection and is several times slower over TCP). Its answers
    are checked with dig before anything is measured. The servers under test, one at a time,
    each started afresh for every run and stopped by its PID afterwards:

    * ``bare udp``: ``benchmarks/bare_tun_dns.py`` on a TUN, answering every A query itself
      (no upstream, no cache): the floor for a pure-Python TUN responder (hit workload only);
    * ``olm udp`` / ``olm tcp``: ``python -m olm up`` on a TUN, 10.30.30.30 port 53, forwarding to
      the upstream (plus the arguments in ``OLM_VARIANTS`` and ``--olm-arg``);
    * ``dnsmasq udp`` / ``tcp``: Debian's dnsmasq as a caching forwarder on 127.0.0.1:5353
      (cache of 1,000,000 names);
    * ``unbound udp`` / ``tcp``: Debian's unbound as a caching forwarder on 127.0.0.1:5354
      (iterator module only, no validator; 256 MB message and 512 MB RRset caches).

    A server whose binary is missing is skipped with a note. The load is the same for all:
    dnsperf with 10 clients (``-c 10``) and 100 queries outstanding (``-q 100``), over UDP or
    TCP (dnsperf keeps its 10 TCP connections open for the whole run).

Workloads
    ``hit``: the same 100 names over and over: after the first 100 queries a cache answers
    everything (a server without a cache forwards every query). ``miss``: every query a name
    never asked before (``q0000000.bench.test`` on, from a file of ``--miss-names`` names that
    dnsperf reads once, ``-n 1``, never wrapping; the server is restarted for every run, so no
    name was seen by it before): every query goes to the upstream and lands in the cache.
    ``local`` (olm only): a hundred names of olm's records file (the Pipy JSON format), answered
    authoritatively from local data. ``blocked`` (olm only): a hundred names on olm's blocklist,
    which also holds ``--blocklist-size`` other names (a million by default, in hosts format),
    answered NXDOMAIN with EDE 15. Both are compared with olm's own hit figures: they should
    cost no more than a cache hit.

What is reported
    Per server and workload, medians over ``--rounds`` runs of ``--seconds`` each:

    * q/s: dnsperf's queries per second; lost: queries that got no answer within 2 s;
    * CPU/query: the server's user + system CPU time during the run (/proc/PID/stat, children
      included: dnsmasq forks one per TCP connection) divided by the answered queries;
      core: that CPU time as a share of one core over the run;
    * RSS: the server's VmRSS at the end of the run (for olm: its memory with the cache as full
      as the run made it; dnsmasq allocates its whole cache at start);
    * hit rows: their q/s and CPU/query as a multiple of the bare responder's; miss rows: their
      q/s as a multiple of dnsmasq's over the same transport;
    * "upstream alone": the miss names sent straight to the upstream (wrapping around if need
      be: it keeps nothing), its ceiling.

Reading it
    The machine has 2 cores shared by dnsperf, the server and (for forwarded queries) the
    upstream, so a figure near the upstream-alone rate says "limited by the harness", not by the
    server. The hit figures measure a server's answer path (cache lookup, or a full forward when
    it has no cache) against the bare floor; the miss figures measure forwarding plus cache
    insertion against dnsmasq. The upstream's own CPU is not in CPU/query (it is in --json).
    A cache smaller than the names a miss run inserts measures eviction instead: dnsmasq with
    ``--dnsmasq-cache 10000`` falls from about 35,000 to 7,000-8,000 q/s on the miss workload
    (over 100 us CPU per query), so size every cache under test above the miss run's names.

    dnsmasq over TCP forks a child per connection, and a child closes its connection after 100
    queries (dnsmasq's TCP_MAX_QUERIES): dnsperf reconnects every 100 queries, the queries in
    flight on a closing connection count as lost (about 180 a run), and each fork copies the
    parent's cache (1,000,000 entries, 110 MiB), so its TCP rate is far below its UDP rate and
    rises with a smaller cache (hit: about 2x with 10,000 entries). The children's CPU is
    counted. unbound needs ``local-zone: "test." nodefault``: by default it answers the RFC 6761
    zone test. itself (NXDOMAIN for every name under bench.test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dns_procs import Answer, Proc, probe

from netns import namespace

HERE = Path(__file__).resolve().parent

ZONE = "bench.test"
ADDRESS = "192.0.2.10"  # TEST-NET-1: never routed
TTL = 300
UPSTREAM_HOST, UPSTREAM_PORT = "127.0.0.1", 5300
SERVICE = "10.30.30.30"  # olm's and the bare responder's address on their TUN
TUN = "bench0"
CLIENTS = 10  # dnsperf -c
OUTSTANDING = 100  # dnsperf -q
TIMEOUT = 2  # dnsperf -t: a query unanswered after this many seconds is lost
HIT_NAMES = 100
PROBE_NAME = f"probe.{ZONE}"  # readiness probe; in neither workload's names
DNSMASQ_CACHE = 1_000_000
UNBOUND_CACHES = {"msg-cache-size": "256m", "rrset-cache-size": "512m"}

#: The olm servers, each run over UDP and over TCP: (label, extra ``olm up`` arguments).
#: Add e.g. ``("olm no-cache", ["--no-cache"])`` to measure a variant beside the default;
#: ``--olm-arg`` appends its arguments to every entry. The cache is sized like dnsmasq's
#: (DNSMASQ_CACHE names), so that a miss run measures insertion, not eviction.
OLM_VARIANTS: list[tuple[str, list[str]]] = [
    ("olm", ["--cache-size", "1000000", "--cache-max-bytes", str(1 << 30)])
]


@dataclass(frozen=True)
class Spec:
    """One server under test over one transport."""

    family: str  # "olm", "dnsmasq", ...: what --only also matches
    transport: str  # "udp" or "tcp"
    host: str
    port: int
    argv: list[str]
    ready_line: str | None  # a line the server prints when serving, if it prints one
    workloads: tuple[str, ...] = ("hit", "miss")

    @property
    def name(self) -> str:
        return f"{self.family} {self.transport}"


def find_binary(name: str) -> str | None:
    """``name`` on PATH or in /usr/sbin (where Debian puts dnsmasq and unbound)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def unbound_config(tmp: Path, port: int) -> Path:
    """Write an unbound.conf for a quiet, foreground caching forwarder on 127.0.0.1:``port``."""
    caches = "".join(f"    {key}: {value}\n" for key, value in UNBOUND_CACHES.items())
    path = tmp / "unbound.conf"
    path.write_text(
        "server:\n"
        "    do-daemonize: no\n"
        "    interface: 127.0.0.1\n"
        f"    port: {port}\n"
        "    access-control: 127.0.0.0/8 allow\n"
        "    do-ip4: yes\n"
        "    do-ip6: no\n"
        "    do-udp: yes\n"
        "    do-tcp: yes\n"
        '    chroot: ""\n'
        '    username: ""\n'
        f'    directory: "{tmp}"\n'
        '    pidfile: ""\n'
        "    use-syslog: no\n"
        '    logfile: ""\n'
        "    verbosity: 0\n"
        "    log-queries: no\n"
        "    log-replies: no\n"
        "    num-threads: 1\n"
        "    so-reuseport: no\n"
        # Plain forwarding: no validator (so no trust anchor to fetch), no query minimisation.
        '    module-config: "iterator"\n'
        "    qname-minimisation: no\n"
        "    prefetch: no\n"
        "    do-not-query-localhost: no\n"
        # unbound answers test. itself by default (RFC 6761 zones): NXDOMAIN for all of bench.test.
        '    local-zone: "test." nodefault\n'
        f"{caches}"
        "    msg-cache-slabs: 1\n"
        "    rrset-cache-slabs: 1\n"
        "    infra-cache-slabs: 1\n"
        "    key-cache-slabs: 1\n"
        "    num-queries-per-thread: 4096\n"
        "    outgoing-range: 8192\n"
        "    incoming-num-tcp: 100\n"
        "remote-control:\n"
        "    control-enable: no\n"
        "forward-zone:\n"
        '    name: "."\n'
        f"    forward-addr: {UPSTREAM_HOST}@{UPSTREAM_PORT}\n"
    )
    return path


def dnsmasq_argv(binary: str, port: int, extra: list[str]) -> list[str]:
    """A foreground dnsmasq on 127.0.0.1:``port`` that reads no system files, logs to stderr."""
    return [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        "--log-facility=-",
        *extra,
    ]


def build_specs(args: argparse.Namespace, tmp: Path, notes: list[str]) -> list[Spec]:
    """Every server to measure, in the order they are run."""
    python = sys.executable
    specs = [
        Spec(
            "bare",
            "udp",
            SERVICE,
            53,
            [python, str(HERE / "bare_tun_dns.py"), "--tun", TUN, "--address", SERVICE],
            "ready",
            ("hit",),
        )
    ]
    olm = [python, "-m", "olm", "up", "--tun", TUN, "--address", SERVICE]
    olm += ["--upstream", f"{UPSTREAM_HOST}:{UPSTREAM_PORT}", "--log-level", "WARNING"]
    # Local records and a blocklist for the local and blocked workloads (every olm run holds
    # them: their names are apart from the others').
    olm += ["--records-file", str(write_records(tmp)), "--state-dir", str(tmp / "state")]
    olm += ["--block-list", str(write_blocklist(tmp, args.blocklist_size))]
    for label, extra in OLM_VARIANTS:
        argv = [*olm, *extra, *args.olm_arg]
        specs += [
            Spec(label, t, SERVICE, 53, argv, "ready", ("hit", "miss", "local", "blocked"))
            for t in ("udp", "tcp")
        ]
    dnsmasq = find_binary("dnsmasq")
    if dnsmasq:
        argv = dnsmasq_argv(
            dnsmasq,
            5353,
            [
                f"--server={UPSTREAM_HOST}#{UPSTREAM_PORT}",
                f"--cache-size={args.dnsmasq_cache}",
                "--dns-forward-max=1000",
                "--max-tcp-connections=100",
            ],
        )
        specs += [Spec("dnsmasq", t, "127.0.0.1", 5353, argv, None) for t in ("udp", "tcp")]
    else:
        notes.append("dnsmasq not found: skipped")
    unbound = find_binary("unbound")
    if unbound:
        argv = [unbound, "-c", str(unbound_config(tmp, 5354))]
        specs += [Spec("unbound", t, "127.0.0.1", 5354, argv, None) for t in ("udp", "tcp")]
    else:
        notes.append("unbound not found: skipped")
    if args.only:
        known = {s.name for s in specs} | {s.family for s in specs} | {"upstream"}
        unknown = set(args.only) - known
        if unknown:
            raise SystemExit(f"--only: unknown {sorted(unknown)}; known: {sorted(known)}")
        specs = [s for s in specs if s.name in args.only or s.family in args.only]
    return [s for s in specs if set(s.workloads) & set(args.workload)]


def upstream_proc(ns: str, impl: str, tmp: Path) -> Proc:
    """Start the upstream and check its answers; raises if they are not what we promise."""
    if impl == "dnsmasq":
        binary = find_binary("dnsmasq")
        if not binary:
            raise SystemExit("--upstream-impl dnsmasq: dnsmasq not found")
        argv = dnsmasq_argv(
            binary, UPSTREAM_PORT, [f"--address=/{ZONE}/{ADDRESS}", f"--local-ttl={TTL}"]
        )
        ready = None
    else:
        argv = [sys.executable, str(HERE / "dns_upstream.py"), "--host", UPSTREAM_HOST]
        argv += ["--port", str(UPSTREAM_PORT), "--zone", ZONE, "--a", ADDRESS, "--ttl", str(TTL)]
        ready = "ready"
    proc = Proc(ns, argv, tmp / "upstream.log")
    try:
        proc.wait_ready(ns, UPSTREAM_HOST, UPSTREAM_PORT, PROBE_NAME, ready)
        for name in (f"h000.{ZONE}", f"q0000000.{ZONE}"):
            for tcp in (False, True):
                got = probe(ns, UPSTREAM_HOST, UPSTREAM_PORT, name, tcp)
                if not (got and got.status == "NOERROR" and got.answers == 1 and got.ttl == TTL):
                    raise RuntimeError(f"upstream answered {name} ({tcp=}) with {got}")
    except BaseException:
        proc.stop()
        raise
    return proc


@dataclass(frozen=True)
class Workload:
    """A dnsperf data file: ``lines`` names, read once (``once``) or over and over."""

    path: Path
    lines: int
    once: bool

    @classmethod
    def write(cls, path: Path, names: Iterator[str], once: bool) -> Workload:
        """Write one ``NAME A`` a line."""
        lines = 0
        with path.open("w") as f:
            chunk: list[str] = []
            for name in names:
                chunk.append(f"{name} A\n")
                if len(chunk) == 100_000:
                    f.write("".join(chunk))
                    lines += len(chunk)
                    chunk.clear()
            f.write("".join(chunk))
            lines += len(chunk)
        return cls(path, lines, once)


def local_names() -> Iterator[str]:
    """The local workload: a hundred names of the records file."""
    return (f"l{i:03d}.local.test" for i in range(HIT_NAMES))


def blocked_names() -> Iterator[str]:
    """The blocked workload: a hundred names on the blocklist."""
    return (f"b{i:03d}.blocked.test" for i in range(HIT_NAMES))


def write_records(tmp: Path) -> Path:
    """A records file (the Pipy JSON format) with the local workload's names."""
    path = tmp / "records.json"
    records = [{"name": n, "type": "A", "ttl": 300, "rdata": ADDRESS} for n in local_names()]
    path.write_text(json.dumps(records))
    return path


def write_blocklist(tmp: Path, size: int) -> Path:
    """A hosts-format blocklist: the blocked workload's names, then ``size`` others."""
    path = tmp / "blocklist.txt"
    with path.open("w") as f:
        f.writelines(f"0.0.0.0 {name}\n" for name in blocked_names())
        f.writelines(f"0.0.0.0 filler{i}.ads{i % 997}.example\n" for i in range(size))
    return path


def hit_names() -> Iterator[str]:
    """The hit workload: the same hundred names."""
    return (f"h{i:03d}.{ZONE}" for i in range(HIT_NAMES))


def miss_names(count: int) -> Iterator[str]:
    """The miss workload: ``count`` distinct names."""
    return (f"q{i:07d}.{ZONE}" for i in range(count))


def dnsperf(
    ns: str, host: str, port: int, mode: str, workload: Workload, seconds: float
) -> dict[str, float]:
    """Run dnsperf inside the namespace; its counts, q/s and answers other than NOERROR."""
    argv = ["ip", "netns", "exec", ns, "dnsperf", "-s", host, "-p", str(port), "-m", mode]
    argv += ["-d", str(workload.path), "-l", str(seconds), "-c", str(CLIENTS)]
    argv += ["-q", str(OUTSTANDING), "-t", str(TIMEOUT)]
    argv += ["-n", "1"] if workload.once else []
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({done.returncode}): {done.stderr or done.stdout}")
    out = done.stdout

    def grab(label: str) -> float:
        match = re.search(rf"{label}:\s+([\d.]+)", out)
        return float(match.group(1)) if match else 0.0

    codes = re.search(r"Response codes:\s+(.*)", out)
    other = sum(
        int(count)
        for code, count in re.findall(r"([A-Z]+) (\d+)", codes.group(1) if codes else "")
        if code != "NOERROR"
    )
    return {
        "qps": grab("Queries per second"),
        "sent": grab("Queries sent"),
        "completed": grab("Queries completed"),
        "lost": grab("Queries lost"),
        "run_seconds": grab(r"Run time \(s\)"),
        "not_noerror": float(other),
    }


def measure(
    ns: str,
    server: Proc,
    upstream: Proc,
    host: str,
    port: int,
    mode: str,
    workload: Workload,
    seconds: float,
) -> dict[str, float]:
    """One dnsperf run against a ready server, with the server's CPU and memory."""
    cpu0, up0 = server.cpu_seconds(), upstream.cpu_seconds()
    run = dnsperf(ns, host, port, mode, workload, seconds)
    cpu, up = server.cpu_seconds() - cpu0, upstream.cpu_seconds() - up0
    answered = max(1.0, run["completed"])
    run["cpu_us_per_query"] = cpu / answered * 1e6
    run["core_pct"] = cpu / max(0.001, run["run_seconds"]) * 100
    run["upstream_cpu_us_per_query"] = up / answered * 1e6
    run["rss_kib"] = float(server.rss_kib())
    run["exhausted"] = float(workload.once and run["sent"] >= workload.lines)
    return run


def run_server(
    ns: str, spec: Spec, workload: Workload, upstream: Proc, seconds: float, log: Path
) -> tuple[Answer, dict[str, float]]:
    """Start ``spec`` afresh, wait until it answers, measure one run, stop it."""
    server = Proc(ns, spec.argv, log)
    try:
        got = server.wait_ready(
            ns, spec.host, spec.port, PROBE_NAME, spec.ready_line, spec.transport == "tcp"
        )
        run = measure(ns, server, upstream, spec.host, spec.port, spec.transport, workload, seconds)
    finally:
        server.stop()
    return got, run


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-key medians; ``exhausted`` counts the runs that used up their names."""
    result = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    result["exhausted"] = sum(r["exhausted"] for r in runs)
    result["runs"] = len(runs)
    return result


def ratio(value: float, base: dict[str, float] | None, key: str) -> str:
    """``value / base[key]`` as ``1.23x``, or ``-`` without a base."""
    return f"{value / base[key]:.2f}x" if base and base[key] else "-"


def report(
    results: dict[str, dict[str, dict[str, float]]],
    alone: dict[str, dict[str, float]],
    specs: list[Spec],
    answers: dict[str, str],
    notes: list[str],
    args: argparse.Namespace,
) -> None:
    """Print the tables."""
    print(
        f"dnsperf -c {CLIENTS} -q {OUTSTANDING} -t {TIMEOUT}, medians of {args.rounds} x "
        f"{args.seconds:g} s; upstream: {args.upstream_impl} on {UPSTREAM_HOST}:{UPSTREAM_PORT}"
    )
    if alone:
        figures = ", ".join(
            f"{mode} {r['qps']:,.0f} q/s ({r['cpu_us_per_query']:.1f} us CPU/query)"
            for mode, r in alone.items()
        )
        print(f"upstream alone (miss workload straight at it): {figures}")
    print("answers to the readiness probe (a miss):")
    for name, text in answers.items():
        print(f"  {name:18} {text}")
    transport = {s.name: s.transport for s in specs}
    head = f"{'server':18} {'q/s':>9} {'lost':>6} {'CPU/query':>10} {'core':>5} {'RSS':>9}"
    titles = {
        "hit": f"hit: {HIT_NAMES} names asked over and over",
        "miss": "miss: every name new (a forward and a cache insertion per query)",
        "local": f"local: {HIT_NAMES} names of olm's records file (x olm's hit, same transport)",
        "blocked": f"blocked: {HIT_NAMES} names on olm's blocklist (x olm's hit, same transport)",
    }
    for workload, title in titles.items():
        rows = results.get(workload)
        if not rows:
            continue
        bare = rows.get("bare udp")
        print(f"\n{title}")
        if workload == "hit":
            print(f"{head}  {'x bare q/s':>10}  {'x bare CPU':>10}")
        elif workload in ("local", "blocked"):
            print(f"{head}  {'x olm hit':>14}  {'x olm hit':>14}")
        else:
            print(f"{head}  {'x dnsmasq q/s (same transport)':>30}")
        for name, r in rows.items():
            line = (
                f"{name:18} {r['qps']:9,.0f} {r['lost']:6.0f} {r['cpu_us_per_query']:7.1f} us "
                f"{r['core_pct']:4.0f}% {r['rss_kib'] / 1024:5.1f} MiB"
            )
            if workload == "hit":
                line += f"  {ratio(r['qps'], bare, 'qps'):>10}"
                line += f"  {ratio(r['cpu_us_per_query'], bare, 'cpu_us_per_query'):>10}"
            elif workload in ("local", "blocked"):
                hit = results.get("hit", {}).get(name)
                line += f"  {ratio(r['qps'], hit, 'qps'):>10} q/s"
                line += f"  {ratio(r['cpu_us_per_query'], hit, 'cpu_us_per_query'):>10} CPU"
            else:
                dnsmasq = rows.get(f"dnsmasq {transport.get(name)}")
                line += f"  {ratio(r['qps'], dnsmasq, 'qps'):>30}"
            if r["not_noerror"]:
                line += f"  ({r['not_noerror']:.0f} answers not NOERROR)"
            if r["exhausted"]:
                line += f"  (ran out of names in {r['exhausted']:.0f} run(s): raise --miss-names)"
            print(line)
    for note in notes:
        print(f"note: {note}")


def on_sigterm(*_: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that the namespace is deleted."""
    raise KeyboardInterrupt


def base_parser(doc: str | None, only: str) -> argparse.ArgumentParser:
    """The arguments every dnsperf benchmark takes: --seconds, --rounds, --only, --json.

    ``only`` describes what --only names.
    """
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--only", action="append", metavar="NAME", help=f"{only}; repeatable")
    parser.add_argument("--json", action="store_true")
    return parser


def script_main(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main``: exit 130 on Ctrl-C or SIGTERM, print how long it took."""
    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"(took {time.monotonic() - started:.0f} s)", file=sys.stderr)


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__, "a server ('olm udp') or family ('olm', 'upstream')")
    parser.add_argument(
        "--workload",
        action="append",
        choices=["hit", "miss", "local", "blocked"],
        help="repeatable; default all (local and blocked: olm only)",
    )
    parser.add_argument(
        "--olm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument to every `olm up` (repeatable; write --olm-arg=--no-cache)",
    )
    parser.add_argument(
        "--upstream-impl",
        choices=["python", "dnsmasq"],
        default="python",
        help="benchmarks/dns_upstream.py (default) or dnsmasq --address",
    )
    parser.add_argument(
        "--miss-names",
        type=int,
        default=2_000_000,
        help="unique names in the miss file (default 2,000,000)",
    )
    parser.add_argument(
        "--dnsmasq-cache",
        type=int,
        default=DNSMASQ_CACHE,
        help=f"dnsmasq --cache-size (default {DNSMASQ_CACHE:,}: more than a miss run inserts)",
    )
    parser.add_argument(
        "--blocklist-size",
        type=int,
        default=1_000_000,
        help="names on olm's blocklist besides the blocked workload's (default 1,000,000)",
    )
    args = parser.parse_args()
    args.workload = args.workload or ["hit", "miss", "local", "blocked"]
    return args


def progress(round_no: int, what: str, run: dict[str, float]) -> None:
    """One line per run on stderr, so that a long benchmark shows it is alive."""
    print(
        f"round {round_no}: {what}: {run['qps']:,.0f} q/s, {run['cpu_us_per_query']:.1f} us/query",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    args = parse_args()
    if not shutil.which("dnsperf") or not shutil.which("dig"):
        raise SystemExit("needs dnsperf and dig (apt-get install dnsperf bind9-dnsutils)")
    notes: list[str] = []
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        w: {} for w in ("hit", "miss", "local", "blocked")
    }
    alone_samples: dict[str, list[dict[str, float]]] = {}
    answers: dict[str, str] = {}
    failed: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="dns_qps-") as tmpdir:
        tmp = Path(tmpdir)
        specs = build_specs(args, tmp, notes)
        run_alone = "miss" in args.workload and (not args.only or "upstream" in args.only)
        workloads = {
            "hit": Workload.write(tmp / "hit.txt", hit_names(), once=False),
            "local": Workload.write(tmp / "local.txt", local_names(), once=False),
            "blocked": Workload.write(tmp / "blocked.txt", blocked_names(), once=False),
        }
        if "miss" in args.workload:
            names = miss_names(args.miss_names)
            workloads["miss"] = Workload.write(tmp / "miss.txt", names, once=True)
            # The upstream keeps nothing: for it the names may wrap around (the fastest would
            # otherwise use up the file before the time is over).
            alone_load = dataclasses.replace(workloads["miss"], once=False)
        with namespace("dnsqps") as ns:
            upstream = upstream_proc(ns, args.upstream_impl, tmp)
            try:
                answers["upstream"] = str(probe(ns, UPSTREAM_HOST, UPSTREAM_PORT, PROBE_NAME))
                for round_no in range(1, args.rounds + 1):
                    for mode in ("udp", "tcp") if run_alone else ():
                        run = measure(
                            ns,
                            upstream,
                            upstream,
                            UPSTREAM_HOST,
                            UPSTREAM_PORT,
                            mode,
                            alone_load,
                            args.seconds,
                        )
                        alone_samples.setdefault(mode, []).append(run)
                        progress(round_no, f"upstream alone {mode}", run)
                    for spec in specs:
                        for workload in spec.workloads:
                            if workload not in args.workload or spec.name in failed:
                                continue
                            log = tmp / f"{spec.family}-{spec.transport}-{workload}.log"
                            try:
                                got, run = run_server(
                                    ns, spec, workloads[workload], upstream, args.seconds, log
                                )
                            except RuntimeError as exc:
                                failed.add(spec.name)
                                notes.append(f"{spec.name} ({workload}) failed: {exc}")
                                continue
                            answers.setdefault(spec.name, str(got))
                            samples[workload].setdefault(spec.name, []).append(run)
                            progress(round_no, f"{spec.name} {workload}", run)
            finally:
                upstream.stop()
    results = {
        w: {name: median_of(runs) for name, runs in by_name.items()}
        for w, by_name in samples.items()
    }
    alone = {mode: median_of(runs) for mode, runs in alone_samples.items()}
    if not args.json:
        report(results, alone, specs, answers, notes, args)
        return
    settings = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "clients": CLIENTS,
        "outstanding": OUTSTANDING,
        "upstream": args.upstream_impl,
        "olm_variants": OLM_VARIANTS,
        "olm_args": args.olm_arg,
        "miss_names": args.miss_names,
        "dnsmasq_cache": args.dnsmasq_cache,
    }
    document = {
        "settings": settings,
        "upstream_alone": alone,
        "results": results,
        "answers": answers,
        "notes": notes,
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    script_main(main)
