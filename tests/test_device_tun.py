"""olm.device (TUN + netconfig) and olm.privilege against the real kernel, inside namespaces.

The privileged tests run a small script inside a namespace the test creates: it opens a TUN
with olm.device, configures it, and reports what ``ip -j`` shows at each step as JSON.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from olm import privilege
from olm.device import DeviceError
from olm.device.netconfig import configure_tun, default_host_address
from olm.device.tun import open_tun

from netns import (
    NetNS,
    has_cap_net_admin,
    privilege_problem,
    python_env,
    require_privilege,
    skip_or_fail,
)

HOSTS = ["10.30.30.1/32", "fd30:30:30::1/128"]
SERVICES = ["10.30.30.30", "fd30:30:30::30"]
NOBODY = 65534

# Prelude of every in-namespace script: a helper returning `ip -j ...` output as Python data.
PRELUDE = (
    textwrap.dedent(
        """
    import json, subprocess
    from olm.device import DeviceError
    from olm.device.netconfig import configure_tun
    from olm.device.tun import open_tun

    def ip(*args):
        out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True)
        return json.loads(out.stdout or "[]")

    def snapshot(name):
        return {
            "link": ip("link", "show"),
            "addr": ip("addr", "show", "dev", name),
            "route4": ip("-4", "route", "show", "dev", name),
            "route6": ip("-6", "route", "show", "dev", name),
        }

    """
    )
    + f"HOSTS = {HOSTS!r}\nSERVICES = {SERVICES!r}\n"
)


def run_script(netns: NetNS, body: str) -> dict[str, Any]:
    """Run PRELUDE + ``body`` in ``netns``; the script prints one JSON object, returned here."""
    done = netns.python(PRELUDE + textwrap.dedent(body))
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def addresses(snapshot: dict[str, Any]) -> set[str]:
    """Global-scope addresses of the device in ``snapshot`` as ``address/prefixlen``."""
    found = set()
    for link in snapshot["addr"]:
        for info in link.get("addr_info", []):
            if info.get("scope") == "global":
                found.add(f"{info['local']}/{info['prefixlen']}")
    return found


def routes(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Routes through the device in ``snapshot``, keyed by destination."""
    return {r["dst"]: r for r in [*snapshot["route4"], *snapshot["route6"]]}


