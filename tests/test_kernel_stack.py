"""The stack against the Linux kernel over a real TUN, inside a namespace each test creates.

``olm stack`` owns the TUN; the kernel's ping and UDP sockets are the peers; tshark reads the
pcap the sniffer wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns import NetNS, require_tool
from olmproc import OlmProcess, counters_from, ns_python

pytestmark = pytest.mark.privileged

V4 = "10.30.30.30"
V6 = "fd30:30:30::30"
ECHO = 7


@pytest.fixture
def olm_stack(netns: NetNS, tmp_path: Path) -> Iterator[tuple[NetNS, OlmProcess, Path]]:
    pcap = tmp_path / "stack.pcap"
    proc = OlmProcess(
        netns,
        [
            "stack",
            "--tun",
            "olmt0",
            "--address",
            V4,
            "--address",
            V6,
            "--udp-echo",
            str(ECHO),
            "--pcap",
            str(pcap),
            "--stats",
        ],
    )
    yield netns, proc, pcap
    if proc.proc.poll() is None:
        proc.stop()


def test_kernel_ping_gets_replies_on_both_families(
    olm_stack: tuple[NetNS, OlmProcess, Path],
) -> None:
    require_tool("ping")
    ns, proc, _ = olm_stack
    for target in (V4, V6):
        done = ns.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", target], check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "3 received" in done.stdout
    code, _, err = proc.stop()
    assert code == 0
    counters = counters_from(err)
    assert counters["icmpv4.out.echo_reply"] == 3
    assert counters["icmpv6.out.echo_reply"] == 3


UDP_CLIENT = r"""
import json, socket, sys
results = {}
for family, host in ((socket.AF_INET, "%(v4)s"), (socket.AF_INET6, "%(v6)s")):
    for size in (1, 512, 1472, 4000, 16000):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(5)
        payload = bytes((i * 7) & 0xFF for i in range(size))
        s.sendto(payload, (host, %(port)d))
        data, peer = s.recvfrom(65535)
        results[f"{family.name}-{size}"] = [data == payload, peer[1]]
        s.close()
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((host, 9))
    s.send(b"anyone there?")
    try:
        s.recv(100)
        results[f"{family.name}-closed"] = "answered"
    except ConnectionRefusedError:
        results[f"{family.name}-closed"] = "refused"
    except socket.timeout:
        results[f"{family.name}-closed"] = "timeout"
print(json.dumps(results))
"""


def test_kernel_udp_exchanges_with_stack_echo(olm_stack: tuple[NetNS, OlmProcess, Path]) -> None:
    """Datagrams up to 16000 bytes both ways: the kernel fragments, the stack reassembles and
    fragments its reply; a closed port yields ECONNREFUSED through ICMP port unreachable."""
    ns, proc, _ = olm_stack
    out = ns_python(ns, UDP_CLIENT % {"v4": V4, "v6": V6, "port": ECHO})
    results = json.loads(out)
    for key, value in results.items():
        if key.endswith("closed"):
            assert value == "refused", key
        else:
            assert value == [True, ECHO], key
    code, _, err = proc.stop()
    assert code == 0
    counters = counters_from(err)
    assert counters["ipv4.reassembly.reassembled"] >= 2
    assert counters["ipv6.reassembly.reassembled"] >= 2
    assert counters["ipv4.fragments_sent"] >= 3
    assert counters["ipv6.fragments_sent"] >= 3
    assert counters["udp.no_port"] == 2


def test_pcap_is_clean_for_tshark(olm_stack: tuple[NetNS, OlmProcess, Path]) -> None:
    tshark = require_tool("tshark")
    ns, proc, pcap = olm_stack
    ns.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", V4])
    ns.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", V6])
    ns_python(ns, UDP_CLIENT % {"v4": V4, "v6": V6, "port": ECHO})
    code, out, _ = proc.stop()
    assert code == 0
    assert "stopped" in out
    base = [
        tshark,
        "-r",
        str(pcap),
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
    ]
    total = ns.run([*base, "-T", "fields", "-e", "frame.number"]).stdout.split()
    assert len(total) >= 20
    bad = ns.run(
        [
            *base,
            "-Y",
            '_ws.malformed || ip.checksum.status == "Bad" || '
            'udp.checksum.status == "Bad" || icmp.checksum.status == "Bad" || '
            'icmpv6.checksum.status == "Bad"',
        ]
    ).stdout
    assert bad.strip() == "", bad
    # tshark decodes what it sees as replies from the stack.
    replies = ns.run(
        [*base, "-Y", "icmp.type == 0 || icmpv6.type == 129", "-T", "fields", "-e", "frame.number"]
    ).stdout.split()
    assert len(replies) == 4


def test_sigterm_removes_tun_and_routes(olm_stack: tuple[NetNS, OlmProcess, Path]) -> None:
    ns, proc, _ = olm_stack
    assert "olmt0" in ns.run(["ip", "-j", "link", "show"]).stdout
    routes = ns.run(["ip", "-j", "route", "show"]).stdout
    assert V4 in routes
    code, _, _ = proc.stop()
    assert code == 0
    assert "olmt0" not in ns.run(["ip", "-j", "link", "show"]).stdout
    assert V4 not in ns.run(["ip", "-j", "route", "show"]).stdout
    assert V6 not in ns.run(["ip", "-j", "-6", "route", "show"]).stdout


def test_without_privilege_exits_2_naming_the_capability(netns: NetNS) -> None:
    """An unprivileged `olm stack` prints one line naming CAP_NET_ADMIN and exits 2."""
    import shutil
    import sys

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        require_tool("setpriv")
    done = netns.run(
        [
            setpriv,
            "--inh-caps=-all",
            "--bounding-set=-all",
            sys.executable,
            "-m",
            "olm",
            "stack",
            "--tun",
            "olmt1",
        ],
        check=False,
        env=__import__("netns").python_env(),
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAP_NET_ADMIN" in lines[0], done.stderr
