"""Looking inside a running `olm up` over a real TUN: olm inspect, olm trace, the control socket.

Each test starts tests/dnsserver.py on 127.0.0.1:5300 inside its own namespace as the upstream,
`olm up` with a control socket in a temporary folder (tests/olmproc.py), and asks it with the
`olm` command line as a user would; the clients are dig and kdig.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from netns import NetNS, python_env, require_tool
from olmproc import OlmProcess, counters_from
from test_kernel_dns import V4, dig, start_upstream

pytestmark = pytest.mark.privileged

UpFactory = Callable[..., OlmProcess]


def inspect_json(up: OlmProcess, *args: str) -> object:
    done = up.inspect("inspect", *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tcp_rows(up: OlmProcess) -> list[dict[str, object]]:
    rows = inspect_json(up, "sockets")
    assert isinstance(rows, list)
    return [r for r in rows if r["proto"] == "tcp" and r["state"] != "LISTEN"]


def test_inspect_sockets_follows_a_kdig_keepopen_connection(
    netns: NetNS, olm_up: UpFactory
) -> None:
    kdig = require_tool("kdig")
    start_upstream(netns, 5300, "--delay", "1.0")
    up = olm_up("--upstream", "127.0.0.1:5300")
    listening = inspect_json(up, "sockets")
    assert isinstance(listening, list)
    assert {(r["proto"], r["state"], r["local"]) for r in listening} >= {
        ("tcp", "LISTEN", f"{V4}:53"),
        ("udp", "UNCONN", f"{V4}:53"),
    }
    # Three queries one after the other on one connection, each answered after a second.
    client = netns.popen(
        [kdig, "+tcp", "+keepopen", "+timeout=5", f"@{V4}"]
        + [arg for i in range(3) for arg in (f"q{i}.any.example.test", "A")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, object] | None = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and client.poll() is None:
        for row in tcp_rows(up):
            if row["state"] == "ESTABLISHED" and row.get("srtt_ms") is not None:
                seen = row
        if seen is not None:
            break
        time.sleep(0.1)
    out, err = client.communicate(timeout=20)
    assert client.returncode == 0, err
    assert out.count("status: NOERROR") == 3
    assert seen is not None, "never saw the connection ESTABLISHED with an RTT"
    # Sane numbers: the TUN's MTU bounds the MSS, windows are open, the RTT is a loopback's.
    assert seen["local"] == f"{V4}:53"
    assert 536 <= int(seen["mss"]) <= 1460  # type: ignore[call-overload]
    assert int(seen["snd_wnd"]) > 0 and int(seen["rcv_wnd"]) > 0  # type: ignore[call-overload]
    assert 0 <= float(seen["srtt_ms"]) < 500  # type: ignore[arg-type]
    assert float(seen["rto_ms"]) >= float(seen["srtt_ms"])  # type: ignore[arg-type]
    peer = seen["peer"]
    # kdig closed: the connection goes through its close and leaves the table.
    after: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = [str(r["state"]) for r in tcp_rows(up) if r["peer"] == peer]
        if not after or after == ["TIME-WAIT"]:
            break
        time.sleep(0.1)
    assert not after or after == ["TIME-WAIT"], after
    # The table without --json names the same connection's columns.
    text = up.inspect("inspect", "sockets").stdout
    assert "LISTEN" in text and f"{V4}:53" in text


def test_inspect_counters_matches_stats(netns: NetNS, olm_up: UpFactory) -> None:
    start_upstream(netns, 5300)
    up = olm_up("--upstream", "127.0.0.1:5300")
    for name in ("a.any.example.test", "b.any.example.test", "a.any.example.test"):
        assert "status: NOERROR" in dig(netns, f"@{V4}", name, "A")
    dig(netns, "+tcp", f"@{V4}", "a.any.example.test", "A")
    shown = {name: value for name, value in inspect_json(up, "counters")}  # type: ignore[attr-defined]
    assert shown["dns.queries.udp"] == 3 and shown["dns.queries.tcp"] == 1
    assert shown["dns.cache.hit"] == 2
    dns_only = inspect_json(up, "counters", "dns")
    assert all(name.startswith("dns.") for name, _ in dns_only)  # type: ignore[attr-defined]
    table = up.inspect("inspect", "counters", "dns").stdout
    assert "cache.hit" in table and "queries.udp" in table
    code, _, err = up.stop()
    assert code == 0
    stats = counters_from(err)
    # The same tree and values. What may move between the two: the control socket's own
    # counting, what the kernel sends the TUN unasked (IPv6 router solicitations, MLD), and
    # the closing of upstream sockets at shutdown, which adds counters but changes none.
    moving = ("control.", "filter.", "nic.", "ipv6.", "icmpv6.", "fd.", "link.")
    kept = {k: v for k, v in shown.items() if not k.startswith(moving)}
    assert len(kept) > 20
    assert kept == {k: stats.get(k) for k in kept}
    assert set(stats) - set(shown) <= {"dns.upstream.sockets_retired"} | {
        k for k in stats if k.startswith(moving)
    }


def start_trace(up: OlmProcess, *args: str) -> subprocess.Popen[str]:
    assert up.control is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "olm", "trace", "--control", up.control, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(dict(os.environ)),
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "tracing" in line, line + proc.stderr.read()
    return proc


def layers(out: str) -> list[tuple[str, str]]:
    """The (layer, text) of each trace line, in order."""
    found = []
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[0].startswith("#") and parts[2] == "us":
            found.append((parts[3], parts[4]))
    return found


def in_order(steps: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
    """Each expected (layer, words) appears after the one before it."""
    at = 0
    for layer, words in expected:
        while at < len(steps) and not (steps[at][0] == layer and words in steps[at][1]):
            at += 1
        assert at < len(steps), f"no {layer} {words!r} in order in:\n" + "\n".join(
            f"{a} {b}" for a, b in steps
        )
        at += 1


UDP_IN = [("tun", "read"), ("filter", "10.30.30.30"), ("ipv4", "checksum ok"), ("udp", "-> 53")]
UDP_OUT = [("ipv4", "10.30.30.30 ->"), ("udp", "port 53 ->"), ("tun", "write"), ("trace", "end")]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_trace_prints_the_stages_of_one_dig_in_order(
    netns: NetNS, olm_up: UpFactory, proto: str
) -> None:
    start_upstream(netns, 5300, "--ttl", "300")
    up = olm_up("--upstream", "127.0.0.1:5300")
    tcp = ["+tcp"] if proto == "tcp" else []
    for cached in (False, True):
        trace = start_trace(
            up, "--count", "1", "--name", "traced.any.example.test", "--proto", proto
        )
        dig(netns, *tcp, f"@{V4}", "other.any.example.test", "A")  # not traced: another name
        assert "status: NOERROR" in dig(netns, *tcp, f"@{V4}", "traced.any.example.test", "A")
        out, err = trace.communicate(timeout=30)
        assert trace.returncode == 0, err
        steps = layers(out)
        assert "other.any.example.test" not in out
        assert len({line.split()[0] for line in out.splitlines() if line.startswith("#")}) == 1
        verdict = ("cache", "hit+1") if cached else ("cache", "miss+1")
        handlers = [
            ("dns", "query id"),
            ("sanitise", "enter"),
            ("admission", "enter"),
            ("cache", "enter"),
            verdict,
        ]
        if cached:
            assert not any(layer == "upstream" for layer, _ in steps)
            answered = [("dns", "answered by cache")]
        else:
            answered = [
                ("forward", "enter"),
                ("upstream", "try 127.0.0.1:5300"),
                ("upstream", "query id"),
                ("upstream", "answered NOERROR"),
                ("dns", "answered by forward via 127.0.0.1:5300"),
            ]
        if proto == "udp":
            in_order(steps, [*UDP_IN, ("stack", "udp.delivered+1"), *handlers, *answered])
            in_order(steps, [("dns", "reply NOERROR"), *UDP_OUT])
        else:
            in_order(
                steps,
                [
                    ("tcp", "[SYN]"),
                    ("tcp", "[SYN,ACK]"),
                    ("tcp", "-> ESTABLISHED"),
                    *handlers,
                    *answered,
                    ("tcp", "port 53 -> "),
                    ("tun", "write"),
                ],
            )
            assert steps[-1] == ("trace", "end")
            closed = ("-> CLOSED", "-> TIME-WAIT")
            assert any(layer == "tcp" and t.endswith(closed) for layer, t in steps)


def test_trace_pcap_is_read_by_tshark(netns: NetNS, olm_up: UpFactory, tmp_path: object) -> None:
    tshark = require_tool("tshark")
    start_upstream(netns, 5300)
    up = olm_up("--upstream", "127.0.0.1:5300")
    pcap = f"{tmp_path}/trace.pcap"
    trace = start_trace(up, "--count", "1", "--pcap", pcap)
    dig(netns, f"@{V4}", "pcap.any.example.test", "A")
    _, err = trace.communicate(timeout=30)
    assert trace.returncode == 0, err
    shown = subprocess.run(
        [tshark, "-r", pcap, "-T", "fields", "-e", "dns.qry.name", "-e", "dns.flags.response"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split("\n")
    assert [line.split("\t") for line in shown if line] == [
        ["pcap.any.example.test", "0"],
        ["pcap.any.example.test", "1"],
    ]


def test_control_socket_refuses_other_users_and_survives_bad_requests(
    netns: NetNS, olm_up: UpFactory
) -> None:
    setpriv = require_tool("setpriv")
    start_upstream(netns, 5300)
    up = olm_up("--upstream", "127.0.0.1:5300")
    assert up.control is not None
    assert os.stat(up.control).st_mode & 0o777 == 0o600
    os.chmod(os.path.dirname(up.control), 0o755)  # only the socket's own mode stands in the way
    nobody = pwd.getpwnam("nobody")
    as_nobody = [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]

    control = up.control

    def inspect_as_nobody() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_nobody, sys.executable, "-m", "olm", "inspect", "counters", "--control", control],
            capture_output=True,
            text=True,
            timeout=60,
            env=python_env(dict(os.environ)),
        )

    refused = inspect_as_nobody()
    assert refused.returncode == 2
    assert "permission denied" in refused.stderr and "root" in refused.stderr
    # Even past the file's mode, the daemon checks who is calling (SO_PEERCRED).
    os.chmod(up.control, 0o666)
    refused = inspect_as_nobody()
    assert refused.returncode == 2
    assert "permission denied: root or the daemon's user only" in refused.stderr
    os.chmod(up.control, 0o600)
    # Malformed requests get errors on a connection that stays usable.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(up.control)
        stream = sock.makefile("rwb")
        answers = []
        for line in (
            b"not json\n",
            b"[1, 2]\n",
            b'{"cmd": 5}\n',
            b'{"v": 99, "cmd": "hello"}\n',
            b'{"cmd": "frobnicate"}\n',
            b'{"cmd": "counters", "args": {"prefix": 3}}\n',
            b'{"cmd": "trace", "args": {"count": -1}}\n',
            b'{"cmd": "hello"}\n',
        ):
            stream.write(line)
            stream.flush()
            answers.append(json.loads(stream.readline()))
        codes = [a.get("code") for a in answers[:-1]]
        assert codes == [
            "bad_request",
            "bad_request",
            "bad_request",
            "version",
            "unknown",
            "bad_request",
            "bad_request",
        ]
        assert answers[-1]["ok"] is True and answers[-1]["result"]["daemon"] == "up"
        # A request longer than the limit ends that connection with an error.
        stream.write(b"x" * 70_000 + b"\n")
        stream.flush()
        assert json.loads(stream.readline())["code"] == "bad_request"
        assert stream.readline() == b""
    assert "status: NOERROR" in dig(netns, f"@{V4}", "still.any.example.test", "A")
    assert inspect_json(up, "hello")["daemon"] == "up"  # type: ignore[index]
    code, _, err = up.stop()
    assert code == 0
    stats = counters_from(err)
    assert stats["control.refused"] == 1
    # Not JSON, not an object, cmd not a string, the prefix, the count, the long line.
    assert stats["control.bad_request"] == 6
    assert stats["control.version"] == 1 and stats["control.unknown"] == 1
