"""`olm up` against real clients over a real TUN, each test in a namespace it creates.

The upstreams are tests/dnsserver.py processes on 127.0.0.1 inside the same namespace; the
clients are dig, kdig, glibc's getent and ping. Nothing leaves the namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netns import NetNS, python_env, require_tool
from olmproc import OlmProcess, counters_from

pytestmark = pytest.mark.privileged

V4 = "10.30.30.30"
V6 = "fd30:30:30::30"
DNSSERVER = str(Path(__file__).with_name("dnsserver.py"))


def start_upstream(ns: NetNS, port: int, *extra: str) -> subprocess.Popen[str]:
    """Start tests/dnsserver.py on 127.0.0.1:port inside the namespace and wait until ready."""
    proc = ns.popen(
        [sys.executable, DNSSERVER, "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "ready" in line, proc.stderr.read() if proc.stderr else line
    return proc


UpFactory = Callable[..., OlmProcess]


def dig(ns: NetNS, *args: str, check: bool = True) -> str:
    require_tool("dig")
    done = ns.run(["dig", "+time=3", "+tries=1", *args], check=check, timeout=30)
    return str(done.stdout)


def short(ns: NetNS, *args: str) -> list[str]:
    return dig(ns, "+short", *args).split()


def test_dig_udp_tcp_ipv6_and_ping(netns: NetNS, olm_up: UpFactory) -> None:
    start_upstream(netns, 5300)
    up = olm_up("--upstream", "127.0.0.1:5300")
    assert short(netns, f"@{V4}", "example.test", "A") == ["192.0.2.10"]
    assert short(netns, "+tcp", f"@{V4}", "example.test", "A") == ["192.0.2.10"]
    assert short(netns, f"@{V6}", "example.test", "AAAA") == ["2001:db8::10"]
    assert short(netns, "+tcp", f"@{V6}", "example.test", "AAAA") == ["2001:db8::10"]
    out = dig(netns, f"@{V4}", "nothing.example.test", "A")
    assert "status: NXDOMAIN" in out
    require_tool("ping")
    ping = netns.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", V4], check=False)
    assert ping.returncode == 0, ping.stdout
    code, _, err = up.stop()
    assert code == 0
    counters = counters_from(err)
    assert counters["dns.queries.udp"] == 3
    assert counters["dns.queries.tcp"] == 2
    assert counters["icmpv4.out.echo_reply"] == 2


def test_kdig_pipelines_queries_on_one_tcp_connection(netns: NetNS, olm_up: UpFactory) -> None:
    require_tool("kdig")
    start_upstream(netns, 5300)
    up = olm_up("--upstream", "127.0.0.1:5300")
    done = netns.run(
        [
            "kdig",
            "+tcp",
            "+keepopen",
            "+timeout=3",
            "+retry=0",
            f"@{V4}",
            "example.test",
            "A",
            "example.test",
            "AAAA",
            "www.example.test",
            "A",
            "big.example.test",
            "TXT",
        ],
        timeout=30,
    )
    out = done.stdout
    assert out.count("status: NOERROR") == 4, out
    assert "192.0.2.10" in out and "2001:db8::10" in out
    code, _, err = up.stop()
    assert code == 0
    counters = counters_from(err)
    assert counters["dns.queries.tcp"] == 4
    # +keepopen: all four questions travelled on a single connection.
    assert counters["dns.tcp.connections"] == 1


def test_large_txt_is_truncated_over_udp_and_retried_over_tcp(
    netns: NetNS, olm_up: UpFactory
) -> None:
    start_upstream(netns, 5300)
    olm_up("--upstream", "127.0.0.1:5300")
    out = dig(netns, f"@{V4}", "big.example.test", "TXT")
    assert "Truncated, retrying in TCP mode" in out
    answers = [line for line in out.splitlines() if "\tTXT\t" in line and not line.startswith(";")]
    assert len(answers) == 6, out
    # Without the retry the client sees TC=1, the question, and no partial records.
    out = dig(netns, "+ignore", "+bufsize=1232", f"@{V4}", "big.example.test", "TXT")
    assert " tc " in out.split("flags:")[1].split(";")[0] + " "
    assert "QUERY: 1, ANSWER: 0" in out


def test_upstream_truncation_makes_the_proxy_retry_upstream_over_tcp(
    netns: NetNS, olm_up: UpFactory
) -> None:
    """The upstream answers every UDP query with TC=1: the proxy asks it again over TCP."""
    start_upstream(netns, 5300, "--truncate-udp")
    up = olm_up("--upstream", "127.0.0.1:5300")
    out = dig(netns, "+tcp", f"@{V4}", "big.example.test", "TXT")
    answers = [line for line in out.splitlines() if "\tTXT\t" in line and not line.startswith(";")]
    assert len(answers) == 6, out
    assert short(netns, f"@{V4}", "example.test", "A") == ["192.0.2.10"]
    _, _, err = up.stop()
    assert counters_from(err)["dns.upstream.tc_retry_tcp"] == 2


def test_glibc_getent_resolves_through_the_proxy(netns: NetNS, olm_up: UpFactory) -> None:
    start_upstream(netns, 5300)
    olm_up("--upstream", "127.0.0.1:5300")
    # `ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
    etc = Path("/etc/netns") / netns.name
    etc.mkdir(parents=True, exist_ok=True)
    try:
        (etc / "resolv.conf").write_text(f"nameserver {V4}\noptions timeout:2 attempts:1\n")
        done = netns.run(["getent", "ahostsv4", "host.example.test"], check=False)
        assert done.returncode == 0, done.stderr
        assert "192.0.2.10" in done.stdout
        done = netns.run(["getent", "hosts", "www.example.test"], check=False)
        assert done.returncode == 0 and "example.test" in done.stdout
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def test_first_upstream_dead_second_answers(netns: NetNS, olm_up: UpFactory) -> None:
    start_upstream(netns, 5300)
    start_upstream(netns, 5302, "--mode", "silent")
    up = olm_up(
        "--upstream",
        "127.0.0.1:5309",
        "--upstream",
        "127.0.0.1:5302",
        "--upstream",
        "127.0.0.1:5300",
        "--timeout",
        "0.5",
        "--deadline",
        "4",
    )
    assert short(netns, f"@{V4}", "example.test", "A") == ["192.0.2.10"]
    _, _, err = up.stop()
    counters = counters_from(err)
    assert counters["dns.upstream.timeout"] >= 1  # the silent one
    assert counters["dns.upstream.error"] >= 1  # the closed port (ICMP port unreachable)


def test_all_upstreams_dead_gives_servfail_within_the_deadline(
    netns: NetNS, olm_up: UpFactory
) -> None:
    start_upstream(netns, 5302, "--mode", "silent")
    olm_up(
        "--upstream",
        "127.0.0.1:5302",
        "--upstream",
        "127.0.0.1:5309",
        "--timeout",
        "0.5",
        "--deadline",
        "1.5",
    )
    started = time.monotonic()
    out = dig(netns, "+time=5", f"@{V4}", "example.test", "A")
    elapsed = time.monotonic() - started
    assert "status: SERVFAIL" in out
    assert elapsed < 4.5  # the deadline is 1.5 s; dig would give up after 5


def test_spoofed_reply_with_wrong_id_is_ignored(netns: NetNS, olm_up: UpFactory) -> None:
    start_upstream(netns, 5300, "--mode", "spoof-first")
    up = olm_up("--upstream", "127.0.0.1:5300")
    assert short(netns, f"@{V4}", "example.test", "A") == ["192.0.2.10"]
    _, _, err = up.stop()
    assert counters_from(err)["dns.upstream.spoofed_ignored"] >= 1


def test_sighup_switches_upstream_without_losing_a_query(
    netns: NetNS, olm_up: UpFactory, tmp_path: Path
) -> None:
    start_upstream(netns, 5300, "--a", "192.0.2.10")
    start_upstream(netns, 5301, "--a", "192.0.2.20")
    config = tmp_path / "olm.toml"
    config.write_text('upstreams = ["127.0.0.1:5300"]\n')
    up = olm_up("--config", str(config))
    answers: list[str] = []
    failures: list[str] = []

    def ask() -> None:
        # Bounded: at most 150 queries, at most 20 s.
        deadline = time.monotonic() + 20
        for _ in range(150):
            if time.monotonic() > deadline:
                break
            out = netns.run(
                ["dig", "+short", "+time=2", "+tries=1", f"@{V4}", "example.test"],
                check=False,
                timeout=10,
            ).stdout.split()
            (answers if out else failures).append(out[0] if out else "none")

    require_tool("dig")
    worker = threading.Thread(target=ask)
    worker.start()
    while len(answers) < 20 and worker.is_alive():
        time.sleep(0.05)
    config.write_text('upstreams = ["127.0.0.1:5301"]\n')
    up.proc.send_signal(signal.SIGHUP)
    up.wait_for("reloaded")
    worker.join(60)
    assert failures == []
    assert answers[0] == "192.0.2.10" and answers[-1] == "192.0.2.20"
    switched = answers.index("192.0.2.20")
    assert set(answers[switched:]) == {"192.0.2.20"}


def test_sigterm_leaves_no_tun_or_route(netns: NetNS, olm_up: UpFactory) -> None:
    start_upstream(netns, 5300)
    up = olm_up("--upstream", "127.0.0.1:5300")
    assert "olmdns0" in netns.run(["ip", "link", "show"]).stdout
    code, out, _ = up.stop(signal.SIGTERM)
    assert code == 0 and "stopped" in out
    assert "olmdns0" not in netns.run(["ip", "link", "show"]).stdout
    assert V4 not in netns.run(["ip", "route", "show"]).stdout
    assert V6 not in netns.run(["ip", "-6", "route", "show"]).stdout


def test_olm_up_without_privilege_exits_2(netns: NetNS) -> None:
    setpriv = shutil.which("setpriv") or require_tool("setpriv")
    done = netns.run(
        [
            setpriv,
            "--inh-caps=-all",
            "--bounding-set=-all",
            sys.executable,
            "-m",
            "olm",
            "up",
            "--tun",
            "olmdns1",
            "--upstream",
            "127.0.0.1:5300",
        ],
        check=False,
        env=python_env({**os.environ}),
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAP_NET_ADMIN" in lines[0], done.stderr


def test_bad_config_names_file_line_and_field(netns: NetNS, tmp_path: Path) -> None:
    config = tmp_path / "olm.toml"
    config.write_text('upstreams = ["127.0.0.1:5300"]\n\npolicy = "quickest"\n')
    done = netns.run(
        [sys.executable, "-m", "olm", "up", "--config", str(config)], check=False, env=python_env()
    )
    assert done.returncode == 2
    assert f"{config}:3" in done.stderr and "policy" in done.stderr, done.stderr


CLOSED_PORTS = r"""
import socket
result = []
for family, host in ((socket.AF_INET, "%(v4)s"), (socket.AF_INET6, "%(v6)s")):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, 80))
        result.append("connected")
    except ConnectionRefusedError:
        result.append("refused")
    except OSError as exc:
        result.append(type(exc).__name__)
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.connect((host, 54))
    u.send(b"x")
    try:
        u.recv(10)
        result.append("answered")
    except ConnectionRefusedError:
        result.append("refused")
    except OSError as exc:
        result.append(type(exc).__name__)
