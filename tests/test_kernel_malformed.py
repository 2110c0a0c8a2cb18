"""Hostile input against a running ``olm up`` over a real TUN, each test in its own namespace.

Malformed IP, UDP, TCP and ICMP packets are written onto the TUN with an AF_PACKET socket by
tests/hostile_packets.py (so the kernel rewrites no checksum or length), hostile DNS messages
are sent with the kernel's sockets by tests/hostile_dns.py. After each kind, dig still gets the
right answers over UDP and TCP, every packet is accounted for in olm's counters (``--stats``)
as dropped for the right reason or answered as RFC 8906 says, and olm's memory stays bounded
through floods of SYNs, UDP datagrams and incomplete fragments.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netstack.stack import StackOptions

from hostile_dns import CASES, FORMERR, NOTIMP
from netns import NetNS, python_env, require_tool, skip_or_fail
from olmproc import OlmProcess, counters_from
from test_kernel_dns import short, start_upstream

pytestmark = pytest.mark.privileged

TUN = "olmhost0"
V4 = "10.30.30.30"
V6 = "fd30:30:30::30"
HOSTILE_PACKETS = str(Path(__file__).with_name("hostile_packets.py"))
HOSTILE_DNS = str(Path(__file__).with_name("hostile_dns.py"))
RSS_GROWTH_LIMIT_KB = 60 * 1024
#: The listener's backlog: olm up listens with tcp_max_connections (default 64).
BACKLOG = 64


class Olm:
    """``olm up --stats`` on a TUN in ``ns``, with an upstream, and ways to attack it."""

    def __init__(self, ns: NetNS) -> None:
        self.ns = ns
        start_upstream(ns, 5300)
        self.up = OlmProcess(ns, ["up", "--tun", TUN, "--stats", "--upstream", "127.0.0.1:5300"])
        # Room for a whole flood in the TUN's queue, so every packet reaches olm and can be
        # accounted for (the default, 500, would drop most of a burst in the kernel).
        ns.run(["ip", "link", "set", TUN, "txqueuelen", "20000"])
        self.udp_digs = 0
        self.tcp_digs = 0

    def hostile(self, *kinds: str) -> dict[str, dict[str, int]]:
        """Run hostile_packets.py for ``kinds``; return what it sent and was answered."""
        done = self.ns.run(
            [sys.executable, HOSTILE_PACKETS, "--iface", TUN, *kinds],
            env=python_env(),
            timeout=120,
        )
        result: dict[str, dict[str, int]] = json.loads(done.stdout)
        return result

    def hostile_background(self, *kinds: str) -> subprocess.Popen[str]:
        """Start hostile_packets.py for ``kinds`` without waiting for it."""
        return self.ns.popen(
            [sys.executable, HOSTILE_PACKETS, "--iface", TUN, *kinds],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )

    def still_answers(self, wait: int = 3) -> None:
        """dig over UDP and TCP (IPv4) and UDP (IPv6) gets the zone's answers."""
        time_ = f"+time={wait}"
        assert short(self.ns, time_, f"@{V4}", "example.test", "A") == ["192.0.2.10"]
        assert short(self.ns, time_, "+tcp", f"@{V4}", "example.test", "A") == ["192.0.2.10"]
        assert short(self.ns, time_, f"@{V6}", "example.test", "AAAA") == ["2001:db8::10"]
        self.udp_digs += 2
        self.tcp_digs += 1

    def rss_kb(self) -> int:
        """olm's resident set size (VmRSS in /proc/PID/status), in kB."""
        # `ip netns exec` execs the command: the PID we started is olm's Python.
        for line in Path(f"/proc/{self.up.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def tun_tx_dropped(self) -> int:
        """Packets the kernel dropped on their way into the TUN (its transmit side)."""
        out = self.ns.run(["ip", "-s", "-j", "link", "show", TUN]).stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["dropped"])

    def stop(self) -> dict[str, int]:
        """Stop olm; check it exited cleanly without a traceback; return its counters."""
        code, _, err = self.up.stop()
        assert code == 0, err
        assert "Traceback" not in err, err
        counters = counters_from(err)
        # Nothing hostile may reach an unexpected failure path.
        assert counters.get("dns.internal_error", 0) == 0
        assert counters.get("dns.tcp.handler_error", 0) == 0
        return counters


def served(counters: dict[str, int]) -> int:
    """Queries answered with data: by an upstream, or by the cache (hit, or a shared flight)."""
    return sum(
        counters.get(name, 0)
        for name in ("dns.upstream.answers", "dns.cache.hit", "dns.cache.coalesced")
    )


