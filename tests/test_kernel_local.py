"""Local answers of `olm up` seen by dig over a real TUN, in a namespace each test creates.

Clients of different lines are dig with ``-b``: the host side of the TUN gets more addresses.
Upstreams are tests/dnsserver.py on 127.0.0.1 inside the namespace; nothing leaves it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from netns import NetNS, python_env
from olmproc import OlmProcess, counters_from, start_up
from test_dns_local import PIPY_RECORDS
from test_kernel_cache import QueryLog, start
from test_kernel_dns import V4, dig, start_upstream

pytestmark = pytest.mark.privileged

TUN = "olmlocal0"
# The Pipy article's records (tests/test_dns_local.py) but the denied name, and two more.
RECORDS = [
    *(record for record in PIPY_RECORDS if record.get("status") != "deny"),
    {"name": "app.example.com", "type": "A", "ttl": 300, "rdata": "192.168.1.50"},
    {"name": "alias.example.com", "type": "CNAME", "ttl": 300, "rdata": "www.example.test"},
]
LINES = {"line1": ["10.30.30.1/32"], "line2": ["10.30.30.2/32"]}


def olm_up(netns: NetNS, started: list[OlmProcess], *args: str) -> OlmProcess:
    return start_up(netns, started, TUN, "--upstream", "127.0.0.1:5300", *args)


def answers(out: str, rtype: str = "A") -> list[str]:
    return sorted(
        line.split()[-1]
        for line in out.splitlines()
        if not line.startswith(";") and len(line.split()) >= 5 and line.split()[3] == rtype
    )


def write(tmp_path: Path, name: str, content: object) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return str(path)


def test_records_lines_hosts_and_split_seen_by_dig(
    netns: NetNS, olm: list[OlmProcess], tmp_path: Path
) -> None:
    start(netns)  # the default upstream on 5300: www.example.test is 192.0.2.10
    corp = start_split_upstream(netns)
    records = write(tmp_path, "records.json", RECORDS)
    lines = write(tmp_path, "smart-line.json", LINES)
    hosts = write(tmp_path, "hosts", "192.0.2.77 printer.lan printer\n")
    up = olm_up(
        netns,
        olm,
        "--records-file",
        records,
        "--lines-file",
        lines,
        "--hosts-file",
        hosts,
        "--auto-ptr",
        "--split",
        "corp.internal=127.0.0.1:5301",
    )
    for extra in ("10.30.30.2", "10.30.30.3"):
        netns.run(["ip", "addr", "add", f"{extra}/32", "dev", TUN])
    # The Pipy article's three answers: line1, line2, and a client in no line.
    line1 = dig(netns, "-b", "10.30.30.1", f"@{V4}", "www.example.com", "A")
    line2 = dig(netns, "-b", "10.30.30.2", f"@{V4}", "www.example.com", "A")
    nobody = dig(netns, "-b", "10.30.30.3", f"@{V4}", "www.example.com", "A")
    assert answers(line1) == ["192.168.1.1", "192.168.1.3"], line1
    assert answers(line2) == ["192.168.1.2", "192.168.1.3"], line2
    assert answers(nobody) == ["192.168.1.1", "192.168.1.2", "192.168.1.3"], nobody
    assert " aa" in line1.split("flags:")[1].split(";")[0]  # authoritative
    assert answers(dig(netns, f"@{V4}", "example.com", "MX"), "MX") == ["mail.example.com."]
    assert '\tTXT\t"v=spf1 -all"' in dig(netns, f"@{V4}", "example.com", "TXT")
    assert answers(dig(netns, f"@{V4}", "example.com", "NS"), "NS") == ["ns1.example.com."]
    srv = dig(netns, f"@{V4}", "_sip._tcp.example.com", "SRV")
    assert "10 5 5060 sip.example.com." in srv
    ptr = dig(netns, "-x", "192.168.1.50", f"@{V4}")
    assert answers(ptr, "PTR") == ["app.example.com."]
    assert answers(dig(netns, f"@{V4}", "printer.lan", "A")) == ["192.0.2.77"]
    assert answers(dig(netns, "-x", "192.0.2.77", f"@{V4}"), "PTR") == ["printer.lan."]
    # A CNAME out of local data is followed upstream; the reply holds the whole chain.
    alias = dig(netns, f"@{V4}", "alias.example.com", "A")
    assert "alias.example.com." in alias and answers(alias) == ["192.0.2.10"]
    # Split DNS: the corp suffix goes to its own upstream, the rest to the default.
    assert answers(dig(netns, f"@{V4}", "host.any.corp.internal", "A")) == ["192.0.2.99"]
    assert answers(dig(netns, f"@{V4}", "host.any.example.test", "A")) == ["192.0.2.10"]
    assert corp.count("host.any.corp.internal") == 1
    assert corp.count("host.any.example.test", settle=0) == 0
    _, _, err = up.stop()
    counters = counters_from(err)
    assert counters["dns.records.answer"] >= 6
    assert counters["dns.views.matched"] >= 2 and counters["dns.views.unmatched"] >= 1
    assert counters["dns.split.routed.corp.internal"] == 1


def start_split_upstream(netns: NetNS) -> QueryLog:
    """The corp upstream on 127.0.0.1:5301: every name it knows is 192.0.2.99."""
    return QueryLog(start_upstream(netns, 5301, "--log-queries", "--a", "192.0.2.99"))


def test_records_file_change_is_picked_up_and_a_bad_one_keeps_the_old(
    netns: NetNS, olm: list[OlmProcess], tmp_path: Path
) -> None:
    start(netns)
    path = tmp_path / "records.json"
    path.write_text(json.dumps([{"name": "svc.lan", "type": "A", "rdata": "192.0.2.1"}]))
    up = olm_up(netns, olm, "--records-file", str(path))
    assert answers(dig(netns, f"@{V4}", "svc.lan")) == ["192.0.2.1"]
    path.write_text(json.dumps([{"name": "svc.lan", "type": "A", "rdata": "192.0.2.2"}]))
    deadline = time.monotonic() + 10
    while answers(dig(netns, f"@{V4}", "svc.lan")) != ["192.0.2.2"]:
        assert time.monotonic() < deadline, "the changed file was not picked up"
        time.sleep(0.3)
    path.write_text('[{"name": "svc.lan", "type": "A", "rdata": "not-an-address"}]')
    time.sleep(3)
    assert answers(dig(netns, f"@{V4}", "svc.lan")) == ["192.0.2.2"]  # the old data stays
    up.proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    _, _, err = up.stop()
    assert f"{path}:1: field 'rdata'" in err
    counters = counters_from(err)
    assert counters["dns.reload_failed"] >= 2  # the watcher's try, and SIGHUP's
    assert counters["dns.data_reloaded"] == 1


def test_bad_records_file_at_start_exits_2_naming_file_line_and_field(
    netns: NetNS, tmp_path: Path
) -> None:
    path = tmp_path / "records.json"
    path.write_text('[\n  {"name": "a.lan", "type": "A", "ttl": "soon", "rdata": "192.0.2.1"}\n]\n')
    done = netns.run(
        [
            sys.executable,
            "-m",
            "olm",
            "up",
            "--tun",
            TUN,
            "--upstream",
            "127.0.0.1:5300",
            "--records-file",
            str(path),
        ],
        check=False,
        env=python_env(),
    )
    assert done.returncode == 2
    assert f"{path}:2: field 'ttl'" in done.stderr, done.stderr
    assert TUN not in netns.run(["ip", "link", "show"]).stdout


def test_blocked_name_with_ede_15_and_fake_ip_kept_across_a_restart(
    netns: NetNS, olm: list[OlmProcess], tmp_path: Path
) -> None:
    start(netns)
    ads = write(tmp_path, "ads.txt", "0.0.0.0 ads.example.test\n||tracker.example.test^\n")
    state = tmp_path / "state"
    args = [
        "--block-list",
        ads,
        "--fake-ip",
        "--fake-ip-suffix",
        "proxied.test",
        "--state-dir",
        str(state),
    ]
    up = olm_up(netns, olm, *args)
    blocked = dig(netns, f"@{V4}", "x.tracker.example.test", "A")
    assert "status: NXDOMAIN" in blocked and "EDE: 15 (Blocked)" in blocked, blocked
    assert answers(dig(netns, f"@{V4}", "www.example.test", "A")) == ["192.0.2.10"]
    fake = answers(dig(netns, f"@{V4}", "app.proxied.test", "A"))
    assert len(fake) == 1 and fake[0].startswith("198.1")
    assert answers(dig(netns, "-x", fake[0], f"@{V4}"), "PTR") == ["app.proxied.test."]
    # Traffic to the fake address is routed into the TUN and claimed by the prefix rule.
    netns.run(["ping", "-c", "2", "-i", "0.2", "-W", "1", fake[0]], check=False)
    code, _, err = up.stop()
    assert code == 0
    counters = counters_from(err)
    assert counters["dns.block.list.ads"] == 1
    assert counters["dns.fake_ip.traffic"] == 2
    assert counters["filter.claimed_prefix"] == 2
    assert (state / "fake-ip.json").exists()
    # Restarted: the same name gets the same address.
    olm_up(netns, olm, *args)
    assert answers(dig(netns, f"@{V4}", "app.proxied.test", "A")) == fake
