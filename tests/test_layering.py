"""The layering of netstack: the import contracts, and the protocols registered with the stack.

import-linter over pyproject.toml's contracts, the same check ``scripts/test`` runs after mypy,
plus proof that the check can fail: a tiny package with an import against its layers, and a
copy of netstack with one wrong import. Then the registration table (netstack.protocols): the
NIC finds network protocols by IP version, the network layer transports by protocol number
and answers with ICMP when a transport reports UNKNOWN_DESTINATION, and one send path honours
dont_fragment.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from netstack.clock import ManualClock
from netstack.errors import StackError
from netstack.header import icmpv4, icmpv6
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Header
from netstack.header.numbers import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from netstack.link.channel import ChannelEndpoint
from netstack.network.ipv4 import IPv4Protocol
from netstack.network.ipv6 import IPv6Protocol
from netstack.protocols import (
    HANDLED,
    MALFORMED,
    UNKNOWN_DESTINATION,
    Control,
    Disposition,
    NetworkInterface,
)
from netstack.stack import Stack
from netstack.transport.tcp import TCPProtocol
from netstack.transport.udp import UDPProtocol

from stackutil import HOST4, HOST6, STACK4, STACK6, a, make_stack, udp_packet

ROOT = Path(__file__).resolve().parent.parent
# The lint-imports console script, run by the interpreter that runs the tests.
_RUN = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"


def lint_imports(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` in ``cwd`` (the directory holding the packages) with ``config``."""
    return subprocess.run(
        [sys.executable, "-c", _RUN, "--config", str(config), "--no-cache", "--no-logo"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_netstack_keeps_its_layers_and_has_no_cycles() -> None:
    result = lint_imports(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert "Contracts: 3 kept, 0 broken." in text
    for name in ("netstack layers", "netstack never imports olm", "no import cycles"):
        verdict = re.search(re.escape(name) + r".*? (KEPT|BROKEN)", text)
        assert verdict is not None and verdict.group(1) == "KEPT", name


def test_an_import_against_the_layers_is_reported(tmp_path: Path) -> None:
    pkg = tmp_path / "toystack"
    (pkg / "header").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "header" / "__init__.py").write_text("")
    (pkg / "stack.py").write_text("from toystack.header import ipv4\n")
    # The wrong direction: a wire format reaching up into the stack.
    (pkg / "header" / "ipv4.py").write_text("from toystack import stack\n")
    config = tmp_path / "layers.toml"
    config.write_text(
        textwrap.dedent(
            """\
            [tool.importlinter]
            root_packages = ["toystack"]

            [[tool.importlinter.contracts]]
            name = "toy layers"
            type = "layers"
            layers = ["(toystack.adapters)", "toystack.stack", "toystack.header"]
            """
        )
    )
    result = lint_imports(tmp_path, config)
    assert result.returncode != 0
    assert "toy layers BROKEN" in result.stdout
    assert "toystack.header.ipv4 -> toystack.stack" in result.stdout


def _copy_project(to: Path) -> None:
    for package in ("netstack", "olm"):
        shutil.copytree(ROOT / package, to / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", to / "pyproject.toml")


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("header/checksum.py", "from netstack.stack import Stack", "netstack layers"),
        ("transport/udp.py", "from netstack.network import ipv4", "netstack layers"),
        ("network/icmp.py", "from netstack.transport import udp", "netstack layers"),
        ("protocols.py", "import netstack.stack", "netstack layers"),
        (
            "network/ipv4.py",
            "import typing\nif typing.TYPE_CHECKING:\n    from netstack.stack import Stack",
            "netstack layers",
        ),
        ("stack.py", "import netstack.adapters", "netstack layers"),
        ("transport/udp.py", "from netstack.adapters import UDPSocket", "netstack layers"),
        ("link/channel.py", "import olm", "netstack never imports olm"),
        ("network/fragment.py", "from netstack.network import ipv4", "no import cycles"),
        (
            "transport/tcp/recovery.py",
            "import typing\nif typing.TYPE_CHECKING:\n"
            "    from netstack.transport.tcp.sender import Sender",
            "no import cycles",
        ),
    ],
)
def test_the_project_contracts_catch_a_wrong_import(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    _copy_project(tmp_path)
    assert lint_imports(tmp_path, tmp_path / "pyproject.toml").returncode == 0
    target = tmp_path / "netstack" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path, tmp_path / "pyproject.toml")
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[1]
    assert contract in broken


def test_the_acyclic_contract_ignores_nothing() -> None:
    """No import may close a cycle, not even one mypy alone would follow (TYPE_CHECKING)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (acyclic,) = [
        c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "acyclic_siblings"
    ]
    assert acyclic["ancestors"] == ["netstack"]
    assert "ignore_imports" not in acyclic


# -- registration, and the network layer answering on the transport's word -------------------


class _ToyTransport:
    """A transport on an experimental protocol number (RFC 3692) that answers as it is told."""

    number = 253

    def __init__(self, answer: Disposition) -> None:
        self.answer = answer
        self.packets: list[tuple[bytes, bytes, bytes]] = []

    def handle_packet(
        self, nic: NetworkInterface, src: bytes, dst: bytes, payload: memoryview, packet: bytes
    ) -> Disposition:
        self.packets.append((src, dst, bytes(payload)))
        return self.answer

    def handle_control(
        self, control: Control, local: bytes, remote: bytes, header: bytes, info: int
    ) -> None:
        raise AssertionError("no ICMP error expected")


def _toy_packet(src: str, dst: str, payload: bytes) -> bytes:
    s, d = a(src), a(dst)
    if len(s) == 4:
        return IPv4Header(src=s, dst=d, protocol=_ToyTransport.number, ident=9).pack(payload)
    return IPv6Header(src=s, dst=d, next_header=_ToyTransport.number).pack(payload)


def test_the_default_protocols_are_registered_and_named() -> None:
    stack, _, _ = make_stack()
    assert sorted(stack.networks) == [4, 6]
    assert sorted(stack.transports) == [IPPROTO_TCP, IPPROTO_UDP]
    assert stack.networks[4] is stack.ipv4 and isinstance(stack.ipv4, IPv4Protocol)
    assert stack.networks[6] is stack.ipv6 and isinstance(stack.ipv6, IPv6Protocol)
    assert stack.transports[IPPROTO_UDP] is stack.udp and isinstance(stack.udp, UDPProtocol)
    assert stack.transports[IPPROTO_TCP] is stack.tcp and isinstance(stack.tcp, TCPProtocol)


@pytest.mark.parametrize(("src", "dst"), [(HOST4, STACK4), (HOST6, STACK6)])
def test_the_network_layer_answers_port_unreachable_on_the_transports_word(
    src: str, dst: str
) -> None:
    stack, link, _ = make_stack()
    toy = _ToyTransport(HANDLED)
    stack.register_transport(toy)
    handled = _toy_packet(src, dst, b"taken")
    link.inject(handled)
    assert toy.packets == [(a(src), a(dst), b"taken")]
    assert link.drain() == []
    toy.answer = MALFORMED
    link.inject(_toy_packet(src, dst, b"bad"))
    assert link.drain() == []  # a malformed packet is never answered
    toy.answer = UNKNOWN_DESTINATION
    unwanted = _toy_packet(src, dst, b"nobody")
    link.inject(unwanted)
    (out,) = link.drain()
    if len(a(src)) == 4:
        ip4 = IPv4Header.parse(out)
        assert (ip4.src, ip4.dst, ip4.protocol) == (a(dst), a(src), IPPROTO_ICMP)
        msg4 = icmpv4.ICMPv4Message.parse(out[ip4.header_length :])
        assert (msg4.type, msg4.code) == (icmpv4.DEST_UNREACHABLE, icmpv4.PORT_UNREACHABLE)
        assert msg4.payload == unwanted
        assert stack.counters.get("icmpv4.out.destination_unreachable") == 1
    else:
        ip6 = IPv6Header.parse(out)
        assert (ip6.src, ip6.dst) == (a(dst), a(src))
        msg6 = icmpv6.ICMPv6Message.parse(out[40:], ip6.src, ip6.dst)
        assert (msg6.type, msg6.code) == (icmpv6.DEST_UNREACHABLE, icmpv6.PORT_UNREACHABLE)
        assert msg6.payload == unwanted
    assert len(toy.packets) == 3


def test_a_stack_built_without_tcp_answers_tcp_with_protocol_unreachable() -> None:
    clock = ManualClock()
    stack = Stack(clock, seed=1, network=[IPv4Protocol], transport=[UDPProtocol])
    link = ChannelEndpoint(mtu=1500)
    stack.create_nic("eth0", link)
    stack.add_address("eth0", f"{STACK4}/24")
    stack.add_route("0.0.0.0/0", "eth0")
    assert sorted(stack.transports) == [IPPROTO_UDP]
    with pytest.raises(StackError):
        _ = stack.tcp
    with pytest.raises(StackError):
        _ = stack.ipv6
    syn = IPv4Header(src=a(HOST4), dst=a(STACK4), protocol=IPPROTO_TCP, ident=3).pack(bytes(20))
    link.inject(syn)
    (out,) = link.drain()
    msg = icmpv4.ICMPv4Message.parse(out[20:])
    assert (msg.type, msg.code) == (icmpv4.DEST_UNREACHABLE, icmpv4.PROTOCOL_UNREACHABLE)
    assert stack.counters.get("ipv4.unknown_protocol") == 1
    link.inject(udp_packet(HOST6, STACK6, 1, 2, b"v6"))  # no IPv6 registered
    assert link.drain() == []
    assert stack.counters.get("nic.eth0.rx_unknown_version") == 1


@pytest.mark.parametrize(("family", "remote"), [(4, HOST4), (6, HOST6)])
def test_the_one_send_path_keeps_dont_fragment_packets_whole(family: int, remote: str) -> None:
    stack, link, _ = make_stack(mtu=1280)
    route = stack.find_route(a(remote))
    assert not stack.send(route, IPPROTO_UDP, bytes(2000), dont_fragment=True)
    assert link.drain() == []
    assert stack.counters.get(f"ipv{family}.send_too_big_df") == 1
    assert stack.send(route, IPPROTO_UDP, bytes(2000))
    assert len(link.drain()) == 2  # without DF the source fragments (RFC 791, RFC 8200 4.5)
    assert stack.send(route, IPPROTO_UDP, bytes(100), dont_fragment=True, ttl=7)
    (out,) = link.drain()
    if family == 4:
        ip4 = IPv4Header.parse(out)
        assert ip4.dont_fragment and ip4.ttl == 7
    else:
        assert IPv6Header.parse(out).hop_limit == 7
