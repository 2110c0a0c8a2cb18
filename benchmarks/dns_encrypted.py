"""Encrypted upstreams: olm serve forwarding over UDP, DoT and DoH beside dnsdist, one run.

    sudo .venv/bin/python benchmarks/dns_encrypted.py [--seconds 10] [--rounds 3] [--only NAME]...
        [--latency-queries N] [--miss-names N] [--json]

What runs
    Everything runs in one network namespace the script creates and always deletes (also on a
    failure, Ctrl-C or SIGTERM), on its loopback only: there is no route out. One upstream serves
    the whole run: Debian's unbound on 127.0.0.1 (two threads, verbosity 0), answering every name
    under ``bench.test`` with one A record (192.0.2.10, TTL 300) from local data (``local-zone:
    redirect``) over plain UDP and TCP (port 5300), DoT (8853) and DoH (8443, HTTP/2). Its
    certificate, for ``dns.test`` and 127.0.0.1, is issued by a throwaway ``trustme`` CA written
    into the run's temporary directory. Its answers over all four transports are checked before
    anything is measured. The servers under test, one at a time, each started afresh for every
    run and stopped by its PID afterwards, all asked over plain UDP:

    * ``olm udp``: ``python -m olm serve`` on 127.0.0.1:5355 with ``--upstream udp://...:5300``;
    * ``olm dot`` / ``olm doh``: the same with a settings file naming the upstream as a table
      (``tls://127.0.0.1:8853`` or ``https://127.0.0.1:8443/dns-query``, with ``server_name`` and
      ``ca_file``: the certificate is verified). Every olm has a cache sized like dns_qps.py's
      (1,000,000 names, 1 GiB), larger than a run inserts, and ``--stats``: error counters it
      prints on exit are reported as notes;
    * ``dnsdist dot``: Debian's dnsdist on 127.0.0.1:5354 (foreground, ``--supervised``, no
      console, no packet cache, security polling off) forwarding to the same DoT port with the
      certificate verified; ``maxInFlight=100`` lets it pipeline queries on its DoT connections,
      as olm does; ``dnsdist dot-serial``: dnsdist's default, one query at a time per DoT
      connection (it opens more connections instead);
    * ``direct udp`` / ``dot`` / ``doh``: unbound itself, asked over that transport (the ceiling
      of what a forwarder over that leg can reach; it is not restarted).

    A server whose binary is missing is skipped with a note; one that fails (does not start,
    does not answer, dnsperf fails) is reported as failed with its output, and the run goes on.

Workloads
    Throughput: dns_qps.py's miss workload, every query a name never asked before
    (``q0000000.bench.test`` on, read once with ``-n 1``; the server is restarted every run), so
    every query is forwarded and its answer inserted into olm's cache; dnsperf with 10 clients
    and 100 queries outstanding, over UDP (the direct rows over their own transport; for them the
    names may wrap around: unbound keeps no cache of its local data). Latency: before each
    throughput run, ``--latency-queries`` (300) sequential queries, one at a time, each a name
    never asked before (``t0000000.bench.test`` on), from a small Python client inside the
    namespace (this script again): a socket per client, the connection (DoT: TLS, DoH: HTTP/2 via
    httpx) opened and warmed by five untimed queries first.

What is reported
    Per server, medians over ``--rounds`` runs of ``--seconds`` each:

    * q/s: dnsperf's queries per second; lost: queries that got no answer within 2 s;
    * CPU/query: the server's user + system CPU time during the run (/proc/PID/stat, children
      included) per answered query; core: that CPU time as a share of one core; unbound/query:
      unbound's CPU per answered query during the same run (what the leg costs the upstream);
    * x olm udp, x dnsdist: q/s as a multiple of olm's over the UDP leg and of ``dnsdist dot``;
    * latency p50 and p90 in microseconds over the sequential queries of a run; added: p50 minus
      the p50 of ``direct udp``. For the UDP leg that is the latency the forwarder adds; for the
      DoT and DoH legs it is the latency added by the forwarder and by the encrypted leg
      together (the direct dot/doh rows show what the encrypted leg alone costs over plain).

Reading it
    The machine has 2 cores shared by dnsperf, the server and unbound, so a figure near the
    direct rate says "limited by the harness". The direct DoH latency is measured with httpx, a
    heavier client than the socket clients of the other rows: its own cost is in that figure.
    Light-load latencies of tens of microseconds are mostly wakeups: on this shared VM the direct
    udp p50 ranged from 18 to 105 us between runs, so compare the rows of one run, and read
    "added" to within about 100 us.

    Figures of full runs are in docs/performance.md (encrypted upstreams). The first run, with
    DoH through httpx and one datagram per event-loop turn in olm serve's UDP frontend, gave olm
    doh 500 q/s at about 2 ms CPU per query; the h2 transport and the batched frontend took it
    to about 5,500 q/s and 180 us. unbound's CPU per query is higher behind a slow forwarder: at
    a low rate it does not batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trustme
from dns_procs import Proc, probe
from dns_qps import (
    ADDRESS,
    CLIENTS,
    DNSMASQ_CACHE,
    OUTSTANDING,
    PROBE_NAME,
    TIMEOUT,
    TTL,
    ZONE,
    Workload,
    base_parser,
    find_binary,
    measure,
    median_of,
    miss_names,
    progress,
    ratio,
    script_main,
)

from netns import env, namespace

HOST = "127.0.0.1"
#: unbound's ports, by the transport a client uses to reach it.
UPSTREAM_PORTS = {"udp": 5300, "dot": 8853, "doh": 8443}
DOH_PATH = "/dns-query"
OLM_PORT = 5355
DNSDIST_PORT = 5354
SERVER_NAME = "dns.test"  # in unbound's certificate, with HOST
HEALTH_NAME = f"health.{ZONE}"  # dnsdist's health check (it would ask a root server otherwise)
OLM_CACHE_SIZE = DNSMASQ_CACHE  # names: as dns_qps.py sizes every cache under test
OLM_CACHE_BYTES = 1 << 30
UNBOUND_THREADS = 2
WARMUP = 5  # untimed queries before a latency run
CLIENT_COMMAND = "--latency-client"  # argv[1] that makes this script the latency client


@dataclass(frozen=True)
class Spec:
    """One server under test: its name, how it reaches unbound, where it answers."""

    family: str  # "olm", "dnsdist", "direct": what --only also matches
    variant: str  # "udp", "dot", "doh", "dot-serial"
    leg: str  # how it reaches unbound: "udp", "dot" or "doh"
    port: int
    argv: list[str] | None  # None: unbound itself, asked over ``leg``
    ready_line: str | None = None

    @property
    def name(self) -> str:
        return f"{self.family} {self.variant}"

    @property
    def mode(self) -> str:
        """The transport clients use to ask it (dnsperf's -m, the latency client's mode)."""
        return self.leg if self.argv is None else "udp"


@dataclass(frozen=True)
class Pki:
    """The test CA's certificate and unbound's certificate and key, as files."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def issue(cls, directory: Path) -> Pki:
        """A new CA and a certificate for SERVER_NAME and HOST signed by it."""
        ca = trustme.CA()
        issued = ca.issue_cert(SERVER_NAME, HOST)
        pki = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        ca.cert_pem.write_to_path(str(pki.ca))
        issued.cert_chain_pems[0].write_to_path(str(pki.cert))
        issued.private_key_pem.write_to_path(str(pki.key))
        return pki


