"""Fastest address through ``olm serve`` in a namespace: the address that connects goes first.

unbound answers ``pair.test`` with two addresses: 203.0.113.1, routed into a TUN device nobody
reads (connections to it hang), then 198.51.100.2, a local address. With a listener on the
second it wins and is put first; with none, nothing connects and the answer goes out as it
came, once the budget is spent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netns import NetNS, require_tool
from olmproc import OlmProcess, counters_from
from unboundproc import Unbound

pytestmark = pytest.mark.privileged

PORT = 8443
#: Listen on 198.51.100.2:PORT and accept until killed.
LISTENER = (
    "import socket,sys\n"
    "s=socket.create_server(('198.51.100.2', int(sys.argv[1])))\n"
    "print('listening', flush=True)\n"
    "while True: s.accept()[0].close()\n"
)


def network(ns: NetNS) -> None:
    """198.51.100.2 on lo; 203.0.113.0/24 routed into a TUN nobody reads (SYNs vanish)."""
    ns.run(["ip", "addr", "add", "198.51.100.2/32", "dev", "lo"])
    ns.run(["ip", "tuntap", "add", "black0", "mode", "tun"])
    ns.run(["ip", "link", "set", "black0", "up"])
    ns.run(["ip", "route", "add", "203.0.113.0/24", "dev", "black0"])


def addresses(ns: NetNS) -> list[str]:
    require_tool("dig")
    done = ns.run(["dig", "+time=5", "+tries=1", "+short", "@127.0.0.1", "pair.test", "A"])
    return str(done.stdout).split()


@pytest.mark.parametrize("listening", [True, False])
def test_the_address_with_a_listener_comes_first(
    netns: NetNS, tmp_path: Path, listening: bool
) -> None:
    network(netns)
    Unbound(netns, tmp_path, plain=5353)
    if listening:
        listener = netns.popen(
            [sys.executable, "-c", LISTENER, str(PORT)], stdout=subprocess.PIPE, text=True
        )
        assert listener.stdout is not None and "listening" in listener.stdout.readline()
    olm = OlmProcess(
        netns,
        [
            "serve",
            "--listen",
            "127.0.0.1:53",
            "--upstream",
            "127.0.0.1:5353",
            "--fastest-addr",
            "--fastest-addr-ports",
            str(PORT),
            "--fastest-addr-budget",
            "0.3",
            "--stats",
        ],
    )
    if listening:
        assert addresses(netns) == ["198.51.100.2", "203.0.113.1"]
    else:
        assert addresses(netns) == ["203.0.113.1", "198.51.100.2"]  # as unbound sent it
    assert addresses(netns)[0] == ("198.51.100.2" if listening else "203.0.113.1")  # cached
    code, _, err = olm.stop()
    assert code == 0
    counters = counters_from(err)
    assert counters["dns.fastest.probed"] == 1
    assert counters.get("dns.fastest.reordered", 0) == (1 if listening else 0)
    assert counters.get("dns.fastest.no_winner", 0) == (0 if listening else 1)