@pytest.fixture
def olm(netns: NetNS) -> Iterator[Olm]:
    require_tool("dig")
    import importlib.util

    if importlib.util.find_spec("scapy") is None:
        skip_or_fail("needs scapy (a test dependency: ./scripts/test installs it)")
    running = Olm(netns)
    yield running
    if running.up.proc.poll() is None:
        running.up.stop()


#: kind -> (DNS replies the script must get back, counters that must read exactly so).
#: Each malformed packet is dropped and counted under the layer and reason that rejected it;
#: the well-formed ones among them (padding after the datagram, understood or skippable
#: options, tiny fragments) are answered.
PACKET_KINDS: dict[str, tuple[int, dict[str, int]]] = {
    "good": (2, {"udp.malformed.bad_checksum": 0, "ipv4.malformed.bad_checksum": 0}),
    "checksums": (
        0,
        {
            "ipv4.malformed.bad_checksum": 1,  # RFC 791 section 3.1
            "udp.malformed.bad_checksum": 1,  # RFC 768
            "udp.malformed.zero_checksum": 1,  # RFC 8200 section 8.1
            "tcp.segments.bad_checksum": 1,  # RFC 9293 section 3.1
            "icmpv4.malformed.bad_checksum": 1,  # RFC 792
            "icmpv4.out.echo_reply": 0,
        },
    ),
    "truncated": (
        0,
        {
            "filter.malformed.short_ipv4": 1,
            "filter.malformed.short_ipv6": 1,
            "ipv4.malformed.bad_header_length": 1,
            "udp.malformed.truncated": 3,
            "tcp.malformed.truncated": 1,
        },
    ),
    "lengths": (
        2,
        {
            "ipv4.malformed.bad_total_length": 2,
            "ipv6.malformed.bad_length": 1,
            "udp.malformed.bad_length": 1,
        },
    ),
    "ip_options": (
        3,
        {
            "ipv4.malformed.bad_option": 1,
            "ipv6.unknown_option": 2,  # one skipped (action 00), one discarded (action 10)
            "ipv6.routing_header_dropped": 1,  # RFC 8200 section 4.4
            "ipv6.malformed.hop_by_hop_not_first": 1,  # RFC 8200 section 4.1
            "ipv6.malformed.too_many_extension_headers": 1,
            "icmpv6.out.parameter_problem": 3,  # action 10, routing header, misplaced HBH
        },
    ),
    "fragments": (
        2,
        {
            "ipv4.reassembly.reassembled": 1,
            "ipv6.reassembly.reassembled": 1,
            "ipv4.reassembly.overlaps": 1,  # RFC 5722 for IPv6; dropped whole for IPv4 too
            "ipv6.reassembly.overlaps": 1,
        },
    ),
    "tcp_flags": (
        0,
        {
            "tcp.listen.dropped": 3,  # null, FIN alone, FIN+PSH+URG: no SYN, no ACK
            "tcp.listen.rst_ignored": 1,  # Xmas has RST: RFC 9293 3.10.7.2 ignores it
            "tcp.listen.bad_ack": 1,  # data with ACK before any handshake: answered by RST
            "tcp.listen.syn_fin_dropped": 1,  # SYN+FIN: a scanner's probe, dropped like Linux
        },
    ),
    "rst_attack": (
        1,
        {
            "tcp.rst.out_of_window": 1,  # RFC 9293 section 3.10.7.4
            "tcp.rst.challenged": 1,  # RFC 5961 section 3.2
            "tcp.syn.challenged": 1,  # RFC 5961 section 4.2
            "tcp.rst.received": 0,
        },
    ),
}


@pytest.mark.parametrize("kind", sorted(PACKET_KINDS))
def test_malformed_packets_are_dropped_and_counted(olm: Olm, kind: str) -> None:
    answers, expected = PACKET_KINDS[kind]
    result = olm.hostile(kind)[kind]
    assert result["sent"] > 0
    assert result["answers"] == answers, result
    olm.still_answers()
    counters = olm.stop()
    got = {name: counters.get(name, 0) for name in expected}
    assert got == expected
    if kind == "tcp_flags":
        # No hostile segment opened a connection: SYN+FIN is dropped, holding no state.
        assert counters["tcp.passive_opens"] == olm.tcp_digs
        assert counters.get("tcp.rst.sent", 0) >= 1  # the answer to the early data
        assert counters["tcp.established"] == olm.tcp_digs  # none of the hostile segments
    # Every well-formed query was answered (from upstream or the cache), nothing else was.
    udp_answers = 0 if kind == "rst_attack" else answers
    assert counters.get("udp.delivered", 0) == udp_answers + olm.udp_digs
    assert served(counters) == answers + olm.udp_digs + olm.tcp_digs