# -- the latency client (runs inside the namespace) ---------------------------------------------


def query_wire(name: str, qid: int) -> bytes:
    """A recursive A query for ``name`` without EDNS."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!2H", 1, 1)


def answered(reply: bytes, qid: int) -> bool:
    """Whether ``reply`` answers query ``qid`` with NOERROR and the zone's address."""
    if len(reply) < 12:
        return False
    rid, flags, _, ancount = struct.unpack("!4H", reply[:8])
    return rid == qid and flags & 0xF == 0 and ancount > 0 and socket.inet_aton(ADDRESS) in reply


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from a stream socket."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


class Asker:
    """Asks one question at a time over one transport; keeps its connection open."""

    def __init__(
        self, mode: str, host: str, port: int, ca_file: str | None, timeout: float
    ) -> None:
        self.mode = mode
        context = ssl.create_default_context(cafile=ca_file)
        if mode == "doh":
            import httpx

            self.url = f"https://{host}:{port}{DOH_PATH}"
            self.http = httpx.Client(http2=True, verify=context, timeout=timeout)
        elif mode == "dot":
            raw = socket.create_connection((host, port), timeout)
            self.sock: socket.socket = context.wrap_socket(raw, server_hostname=SERVER_NAME)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.connect((host, port))
            self.sock.settimeout(timeout)

    def ask(self, wire: bytes) -> bytes:
        """Send one query and wait for its reply (raises on timeout)."""
        if self.mode == "doh":
            kind = "application/dns-message"
            headers = {"content-type": kind, "accept": kind}
            return self.http.post(self.url, content=wire, headers=headers).content
        if self.mode == "dot":
            self.sock.sendall(struct.pack("!H", len(wire)) + wire)
            return recv_exactly(self.sock, struct.unpack("!H", recv_exactly(self.sock, 2))[0])
        self.sock.send(wire)
        while True:  # a late reply to an earlier query is skipped
            reply = self.sock.recv(4096)
            if reply[:2] == wire[:2]:
                return reply


