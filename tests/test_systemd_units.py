"""The systemd units in contrib/systemd: ``systemd-analyze verify`` finds nothing to say, and
olm does its job with exactly the privileges they grant."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from netns import REPO_ROOT, NetNS, python_env, require_tool
from olmproc import OlmProcess
from test_kernel_dns import short, start_upstream

CAP_NET_ADMIN = 12  # linux/capability.h
CAP_NET_BIND_SERVICE = 10

UNITS = sorted((REPO_ROOT / "contrib" / "systemd").glob("*.service"))


def test_both_units_are_shipped() -> None:
    assert {u.name for u in UNITS} == {"olm-up.service", "olm-serve.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    # verify checks that ExecStart's program exists: point it at this checkout's olm command.
    olm = Path(sys.executable).with_name("olm")
    if not olm.exists():
        pytest.fail(f"{olm} missing: install the project (scripts/test does) to check the units")
    text = unit.read_text()
    assert "ExecStart=/usr/local/bin/olm " in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/usr/local/bin/olm", str(olm)))
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (
        done.stdout + done.stderr
    )


def test_units_name_the_capability_they_need() -> None:
    needs = {"olm-up.service": "CAP_NET_ADMIN", "olm-serve.service": "CAP_NET_BIND_SERVICE"}
    for unit in UNITS:
        text = unit.read_text()
        cap = needs[unit.name]
        assert f"AmbientCapabilities={cap}\n" in text
        assert f"CapabilityBoundingSet={cap}\n" in text
        assert "RestartPreventExitStatus=2" in text


# -- the privileges the units grant are enough ---------------------------------------------------


@pytest.mark.privileged
def test_olm_up_answers_with_cap_net_admin_alone(netns: NetNS) -> None:
    """As olm-up.service runs it: root with no capability but CAP_NET_ADMIN."""
    start_upstream(netns, 5300)
    olm = OlmProcess(
        netns,
        ["up", "--tun", "olmcap0", "--upstream", "127.0.0.1:5300"],
        prefix=[
            require_tool("setpriv"),
            "--inh-caps=-all,+net_admin",
            "--bounding-set=-all,+net_admin",
        ],
    )
    assert capabilities(olm.proc.pid) == ("0", 1 << CAP_NET_ADMIN)
    assert short(netns, "@10.30.30.30", "example.test", "A") == ["192.0.2.10"]
    assert olm.stop()[0] == 0


@pytest.mark.privileged
def test_olm_serve_answers_on_port_53_as_nobody_with_cap_net_bind_service(netns: NetNS) -> None:
    """As olm-serve.service runs it: a user of its own with CAP_NET_BIND_SERVICE alone."""
    start_upstream(netns, 5300)
    nobody = pwd.getpwnam("nobody")
    olm = OlmProcess(
        netns,
        ["serve", "--listen", "127.0.0.1:53", "--upstream", "127.0.0.1:5300"],
        prefix=[
            require_tool("setpriv"),
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            "--inh-caps=-all,+net_bind_service",
            "--ambient-caps=+net_bind_service",
            "--bounding-set=-all,+net_bind_service",
        ],
    )
    assert capabilities(olm.proc.pid) == (str(nobody.pw_uid), 1 << CAP_NET_BIND_SERVICE)
    assert short(netns, "@127.0.0.1", "example.test", "A") == ["192.0.2.10"]
    assert short(netns, "+tcp", "@127.0.0.1", "example.test", "A") == ["192.0.2.10"]
    assert olm.stop()[0] == 0


def test_olm_serve_on_port_53_without_the_capability_names_it(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        prefix = [require_tool("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"]
        prefix += ["--inh-caps=-all", "--bounding-set=-all"]
    else:
        prefix = []
    done = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "olm",
            "serve",
            "--listen",
            "127.0.0.1:53",
            "--upstream",
            "127.0.0.1:5300",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(),
        cwd=tmp_path,
    )
    if done.returncode != 2 and os.geteuid() != 0:
        pytest.skip("this user may bind port 53 (net.ipv4.ip_unprivileged_port_start is low)")
    assert done.returncode == 2, done.stderr
    assert "CAP_NET_BIND_SERVICE" in done.stderr


def capabilities(pid: int) -> tuple[str, int]:
    """The real user ID and effective capability set of a running process."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return fields["Uid"].split()[0], int(fields["CapEff"], 16)
