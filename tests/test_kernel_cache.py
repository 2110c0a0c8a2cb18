"""The cache of `olm up` against real clients over a real TUN, in a namespace each test creates.

The upstream is tests/dnsserver.py on 127.0.0.1 inside the namespace with ``--log-queries``: it
prints every query it receives, so a test knows exactly what reached it. The clients are dig,
kdig and a Python socket client; nothing leaves the namespace.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pytest

from netns import NetNS, python_env, require_tool
from olmproc import OlmProcess, counters_from, start_up
from test_kernel_dns import V4, dig, start_upstream

pytestmark = pytest.mark.privileged


class QueryLog:
    """The queries an upstream started with ``--log-queries`` reports, read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("query "):
                self.lines.append(line.strip())

    def count(self, name: str, settle: float = 0.3) -> int:
        """Queries seen for ``name`` (lower case, no trailing dot), after ``settle`` seconds."""
        time.sleep(settle)
        return sum(1 for line in self.lines if line.split()[1] == name + ".")


def start(netns: NetNS, *upstream_args: str) -> QueryLog:
    """Start tests/dnsserver.py on 127.0.0.1:5300, logging every query it receives."""
    return QueryLog(start_upstream(netns, 5300, "--log-queries", *upstream_args))


def olm_up(netns: NetNS, started: list[OlmProcess], *args: str) -> OlmProcess:
    return start_up(netns, started, "olmcache0", "--upstream", "127.0.0.1:5300", *args)


def ttl_of(out: str, rtype: str = "A") -> int:
    for line in out.splitlines():
        fields = line.split()
        if not line.startswith(";") and len(fields) >= 5 and fields[3] == rtype:
            return int(fields[1])
    raise AssertionError(f"no {rtype} record in:\n{out}")


def test_second_dig_is_answered_from_the_cache_with_a_smaller_ttl(
    netns: NetNS, olm: list[OlmProcess]
) -> None:
    log = start(netns, "--ttl", "300")
    up = olm_up(netns, olm)
    first = dig(netns, f"@{V4}", "www.example.test", "A")
    assert ttl_of(first) == 300
    time.sleep(2.1)
    second = dig(netns, f"@{V4}", "www.example.test", "A")
    assert "status: NOERROR" in second
    assert ttl_of(second) in (297, 298)
    assert " aa" not in second.split("flags:")[1].split(";")[0]  # not the authority
    assert log.count("www.example.test") == 1
    # Over TCP, and with kdig +keepopen (several on one connection): the same cached answers.
    assert ttl_of(dig(netns, "+tcp", f"@{V4}", "www.example.test", "A")) <= 298
    require_tool("kdig")
    done = netns.run(
        [
            "kdig",
            "+tcp",
            "+keepopen",
            "+timeout=3",
            "+retry=0",
            f"@{V4}",
            "www.example.test",
            "A",
            "WWW.Example.TEST",
            "A",
            "www.example.test",
            "A",
        ],
        timeout=30,
    )
    assert done.stdout.count("status: NOERROR") == 3, done.stdout
    spelled = dig(netns, f"@{V4}", "WWW.Example.TEST", "A")
    assert ";WWW.Example.TEST.\t" in spelled  # the client's own spelling comes back (0x20)
    assert log.count("www.example.test") == 1
    _, _, err = up.stop()
    counters = counters_from(err)
    assert counters["dns.cache.hit"] == 6
    assert counters["dns.upstream.queries"] == 1


def test_nxdomain_is_cached_for_the_soa_time(netns: NetNS, olm: list[OlmProcess]) -> None:
    log = start(netns, "--negative-ttl", "3")
    olm_up(netns, olm)
    assert "status: NXDOMAIN" in dig(netns, f"@{V4}", "nothing.example.test", "A")
    again = dig(netns, f"@{V4}", "nothing.example.test", "A")
    assert "status: NXDOMAIN" in again and "example.test." in again  # the SOA comes along
    assert log.count("nothing.example.test") == 1
    time.sleep(3.2)
    assert "status: NXDOMAIN" in dig(netns, f"@{V4}", "nothing.example.test", "A")
    assert log.count("nothing.example.test") == 2


def test_with_the_upstream_gone_an_expired_entry_is_served_stale_with_ede_3(
    netns: NetNS, olm: list[OlmProcess]
) -> None:
    log = start(netns, "--ttl", "1")
    up = olm_up(netns, olm, "--cache-serve-stale", "--timeout", "0.3", "--deadline", "1")
    assert ttl_of(dig(netns, f"@{V4}", "www.example.test", "A")) == 1
    assert log.count("www.example.test") == 1
    log.proc.terminate()
    log.proc.wait(10)
    time.sleep(1.5)
    out = dig(netns, f"@{V4}", "www.example.test", "A")
    assert "status: NOERROR" in out and "192.0.2.10" in out
    assert ttl_of(out) == 30  # RFC 8767 section 4
    assert re.search(r"EDE: 3 \(Stale Answer\)", out), out  # RFC 8914
    time.sleep(1.5)  # the background refresh failed: still stale, not SERVFAIL
    out = dig(netns, f"@{V4}", "www.example.test", "A")
    assert "status: NOERROR" in out and ttl_of(out) == 30
    _, _, err = up.stop()
    counters = counters_from(err)
    assert counters["dns.cache.stale"] == 2
    assert counters["dns.cache.refresh_failed"] >= 1


CONCURRENT = r"""
import socket, struct, select, time
n = %(n)d
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("%(server)s", 53))
    socks.append(s)
q = b"\x01\x00\x00\x01" + bytes(6) + b"\x04same\x03any\x07example\x04test\x00\x00\x01\x00\x01"
for i, s in enumerate(socks):
    s.send(struct.pack("!H", i) + q)
answered = set()
deadline = time.monotonic() + 10
while len(answered) < n and time.monotonic() < deadline:
    ready, _, _ = select.select(socks, [], [], 0.5)
    for s in ready:
        data = s.recv(512)
        if data[3] & 0x0F == 0 and b"\xc0\x00\x02\x0a" in data:
            answered.add(struct.unpack("!H", data[:2])[0])
print(len(answered))
"""


def test_200_concurrent_identical_queries_cause_one_upstream_query(
    netns: NetNS, olm: list[OlmProcess]
) -> None:
    log = start(netns, "--delay", "0.5")
    up = olm_up(netns, olm)
    out = netns.run(
        [sys.executable, "-c", CONCURRENT % {"n": 200, "server": V4}], env=python_env(), timeout=30
    ).stdout
    assert out.split() == ["200"]
    assert log.count("same.any.example.test") == 1
    _, _, err = up.stop()
    counters = counters_from(err)
    assert counters["dns.cache.miss"] == 200
    assert counters["dns.cache.coalesced"] == 199
    assert counters["dns.upstream.queries"] == 1