def latency_client(argv: list[str]) -> None:
    """Ask ``count`` new names one at a time; print the latencies (us) and failures as JSON."""
    parser = argparse.ArgumentParser(prog=f"dns_encrypted.py {CLIENT_COMMAND}")
    parser.add_argument("mode", choices=["udp", "dot", "doh"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("first", type=int, help="the number of the first name")
    parser.add_argument("count", type=int)
    parser.add_argument("--ca-file")
    parser.add_argument("--timeout", type=float, default=TIMEOUT)
    args = parser.parse_args(argv)
    asker = Asker(args.mode, args.host, args.port, args.ca_file, args.timeout)
    latencies: list[float] = []
    failed = 0
    for i in range(args.first, args.first + WARMUP + args.count):
        qid = random.randrange(1 << 16)
        wire = query_wire(f"t{i:07d}.{ZONE}", qid)
        started = time.perf_counter_ns()
        try:
            reply = asker.ask(wire)
        except Exception:  # timed out, refused, closed, HTTP error: a failed query
            reply = b""
        elapsed = (time.perf_counter_ns() - started) / 1000
        if i < args.first + WARMUP:
            continue
        if answered(reply, qid):
            latencies.append(elapsed)
        else:
            failed += 1
    print(json.dumps({"us": latencies, "failed": failed}))


def latency(
    ns: str, mode: str, port: int, first: int, count: int, ca_file: Path
) -> dict[str, float]:
    """Run the latency client in ``ns`` against HOST:``port``; p50, p90 (us) and failures."""
    argv = ["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve())]
    argv += [
        CLIENT_COMMAND,
        mode,
        HOST,
        str(port),
        str(first),
        str(count),
        "--ca-file",
        str(ca_file),
    ]
    limit = (WARMUP + count) * (TIMEOUT + 1) + 30
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, env=env())
    if done.returncode != 0:
        raise RuntimeError(f"latency client failed ({done.returncode}): {done.stderr[-2000:]}")
    got = json.loads(done.stdout)
    us: list[float] = got["us"]
    if len(us) < 2:
        raise RuntimeError(f"latency client: {got['failed']} of {count} queries unanswered")
    return {
        "lat_p50_us": statistics.median(us),
        "lat_p90_us": statistics.quantiles(us, n=10)[-1],
        "lat_failed": float(got["failed"]),
    }


# -- the upstream and the servers under test ----------------------------------------------------


def unbound_config(tmp: Path, pki: Pki) -> Path:
    """Write an unbound.conf: the zone's wildcard answer over UDP/TCP, DoT and DoH on HOST."""
    settings = [
        *(("interface", f"{HOST}@{port}") for port in UPSTREAM_PORTS.values()),
        ("tls-port", UPSTREAM_PORTS["dot"]),
        ("https-port", UPSTREAM_PORTS["doh"]),
        ("http-endpoint", f'"{DOH_PATH}"'),
        ("tls-service-pem", f'"{pki.cert}"'),
        ("tls-service-key", f'"{pki.key}"'),
        ("access-control", "127.0.0.0/8 allow"),
        ("do-ip6", "no"),
        ("do-daemonize", "no"),
        ("chroot", '""'),
        ("username", '""'),
        ("directory", f'"{tmp}"'),
        ("pidfile", '""'),
        ("use-syslog", "no"),
        ("logfile", '""'),
        ("verbosity", 0),
        ("num-threads", UNBOUND_THREADS),
        ("so-reuseport", "yes"),
        ("num-queries-per-thread", 4096),
        ("incoming-num-tcp", 256),
        ("module-config", '"iterator"'),
        # Any name under the zone gets the zone's own record, with the name asked as its owner.
        ("local-zone", f'"{ZONE}." redirect'),
        ("local-data", f'"{ZONE}. {TTL} IN A {ADDRESS}"'),
    ]
    path = tmp / "unbound.conf"
    lines = ["server:", *(f"    {key}: {value}" for key, value in settings)]
    path.write_text("\n".join([*lines, "remote-control:", "    control-enable: no", ""]))
    return path


def start_unbound(ns: str, binary: str, tmp: Path, pki: Pki) -> Proc:
    """Start unbound and check it answers as promised on every port; raises if it does not."""
    proc = Proc(ns, [binary, "-c", str(unbound_config(tmp, pki))], tmp / "unbound.log")
    try:
        proc.wait_ready(ns, HOST, UPSTREAM_PORTS["udp"], PROBE_NAME)
        names = [f"q0000000.{ZONE}", f"deeper.name.{ZONE}"]
        checks = [(name, tcp) for name in names for tcp in (False, True)]
        expected = ("NOERROR", 1, ADDRESS, TTL)
        for name, tcp in checks:
            got = probe(ns, HOST, UPSTREAM_PORTS["udp"], name, tcp)
            if not got or (got.status, got.answers, got.address, got.ttl) != expected:
                raise RuntimeError(f"unbound answered {name} ({tcp=}) with {got}")
        for mode in ("dot", "doh"):  # the certificate checked, as the forwarders will
            if latency(ns, mode, UPSTREAM_PORTS[mode], 9_000_000, 2, pki.ca)["lat_failed"]:
                raise RuntimeError(f"unbound left queries over {mode} unanswered")
    except BaseException:
        proc.stop()
        raise
    return proc


def olm_config(tmp: Path, pki: Pki, leg: str) -> Path:
    """A settings file: the cache, and for an encrypted leg the upstream as a table."""
    urls = {
        "dot": f"tls://{HOST}:{UPSTREAM_PORTS['dot']}",
        "doh": f"https://{HOST}:{UPSTREAM_PORTS['doh']}{DOH_PATH}",
    }
    lines = []
    if leg in urls:
        table = f'url = "{urls[leg]}", server_name = "{SERVER_NAME}", ca_file = "{pki.ca}"'
        lines.append(f"upstreams = [{{ {table} }}]")
    lines += ["[cache]", f"size = {OLM_CACHE_SIZE}", f"max_bytes = {OLM_CACHE_BYTES}"]
    path = tmp / f"olm-{leg}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def dnsdist_config(tmp: Path, pki: Pki, pipelined: bool) -> Path:
    """A dnsdist configuration: UDP/TCP on DNSDIST_PORT, unbound's DoT port as the backend."""
    fields = [
        f'address="{HOST}:{UPSTREAM_PORTS["dot"]}"',
        'tls="openssl"',
        f'subjectName="{SERVER_NAME}"',
        f'caStore="{pki.ca}"',
        "validateCertificates=true",
        f'checkName="{HEALTH_NAME}."',
        *([f"maxInFlight={OUTSTANDING}"] if pipelined else []),
    ]
    path = tmp / f"dnsdist-{'pipelined' if pipelined else 'serial'}.conf"
    path.write_text(
        f'setLocal("{HOST}:{DNSDIST_PORT}")\n'
        # No security-status queries: they would go to the system's resolver.
        'setSecurityPollSuffix("")\n'
        f"newServer{{{', '.join(fields)}}}\n"
    )
    return path


def build_specs(args: argparse.Namespace, tmp: Path, pki: Pki, notes: list[str]) -> list[Spec]:
    """Every server to measure, in the order they are run."""
    specs = [Spec("direct", leg, leg, port, None) for leg, port in UPSTREAM_PORTS.items()]
    olm = [sys.executable, "-m", "olm", "serve", "--listen", f"{HOST}:{OLM_PORT}", "--stats"]
    olm += ["--log-level", "WARNING"]
    for leg in UPSTREAM_PORTS:
        argv = [*olm, "--config", str(olm_config(tmp, pki, leg))]
        if leg == "udp":
            argv += ["--upstream", f"udp://{HOST}:{UPSTREAM_PORTS['udp']}"]
        specs.append(Spec("olm", leg, leg, OLM_PORT, argv, "olm: ready"))
    dnsdist = find_binary("dnsdist")
    if dnsdist:
        for variant, pipelined in (("dot", True), ("dot-serial", False)):
            conf = dnsdist_config(tmp, pki, pipelined)
            argv = [dnsdist, "--supervised", "--disable-syslog", "-C", str(conf)]
            specs.append(Spec("dnsdist", variant, "dot", DNSDIST_PORT, argv))
    else:
        notes.append("dnsdist not found: skipped")
    if args.only:
        known = {s.name for s in specs} | {s.family for s in specs}
        unknown = set(args.only) - known
        if unknown:
            raise SystemExit(f"--only: unknown {sorted(unknown)}; known: {sorted(known)}")
        specs = [s for s in specs if s.name in args.only or s.family in args.only]
    return specs


def trouble(proc: Proc) -> list[str]:
    """The warnings, errors and non-zero error counters (``--stats``) a server printed."""
    text = proc.output(1_000_000)
    lines = re.findall(r"^.*\b(?:WARNING|ERROR|CRITICAL|Traceback)\b.*$", text, re.MULTILINE)
    counters = re.findall(
        r"^\S*(?:error|fail|timeout|lost|drop)\S* [1-9]\d*$", text, re.MULTILINE | re.IGNORECASE
    )
    return lines[:5] + [line for line in counters if "NOERROR" not in line]


class Runner:
    """Runs the servers in a namespace against one unbound; numbers the latency names."""

    def __init__(self, ns: str, upstream: Proc, pki: Pki, args: argparse.Namespace) -> None:
        self.ns, self.upstream, self.pki, self.args = ns, upstream, pki, args
        self.next_name = 0

    def latency(self, spec: Spec) -> dict[str, float]:
        """A latency run against ``spec`` with names never asked before."""
        count = self.args.latency_queries
        first, self.next_name = self.next_name, self.next_name + WARMUP + count
        return latency(self.ns, spec.mode, spec.port, first, count, self.pki.ca)

    def run(
        self, spec: Spec, workload: Workload, log: Path
    ) -> tuple[str, dict[str, float], list[str]]:
        """Start ``spec`` afresh (unless it is unbound), measure latency then q/s, stop it.

        Returns the answer to the readiness probe, the figures and the trouble it printed.
        """
        server = None if spec.argv is None else Proc(self.ns, spec.argv, log)
        try:
            if server is None:
                ready = probe(self.ns, HOST, UPSTREAM_PORTS["udp"], PROBE_NAME)
            else:
                ready = server.wait_ready(self.ns, HOST, spec.port, PROBE_NAME, spec.ready_line)
            lat = self.latency(spec)
            run = measure(
                self.ns,
                server or self.upstream,
                self.upstream,
                HOST,
                spec.port,
                spec.mode,
                workload,
                self.args.seconds,
            )
        finally:
            if server is not None:
                server.stop()
        return str(ready), {**run, **lat}, trouble(server) if server else []


# -- the report ---------------------------------------------------------------------------------


def report(
    results: dict[str, dict[str, float]],
    answers: dict[str, str],
    versions: dict[str, str],
    notes: list[str],
    args: argparse.Namespace,
) -> None:
    """Print the tables."""
    print(
        f"dnsperf -c {CLIENTS} -q {OUTSTANDING} -t {TIMEOUT}, every name new, medians of "
        f"{args.rounds} x {args.seconds:g} s; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    print(
        f"unbound on {HOST}: " + ", ".join(f"{leg} {port}" for leg, port in UPSTREAM_PORTS.items())
    )
    print("answers to the readiness probe:")
    for name, text in answers.items():
        print(f"  {name:18} {text}")
    olm_udp, dnsdist = results.get("olm udp"), results.get("dnsdist dot")
    print("\nthroughput (forwarders asked over UDP, direct rows over their own transport)")
    print(
        f"{'server':18} {'q/s':>9} {'lost':>6} {'CPU/query':>10} {'core':>5} {'RSS':>9}"
        f" {'unbound/query':>13} {'x olm udp':>9} {'x dnsdist':>9}"
    )
    for name, r in results.items():
        line = (
            f"{name:18} {r['qps']:9,.0f} {r['lost']:6.0f} {r['cpu_us_per_query']:7.1f} us "
            f"{r['core_pct']:4.0f}% {r['rss_kib'] / 1024:5.1f} MiB"
            f" {r['upstream_cpu_us_per_query']:10.1f} us"
            f" {ratio(r['qps'], olm_udp, 'qps'):>9} {ratio(r['qps'], dnsdist, 'qps'):>9}"
        )
        if r["not_noerror"]:
            line += f"  ({r['not_noerror']:.0f} answers not NOERROR)"
        if r["exhausted"]:
            line += f"  (ran out of names in {r['exhausted']:.0f} run(s): raise --miss-names)"
        print(line)
    direct = results.get("direct udp")
    print(
        f"\nlatency ({args.latency_queries} sequential queries a run, one at a time; "
        "added: p50 minus direct udp's p50,\n"
        "for the dot/doh rows the forwarder and the encrypted leg together)"
    )
    print(f"{'server':18} {'p50':>9} {'p90':>9} {'added':>9} {'failed':>6}")
    for name, r in results.items():
        added = f"{r['lat_p50_us'] - direct['lat_p50_us']:+6.0f} us" if direct else "-"
        print(
            f"{name:18} {r['lat_p50_us']:6.0f} us {r['lat_p90_us']:6.0f} us {added:>9}"
            f" {r['lat_failed']:6.0f}"
        )
    for note in notes:
        print(f"note: {note}")


def version(argv: list[str]) -> str:
    """The first version number a command prints, or '?'."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    found = re.search(r"\d+\.\d+(?:\.\d+)?", out)
    return found.group(0) if found else "?"


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__, "a server ('olm dot') or family ('olm', 'dnsdist', 'direct')")
    parser.add_argument(
        "--latency-queries",
        type=int,
        default=300,
        help="sequential queries of a latency run (default 300, at least 10)",
    )
    parser.add_argument(
        "--miss-names",
        type=int,
        default=2_000_000,
        help="unique names in the throughput file (default 2,000,000)",
    )
    args = parser.parse_args()
    if args.latency_queries < 10:
        parser.error("--latency-queries: at least 10")
    return args


def main() -> None:
    args = parse_args()
    if not shutil.which("dnsperf") or not shutil.which("dig"):
        raise SystemExit("needs dnsperf and dig (apt-get install dnsperf bind9-dnsutils)")
    unbound = find_binary("unbound")
    if not unbound:
        raise SystemExit("needs unbound (apt-get install unbound)")
    notes: list[str] = []
    samples: dict[str, list[dict[str, float]]] = {}
    answers: dict[str, str] = {}
    failed: set[str] = set()
    versions = {"unbound": version([unbound, "-V"]), "dnsperf": version(["dnsperf", "-h"])}
    dnsdist = find_binary("dnsdist")
    if dnsdist:
        versions["dnsdist"] = version([dnsdist, "--version"])
    with tempfile.TemporaryDirectory(prefix="dns_encrypted-") as tmpdir:
        tmp = Path(tmpdir)
        pki = Pki.issue(tmp)
        specs = build_specs(args, tmp, pki, notes)
        once = Workload.write(tmp / "miss.txt", miss_names(args.miss_names), once=True)
        # unbound keeps nothing of its local data: for it the names may wrap around.
        wrapping = dataclasses.replace(once, once=False)
        with namespace("dnsenc") as ns:
            upstream = start_unbound(ns, unbound, tmp, pki)
            runner = Runner(ns, upstream, pki, args)
            try:
                for round_no in range(1, args.rounds + 1):
                    for spec in specs:
                        if spec.name in failed:
                            continue
                        log = tmp / f"{spec.family}-{spec.variant}-{round_no}.log"
                        workload = wrapping if spec.argv is None else once
                        try:
                            got, run, printed = runner.run(spec, workload, log)
                        except (RuntimeError, subprocess.TimeoutExpired) as exc:
                            failed.add(spec.name)
                            notes.append(f"{spec.name} failed: {exc}")
                            continue
                        answers.setdefault(spec.name, got)
                        samples.setdefault(spec.name, []).append(run)
                        notes += [f"{spec.name}: {line}" for line in printed]
                        what = f"{spec.name} (p50 {run['lat_p50_us']:.0f} us)"
                        progress(round_no, what, run)
            finally:
                upstream.stop()
    results = {name: median_of(runs) for name, runs in samples.items()}
    notes = list(dict.fromkeys(notes))
    if not args.json:
        report(results, answers, versions, notes, args)
        return
    settings = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "clients": CLIENTS,
        "outstanding": OUTSTANDING,
        "latency_queries": args.latency_queries,
        "miss_names": args.miss_names,
        "upstream_ports": UPSTREAM_PORTS,
        "versions": versions,
        "servers": {s.name: s.argv for s in specs},
    }
    document = {"settings": settings, "results": results, "answers": answers, "notes": notes}
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == [CLIENT_COMMAND]:
        latency_client(sys.argv[2:])
        sys.exit(0)
    script_main(main)