def link(snapshot: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``ip link`` entry for ``name`` in ``snapshot``, or None if there is none."""
    return next((entry for entry in snapshot["link"] if entry["ifname"] == name), None)


# --- privileged: the real kernel, inside a namespace -------------------------------------------


def test_configure_then_undo_then_close(netns: NetNS) -> None:
    out = run_script(
        netns,
        """
        tun = open_tun("olmt0", mtu=1400)
        opened = {"name": tun.name, "mtu": tun.mtu, "fd": tun.fd}
        cfg = configure_tun(tun.name, mtu=1420, host_addresses=HOSTS, service_addresses=SERVICES)
        recorded = {"addresses": cfg.addresses, "routes": cfg.routes}
        configured = snapshot(tun.name)
        cfg.undo()
        cfg.undo()  # idempotent
        undone = snapshot(tun.name)
        tun.close()
        closed = ip("link", "show")
        print(json.dumps({
            "opened": opened, "recorded": recorded, "configured": configured,
            "undone": undone, "closed": closed, "left": [cfg.addresses, cfg.routes],
        }))
        """,
    )
    assert out["opened"]["name"] == "olmt0"
    assert out["opened"]["mtu"] == 1400
    assert out["opened"]["fd"] >= 0
    assert sorted(out["recorded"]["addresses"]) == sorted(HOSTS)
    assert sorted(out["recorded"]["routes"]) == ["10.30.30.30/32", "fd30:30:30::30/128"]

    configured = out["configured"]
    entry = link(configured, "olmt0")
    assert entry is not None
    assert "UP" in entry["flags"]
    assert entry["mtu"] == 1420
    assert addresses(configured) == set(HOSTS)
    # IPv6 host address without duplicate address detection (IFA_F_NODAD): usable at once.
    v6 = [
        info
        for dev in configured["addr"]
        for info in dev["addr_info"]
        if info["local"] == "fd30:30:30::1"
    ]
    assert v6 and v6[0].get("nodad") is True and not v6[0].get("tentative")
    configured_routes = routes(configured)
    assert configured_routes["10.30.30.30"]["prefsrc"] == "10.30.30.1"
    assert configured_routes["fd30:30:30::30"]["prefsrc"] == "fd30:30:30::1"

    undone = out["undone"]
    assert addresses(undone) == set()
    assert "10.30.30.30" not in routes(undone)
    assert "fd30:30:30::30" not in routes(undone)
    entry = link(undone, "olmt0")
    assert entry is not None
    assert "UP" not in entry["flags"]  # the state it had before configure_tun
    assert entry["mtu"] == 1400
    assert out["left"] == [[], []]

    assert [e["ifname"] for e in out["closed"]] == ["lo"]


def test_undo_after_close_tolerates_vanished_link(netns: NetNS) -> None:
    out = run_script(
        netns,
        """
        tun = open_tun("olmt1")
        cfg = configure_tun(tun.name, mtu=1500, host_addresses=HOSTS, service_addresses=SERVICES)
        before = [cfg.addresses, cfg.routes]
        tun.close()  # the kernel deletes the link, its addresses and routes
        cfg.undo()
        print(json.dumps({"before": before, "after": [cfg.addresses, cfg.routes],
                          "links": [l["ifname"] for l in ip("link", "show")]}))
        """,
    )
    assert len(out["before"][0]) == 2 and len(out["before"][1]) == 2
    assert out["after"] == [[], []]
    assert out["links"] == ["lo"]


def test_conflicting_route_rolls_back_everything(netns: NetNS) -> None:
    # Another interface already has a host route to the service address.
    netns.run(["ip", "route", "add", "10.30.30.30/32", "dev", "lo"])
    out = run_script(
        netns,
        """
        tun = open_tun("olmt2", mtu=1400)
        try:
            configure_tun(tun.name, mtu=1500, host_addresses=HOSTS, service_addresses=SERVICES)
        except DeviceError as exc:
            error = {"errno": exc.errno, "device": exc.device, "message": str(exc)}
        else:
            error = None
        print(json.dumps({"error": error, "after": snapshot(tun.name)}))
        """,
    )
    assert out["error"] is not None
    assert out["error"]["errno"] == errno.EEXIST
    assert out["error"]["device"] == "olmt2"
    assert "10.30.30.30/32" in out["error"]["message"]
    after = out["after"]
    assert addresses(after) == set()
    assert routes(after) == {}
    entry = link(after, "olmt2")
    assert entry is not None
    assert "UP" not in entry["flags"]
    assert entry["mtu"] == 1400
    # The conflicting route belongs to someone else and must survive.
    lo_routes = json.loads(netns.run(["ip", "-j", "route", "show", "dev", "lo"]).stdout)
    assert [r["dst"] for r in lo_routes] == ["10.30.30.30"]


def test_second_open_of_same_name_is_busy(netns: NetNS) -> None:
    out = run_script(
        netns,
        """
        first = open_tun("olmt3")
        try:
            open_tun("olmt3")
        except DeviceError as exc:
            error = {"errno": exc.errno, "message": str(exc)}
        else:
            error = None
        first.close()
        print(json.dumps(error))
        """,
    )
    assert out is not None
    assert out["errno"] == errno.EBUSY
    assert out["message"].startswith("olmt3: ")


def test_setting_mtu_through_tun_device(netns: NetNS) -> None:
    out = run_script(
        netns,
        """
        with open_tun("olmt4", mtu=1500) as tun:
            tun.mtu = 9000
            seen = [tun.mtu, ip("link", "show", "olmt4")[0]["mtu"]]
        print(json.dumps({"seen": seen, "closed": tun.closed}))
        """,
    )
    assert out["seen"] == [9000, 9000]
    assert out["closed"] is True


REPORT = textwrap.dedent(
    """
    import json, os
    from olm.privilege import missing_net_admin
    print(json.dumps({"euid": os.geteuid(), "missing": missing_net_admin()}))
    """
)
REQUIRE = textwrap.dedent(
    """
    from olm.privilege import require_net_admin
    require_net_admin("creating the TUN device")
    print("not reached")
    """
)


def test_root_without_cap_net_admin_is_reported(privileged: None) -> None:
    # uid 0 but CAP_NET_ADMIN dropped from the bounding set, hence from the effective set
    # after exec (capabilities(7), "Capabilities and execution of programs by root").
    if os.geteuid() != 0:
        skip_or_fail("needs root to drop CAP_NET_ADMIN from a child's bounding set")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        skip_or_fail("needs the `setpriv` command (Debian package util-linux)")
    done = subprocess.run(
        [setpriv, "--bounding-set=-net_admin", sys.executable, "-c", REPORT],
        capture_output=True,
        text=True,
        timeout=30,
        env=python_env(),
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["euid"] == 0
    assert report["missing"] is not None and "CAP_NET_ADMIN" in report["missing"]


# --- unprivileged user: a real process without capabilities ------------------------------------


def nobody_argv(code: str) -> list[str]:
    """Command line running ``code`` in this interpreter without CAP_NET_ADMIN and not as root.

    As root, the child is switched to uid/gid 65534 with no capabilities; a process that is
    already unprivileged simply runs it.
    """
    if os.geteuid() != 0 and not has_cap_net_admin():
        return [sys.executable, "-c", code]
    if os.geteuid() != 0:
        skip_or_fail("needs root (to switch a child to uid 65534) or no CAP_NET_ADMIN at all")
    python = [sys.executable, "-c", code]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [
            setpriv,
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--inh-caps=-all",
            *python,
        ]
    capsh = shutil.which("capsh")
    if capsh is not None:
        # Changing every uid away from 0 clears the permitted and effective sets
        # (capabilities(7), "Effect of user ID changes on capabilities").
        return [
            capsh,
            f"--gid={NOBODY}",
            "--groups=",
            f"--uid={NOBODY}",
            "--",
            "-c",
            'exec "$@"',
            "sh",
            *python,
        ]
    skip_or_fail("needs `setpriv` (util-linux) or `capsh` (libcap2-bin) to drop privileges")


def as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as uid 65534 without capabilities, in this network namespace."""
    return subprocess.run(
        nobody_argv(code), capture_output=True, text=True, timeout=30, env=python_env()
    )


def test_missing_net_admin_as_unprivileged_user() -> None:
    done = as_nobody(REPORT)
    if done.returncode != 0:
        skip_or_fail(f"cannot run this interpreter as uid {NOBODY}: {done.stderr.strip()}")
    report = json.loads(done.stdout)
    assert report["euid"] != 0
    assert report["missing"] is not None
    assert "CAP_NET_ADMIN" in report["missing"]


def test_require_net_admin_exits_2_as_unprivileged_user() -> None:
    done = as_nobody(REQUIRE)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        "olm: creating the TUN device needs CAP_NET_ADMIN (run as root or grant the capability)\n"
    )