print(" ".join(result))
"""


def test_every_packet_to_the_service_address_reaches_the_stack(
    netns: NetNS, olm_up: UpFactory
) -> None:
    """TCP to a closed port gets RST, UDP to a closed port gets ICMP port unreachable."""
    start_upstream(netns, 5300)
    up = olm_up("--upstream", "127.0.0.1:5300")
    out = netns.python(CLOSED_PORTS % {"v4": V4, "v6": V6}).stdout.split()
    assert out == ["refused"] * 4
    _, _, err = up.stop()
    counters = counters_from(err)
    assert counters["udp.no_port"] == 2
    assert counters["tcp.rst.sent"] >= 2


def test_default_upstreams_come_from_resolv_conf_skipping_the_proxy(
    netns: NetNS, olm_up: UpFactory
) -> None:
    start_upstream(netns, 5300)
    etc = Path("/etc/netns") / netns.name
    etc.mkdir(parents=True, exist_ok=True)
    try:
        # Only the proxy itself: no usable upstream is a startup error naming the file.
        (etc / "resolv.conf").write_text(f"nameserver {V4}\n")
        done = netns.run(
            [sys.executable, "-m", "olm", "up", "--tun", "olmdns2"], check=False, env=python_env()
        )
        assert done.returncode == 1
        assert "resolv.conf" in done.stderr, done.stderr
        assert "olmdns2" not in netns.run(["ip", "link", "show"]).stdout
        # The proxy's address is skipped, 127.0.0.1 is used. Port 53 is fixed in resolv.conf,
        # so a second upstream answers there.
        start_upstream(netns, 53)
        (etc / "resolv.conf").write_text(f"nameserver {V4}\nnameserver 127.0.0.1\n")
        up = olm_up()
        assert "upstreams 127.0.0.1:53" in up.lines[-1]
        assert short(netns, f"@{V4}", "example.test", "A") == ["192.0.2.10"]
    finally:
        shutil.rmtree(etc, ignore_errors=True)