def test_floods_keep_memory_and_state_bounded(olm: Olm) -> None:
    before = olm.rss_kb()
    flood = olm.hostile_background("syn_flood", "udp_flood", "fragment_flood")
    # Throughout the floods, queries are answered (with time to get past the queued flood).
    during = 0
    deadline = time.monotonic() + 60
    while flood.poll() is None and time.monotonic() < deadline and during < 5:
        olm.still_answers(wait=8)
        during += 1
    out, err = flood.communicate(timeout=120)
    assert flood.returncode == 0, err
    result = json.loads(out)
    assert during >= 1
    olm.still_answers()
    after = olm.rss_kb()
    assert after - before < RSS_GROWTH_LIMIT_KB, (before, after)
    assert olm.tun_tx_dropped() == 0  # so every flood packet reached olm and is counted below
    counters = olm.stop()

    # SYN flood: the backlog bounds half-open connections; the rest get SYN cookies
    # (RFC 4987 section 3.6), which also let dig's connections through.
    syns = result["syn_flood"]["sent"]
    assert syns == 10_000
    assert result["syn_flood"]["answers"] == 0
    half_open = counters["tcp.passive_opens"] - counters.get("tcp.syn_cookies.accepted", 0)
    assert half_open + counters["tcp.listen.backlog_full"] == syns + olm.tcp_digs
    assert half_open <= BACKLOG + olm.tcp_digs
    assert counters["tcp.syn_cookies.sent"] == counters["tcp.listen.backlog_full"]
    assert counters["tcp.syn_cookies.sent"] >= syns - BACKLOG

    # UDP flood: unreadable and QR=1 messages are dropped without a reply (RFC 8906 section 4).
    datagrams = result["udp_flood"]["sent"]
    assert counters["dns.sanitise.dropped.unreadable"] == datagrams // 2
    assert counters["dns.sanitise.dropped.response"] == datagrams // 2
    assert counters["dns.queries.udp"] == datagrams + olm.udp_digs

    # Fragment flood: the reassembly table stays at its bound by evicting the oldest.
    limit = StackOptions().reassembly_datagrams
    assert counters["ipv4.reassembly.fragments"] == 5000
    assert counters["ipv4.reassembly.evicted"] == 5000 - limit
    assert counters["ipv6.reassembly.fragments"] == 2000
    assert counters["ipv6.reassembly.evicted"] == 2000 - limit
    assert counters.get("ipv4.reassembly.memory_full", 0) == 0


def test_hostile_dns_messages_get_rfc_8906_answers(olm: Olm) -> None:
    done = olm.ns.run(
        [sys.executable, HOSTILE_DNS, "--server", V4, "--server", V6],
        env=python_env(),
        timeout=120,
    )
    results = json.loads(done.stdout)
    for server, per_transport in results.items():
        for transport, outcomes in per_transport.items():
            for case in CASES:
                got = outcomes[case.name]
                where = f"{case.name} over {transport} to {server}: {got}"
                if case.rcode is None:
                    assert got is None, where
                    continue
                assert got is not None, where
                assert got["rcode"] == case.rcode, where
                assert got["id"] and got["qr"], where
                assert got["z"] == 0, where  # RFC 6891 section 6.1.4: Z is never echoed
                if case.opt is not None:
                    assert got["opt"] == case.opt, where
                if case.name == "control":
                    assert got["answers"] == 1, where
    olm.still_answers()
    counters = olm.stop()
    runs = 4  # two servers, two transports
    count = {rcode: sum(1 for c in CASES if c.rcode == rcode) * runs for rcode in (FORMERR, NOTIMP)}
    assert counters["dns.sanitise.formerr"] == count[FORMERR]
    assert counters["dns.sanitise.notimp"] == count[NOTIMP]
    assert counters["dns.sanitise.badvers"] == runs
    assert counters["dns.sanitise.dropped.unreadable"] == runs
    assert counters["dns.sanitise.dropped.response"] == runs
    upstream = sum(1 for c in CASES if c.answered_upstream) * runs
    assert served(counters) == upstream + olm.udp_digs + olm.tcp_digs
    assert counters["dns.upstream.queries"] == counters["dns.upstream.answers"]
    assert counters["dns.queries.udp"] == len(CASES) * 2 + olm.udp_digs
    assert counters["dns.queries.tcp"] == len(CASES) * 2 + olm.tcp_digs