def test_open_tun_unprivileged_names_the_capability() -> None:
    done = as_nobody(
        textwrap.dedent(
            """
            from olm.device import DeviceError
            from olm.device.tun import open_tun
            try:
                open_tun("olmt9")
            except DeviceError as exc:
                print(exc.errno, exc.is_permission_error, exc)
            """
        )
    )
    assert done.returncode == 0, done.stderr
    code, is_perm, message = done.stdout.strip().split(" ", 2)
    assert int(code) in (errno.EPERM, errno.EACCES)
    assert is_perm == "True"
    assert message.startswith("olmt9: ")
    assert "CAP_NET_ADMIN" in message


def test_configure_unprivileged_names_the_capability(netns: NetNS) -> None:
    # Inside the test's own namespace, so the attempt cannot touch the host's interfaces.
    done = netns.run(
        nobody_argv(
            textwrap.dedent(
                """
                from olm.device import DeviceError
                from olm.device.netconfig import configure_tun
                try:
                    configure_tun("lo", mtu=1500, host_addresses=["10.30.30.1/32"],
                                  service_addresses=["10.30.30.30"])
                except DeviceError as exc:
                    print(exc.errno, exc)
                """
            )
        ),
        env=python_env(),
    )
    code, message = done.stdout.strip().split(" ", 1)
    assert int(code) == errno.EPERM
    assert message.startswith("lo: ")
    assert "CAP_NET_ADMIN" in message
    lo = json.loads(netns.run(["ip", "-j", "addr", "show", "dev", "lo"]).stdout)
    assert all(info["local"] != "10.30.30.1" for info in lo[0]["addr_info"])


# --- no privileges needed ----------------------------------------------------------------------


def test_missing_net_admin_agrees_with_this_process() -> None:
    status = Path("/proc/self/status").read_text()
    capeff = next(line for line in status.splitlines() if line.startswith("CapEff:"))
    held = bool(int(capeff.split(":")[1], 16) >> 12 & 1)
    assert (privilege.missing_net_admin() is None) == held


@given(mask=st.integers(min_value=0, max_value=2**64 - 1))
def test_effective_capabilities_reads_capeff(mask: int) -> None:
    text = f"Name:\tpython3\nCapInh:\t{0:016x}\nCapEff:\t{mask:016x}\nCapBnd:\t{2**41 - 1:016x}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "status"
        path.write_text(text)
        assert privilege.effective_capabilities(path) == mask


@pytest.mark.parametrize(
    ("capeff", "held"),
    [(0, False), (1 << 12, True), ((1 << 41) - 1, True), (((1 << 41) - 1) & ~(1 << 12), False)],
)
def test_missing_net_admin_checks_bit_12(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capeff: int, held: bool
) -> None:
    fake = tmp_path / "status"
    fake.write_text(f"Name:\tx\nCapEff:\t{capeff:016x}\n")
    monkeypatch.setattr(privilege, "_STATUS", fake)
    missing = privilege.missing_net_admin()
    if held:
        assert missing is None
    else:
        assert missing is not None and "CAP_NET_ADMIN" in missing


def test_missing_net_admin_without_status_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(privilege, "_STATUS", tmp_path / "absent")
    missing = privilege.missing_net_admin()
    assert missing is not None and "CAP_NET_ADMIN" in missing


def test_require_net_admin_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "status"
    fake.write_text("CapEff:\t0000000000000000\n")
    monkeypatch.setattr(privilege, "_STATUS", fake)
    with pytest.raises(SystemExit) as raised:
        privilege.require_net_admin("binding :53")
    assert raised.value.code == 2
    assert capsys.readouterr().err == (
        "olm: binding :53 needs CAP_NET_ADMIN (run as root or grant the capability)\n"
    )


@pytest.mark.parametrize("name", ["a" * 16, "has space", "a/b", "a:b", ".", ".."])
def test_open_tun_rejects_bad_names_before_touching_the_kernel(name: str) -> None:
    with pytest.raises(DeviceError) as raised:
        open_tun(name)
    assert raised.value.errno == errno.EINVAL
    assert raised.value.device == name


@pytest.mark.parametrize("mtu", [0, 67, 65536])
def test_open_tun_rejects_bad_mtu(mtu: int) -> None:
    with pytest.raises(DeviceError) as raised:
        open_tun("olmt5", mtu=mtu)
    assert raised.value.errno == errno.EINVAL
    assert str(mtu) in str(raised.value)


def test_configure_rejects_ipv6_below_1280_before_touching_the_kernel() -> None:
    with pytest.raises(DeviceError) as raised:
        configure_tun("does-not-exist", mtu=1279, host_addresses=HOSTS, service_addresses=SERVICES)
    assert raised.value.errno == errno.EINVAL
    assert "1280" in str(raised.value)


@pytest.mark.parametrize(
    ("hosts", "services"), [(["10.30.30.1/33"], []), ([], ["10.30.30.300"]), ([], ["x"])]
)
def test_configure_rejects_bad_addresses(hosts: list[str], services: list[str]) -> None:
    with pytest.raises(DeviceError) as raised:
        configure_tun("does-not-exist", mtu=1500, host_addresses=hosts, service_addresses=services)
    assert raised.value.errno == errno.EINVAL


def test_configure_unknown_interface() -> None:
    with pytest.raises(DeviceError) as raised:
        configure_tun("olm-nonexist", mtu=1500, host_addresses=[], service_addresses=[])
    assert raised.value.errno == errno.ENODEV


@pytest.mark.parametrize(
    ("service", "host"),
    [
        ("10.30.30.30", "10.30.30.1/32"),
        ("fd30:30:30::30", "fd30:30:30::1/128"),
        ("10.30.30.1", "10.30.30.2/32"),
        ("192.0.2.255", "192.0.2.1/32"),
    ],
)
def test_default_host_address_examples(service: str, host: str) -> None:
    assert default_host_address(service) == host


@given(st.ip_addresses())
def test_default_host_address_same_prefix_different_host(
    service: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    host = ipaddress.ip_interface(default_host_address(str(service)))
    assert host.network.prefixlen == service.max_prefixlen
    assert host.ip != service
    prefix = 24 if service.version == 4 else 64
    assert host.ip in ipaddress.ip_network(f"{service}/{prefix}", strict=False)


def test_require_privilege_agrees_with_probe() -> None:
    # require_privilege() must not skip/fail when the probe found nothing missing, and must
    # raise pytest's skip/fail outcome otherwise.
    problem = privilege_problem()
    if problem is None:
        require_privilege()
    else:
        with pytest.raises((pytest.skip.Exception, pytest.fail.Exception)):
            require_privilege()
