"""netstack.adapters: one errno table and one address conversion under UDP and TCP alike.

Each stack refusal and each ICMP error becomes the OSError subclass a kernel socket raises; a
``(host, port)`` is converted the same way, and a bad one refused with the same error, by
UDPSocket, create_datagram_endpoint, open_connection and start_server.
"""

from __future__ import annotations

import ast
import asyncio
import errno
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from netstack.adapters import (
    UDPSocket,
    create_datagram_endpoint,
    open_connection,
    start_server,
)
from netstack.adapters.address import is_wildcard, pack_address, pack_host, unpack_address
from netstack.adapters.errors import CONTROL_ERRNO, STACK_ERRNO, control_error, stack_error
from netstack.clock import ManualClock
from netstack.errors import MessageTooLongError, StackError
from netstack.header import icmpv4, icmpv6
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Header
from netstack.header.numbers import IPPROTO_ICMP, IPPROTO_ICMPV6
from netstack.link.channel import ChannelEndpoint
from netstack.ports import PortInUseError, PortsExhaustedError
from netstack.stack import AddressError, Control, NoRouteError, Stack
from tests.stackutil import HOST4, HOST6, STACK4, STACK6, a, make_stack

ROOT = Path(__file__).resolve().parent.parent

# -- the errno table ------------------------------------------------------------------------------

#: What a kernel socket reports for each ICMP error (RFC 1122 3.2.2.1, 4.2.3.9; RFC 4443 3.1):
#: the errno, and the OSError subclass Python raises for it.
CONTROL_EXPECTED = {
    Control.NET_UNREACHABLE: (errno.ENETUNREACH, OSError),
    Control.HOST_UNREACHABLE: (errno.EHOSTUNREACH, OSError),
    Control.PROTOCOL_UNREACHABLE: (errno.ECONNREFUSED, ConnectionRefusedError),
    Control.PORT_UNREACHABLE: (errno.ECONNREFUSED, ConnectionRefusedError),
    Control.ADMIN_PROHIBITED: (errno.EHOSTUNREACH, OSError),
    Control.TIME_EXCEEDED: (errno.EHOSTUNREACH, OSError),
    Control.PARAMETER_PROBLEM: (errno.EPROTO, OSError),
    Control.PACKET_TOO_BIG: (errno.EMSGSIZE, OSError),
}

#: What bind/connect/sendto on a kernel socket fail with for each refusal of the stack.
STACK_EXPECTED: list[tuple[type[StackError], int, type[OSError]]] = [
    (PortInUseError, errno.EADDRINUSE, OSError),
    (PortsExhaustedError, errno.EAGAIN, BlockingIOError),
    (NoRouteError, errno.ENETUNREACH, OSError),
    (AddressError, errno.EADDRNOTAVAIL, OSError),
    (MessageTooLongError, errno.EMSGSIZE, OSError),
    (StackError, errno.EINVAL, OSError),
]


def test_every_control_and_stack_error_kind_has_one_entry() -> None:
    assert set(CONTROL_ERRNO) == set(Control) == set(CONTROL_EXPECTED)
    assert set(STACK_ERRNO) == {kind for kind, _, _ in STACK_EXPECTED}


@pytest.mark.parametrize("control", list(Control), ids=lambda c: c.value)
def test_an_icmp_error_is_the_kernel_sockets_os_error(control: Control) -> None:
    code, cls = CONTROL_EXPECTED[control]
    exc = control_error(control)
    assert type(exc) is cls
    assert exc.errno == code


@pytest.mark.parametrize(("kind", "code", "cls"), STACK_EXPECTED, ids=lambda v: str(v))
def test_a_stack_refusal_is_the_kernel_sockets_os_error(
    kind: type[StackError], code: int, cls: type[OSError]
) -> None:
    exc = stack_error(kind("the reason"))
    assert type(exc) is cls
    assert exc.errno == code
    assert exc.strerror == "the reason"  # the stack's words, not the system's


def test_a_refusal_of_a_new_kind_takes_its_bases_errno() -> None:
    class ListenerClashError(PortInUseError):
        pass

    assert stack_error(ListenerClashError("x")).errno == errno.EADDRINUSE


# -- the address conversion -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "packed"),
    [
        (("10.0.0.2", 53), (bytes([10, 0, 0, 2]), 53)),
        (("fd00::2", 53), (bytes.fromhex("fd00" + "00" * 13 + "02"), 53)),
        (("fd00::2", 53, 0, 0), (bytes.fromhex("fd00" + "00" * 13 + "02"), 53)),  # asyncio's
        (("0.0.0.0", 7), (bytes(4), 7)),
        (("", 7), (bytes(4), 7)),
        ((None, 7), (bytes(4), 7)),
        (("::", 0), (bytes(16), 0)),
        (("::0", 65535), (bytes(16), 65535)),
    ],
)
def test_host_and_port_to_packed(address: tuple[Any, ...], packed: tuple[bytes, int]) -> None:
    assert pack_address(address) == packed
    assert is_wildcard(packed[0]) == (packed[0] in (bytes(4), bytes(16)))


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (("FD00:0:0::2", 53), ("fd00::2", 53)),
        (("10.000.0.2", 53), None),  # leading zeros are refused (ipaddress, since 3.9.5)
        (("::", 1), ("::", 1)),
        (("0.0.0.0", 2), ("0.0.0.0", 2)),
        (("::ffff:10.0.0.2", 3), ("::ffff:10.0.0.2", 3)),
    ],
)
def test_packed_back_to_text_is_canonical(
    address: tuple[str, int], text: tuple[str, int] | None
) -> None:
    if text is None:
        with pytest.raises(AddressError):
            pack_address(address)
        return
    assert unpack_address(*pack_address(address)) == text


def test_a_bad_host_is_an_address_error_and_a_bad_port_a_value_error() -> None:
    with pytest.raises(AddressError, match=r"not an IP address: 'dns\.example'"):
        pack_host("dns.example")
    for port in (-1, 65536, "53", 5.0):
        with pytest.raises(ValueError, match="bad port"):
            pack_address(("10.0.0.2", port))


# -- both adapters use them -----------------------------------------------------------------------


def _udp_bind(stack: Stack, host: Any, port: Any) -> Awaitable[Any]:
    async def go() -> None:
        UDPSocket(stack).bind((host, port))

    return go()


def _udp_connect(stack: Stack, host: Any, port: Any) -> Awaitable[Any]:
    async def go() -> None:
        UDPSocket(stack).connect((host, port))

    return go()


def _udp_sendto(stack: Stack, host: Any, port: Any) -> Awaitable[Any]:
    async def go() -> None:
        UDPSocket(stack).sendto(b"x", (host, port))

    return go()


def _datagram_endpoint(stack: Stack, host: Any, port: Any) -> Awaitable[Any]:
    return create_datagram_endpoint(stack, asyncio.DatagramProtocol, local_addr=(host, port))


def _tcp_connect(stack: Stack, host: Any, port: Any) -> Awaitable[Any]:
    return open_connection(stack, host, port)


def _tcp_listen(stack: Stack, host: Any, port: Any) -> Awaitable[Any]:
    async def on_connection(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        pass

    return start_server(stack, on_connection, host, port)


OPENERS: list[Callable[[Stack, Any, Any], Awaitable[Any]]] = [
    _udp_bind,
    _udp_connect,
    _udp_sendto,
    _datagram_endpoint,
    _tcp_connect,
    _tcp_listen,
]


def _raised(opener: Callable[[Stack, Any, Any], Awaitable[Any]], host: Any, port: Any) -> Any:
    stack, _, _ = make_stack()

    async def main() -> BaseException:
        try:
            await opener(stack, host, port)
        except Exception as exc:
            return exc
        raise AssertionError("no error")

    exc = asyncio.run(main())
    return type(exc), str(exc)


@pytest.mark.parametrize(("host", "port"), [("dns.example", 53), ("10.0.0.300", 53)])
def test_a_bad_host_gives_one_error_from_every_adapter(host: str, port: int) -> None:
    raised = {opener.__name__: _raised(opener, host, port) for opener in OPENERS}
    assert set(raised.values()) == {(AddressError, f"not an IP address: {host!r}")}, raised


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_bad_port_gives_one_error_from_every_adapter(port: int) -> None:
    raised = {opener.__name__: _raised(opener, STACK4, port) for opener in OPENERS}
    assert set(raised.values()) == {(ValueError, f"bad port {port}")}, raised


def test_no_route_gives_one_os_error_from_udp_and_tcp() -> None:
    stack = Stack(ManualClock())
    stack.create_nic("eth0", ChannelEndpoint())
    stack.add_address("eth0", "10.0.0.2/24")  # and no default route

    async def main() -> list[BaseException]:
        errors: list[BaseException] = []
        for opener in (_udp_sendto, _tcp_connect):
            with pytest.raises(OSError) as info:
                await opener(stack, "192.0.2.1", 53)
            errors.append(info.value)
        return errors

    for exc in asyncio.run(main()):
        assert exc.errno == errno.ENETUNREACH  # type: ignore[attr-defined]
        assert isinstance(exc.__cause__, NoRouteError)


@pytest.mark.parametrize("host", [STACK4, "0.0.0.0", "", "::"])
def test_a_port_in_use_gives_one_os_error_from_udp_and_tcp(host: str) -> None:
    stack, _, _ = make_stack()

    async def main() -> None:
        for opener in (_datagram_endpoint, _tcp_listen):
            await opener(stack, host, 5353)
            with pytest.raises(OSError) as info:
                await opener(stack, host, 5353)
            assert info.value.errno == errno.EADDRINUSE

    asyncio.run(main())


@pytest.mark.parametrize(
    ("host", "sockname"),
    [(None, "0.0.0.0"), ("", "0.0.0.0"), ("0.0.0.0", "0.0.0.0"), ("::", "::"), (STACK6, STACK6)],
)
def test_wildcards_mean_the_same_to_udp_and_tcp(host: str | None, sockname: str) -> None:
    stack, _, _ = make_stack()

    async def main() -> None:
        udp, _ = await _datagram_endpoint(stack, host, 7)
        tcp = await _tcp_listen(stack, host, 7)
        assert udp.get_extra_info("sockname") == (sockname, 7)
        assert tcp.sockets[0].getsockname() == (sockname, 7)
        assert tcp.get_extra_info("sockname") == (sockname, 7)

    asyncio.run(main())


def test_a_wildcard_local_addr_lets_the_route_choose_the_source() -> None:
    stack, link, _ = make_stack()

    async def main() -> None:
        connecting = asyncio.ensure_future(
            open_connection(stack, HOST4, 80, local_addr=("0.0.0.0", 40000))
        )
        await asyncio.sleep(0)
        (syn,) = link.drain()
        header = IPv4Header.parse(syn)
        assert (header.src, int.from_bytes(syn[20:22], "big")) == (a(STACK4), 40000)
        connecting.cancel()

    asyncio.run(main())


# -- an ICMP error reaches UDP and TCP as the same exception --------------------------------------


def _icmp_about(sent: bytes, control: Control) -> bytes:
    """The ICMP error a router on the way would send about ``sent`` (v4, or v6 if it is v6)."""
    if sent[0] >> 4 == 6:
        assert control is Control.ADMIN_PROHIBITED
        src, dst = sent[24:40], sent[8:24]
        err6 = icmpv6.ICMPv6Message(icmpv6.DEST_UNREACHABLE, icmpv6.ADMIN_PROHIBITED, 0, sent)
        body = err6.build(src, dst)
        return IPv6Header(src=src, dst=dst, next_header=IPPROTO_ICMPV6, hop_limit=64).pack(body)
    type_, code, rest = {
        Control.NET_UNREACHABLE: (icmpv4.DEST_UNREACHABLE, icmpv4.NET_UNREACHABLE, 0),
        Control.HOST_UNREACHABLE: (icmpv4.DEST_UNREACHABLE, icmpv4.HOST_UNREACHABLE, 0),
        Control.PROTOCOL_UNREACHABLE: (icmpv4.DEST_UNREACHABLE, icmpv4.PROTOCOL_UNREACHABLE, 0),
        Control.PORT_UNREACHABLE: (icmpv4.DEST_UNREACHABLE, icmpv4.PORT_UNREACHABLE, 0),
        Control.TIME_EXCEEDED: (icmpv4.TIME_EXCEEDED, 0, 0),
        Control.PARAMETER_PROBLEM: (icmpv4.PARAMETER_PROBLEM, 0, 8 << 24),
    }[control]
    src, dst = sent[16:20], sent[12:16]
    msg = icmpv4.ICMPv4Message(type_, code, rest, sent[:28])
    return IPv4Header(src=src, dst=dst, protocol=IPPROTO_ICMP, ttl=64, ident=9).pack(msg.build())


HARD_ERRORS = [c for c in Control if c is not Control.PACKET_TOO_BIG]  # that one lowers the MTU


@pytest.mark.parametrize("control", HARD_ERRORS, ids=lambda c: c.value)
def test_an_icmp_error_reaches_udp_and_tcp_as_one_exception(control: Control) -> None:
    """RFC 1122 4.1.3.3 and 4.2.3.9: a connected UDP socket, and a TCP connect in SYN-SENT."""
    peer = HOST6 if control is Control.ADMIN_PROHIBITED else HOST4
    stack, link, _ = make_stack()

    async def main() -> tuple[BaseException, BaseException]:
        sock = UDPSocket(stack)
        sock.connect((peer, 53))
        sock.send(b"query")
        (datagram,) = link.drain()
        link.inject(_icmp_about(datagram, control))
        with pytest.raises(OSError) as udp:
            await sock.recv()

        connecting = asyncio.ensure_future(open_connection(stack, peer, 53))
        await asyncio.sleep(0)
        (syn,) = link.drain()
        link.inject(_icmp_about(syn, control))
        with pytest.raises(OSError) as tcp:
            await connecting
        return udp.value, tcp.value

    udp, tcp = asyncio.run(main())
    code, cls = CONTROL_EXPECTED[control]
    assert (type(udp), udp.errno) == (type(tcp), tcp.errno) == (cls, code)  # type: ignore[attr-defined]


# -- the layering ---------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_adapters_import_asyncio_and_nothing_below_imports_them() -> None:
    below = [ROOT / "netstack" / "stack.py", ROOT / "netstack" / "ports.py"]
    for folder in ("header", "network", "transport"):
        below += sorted((ROOT / "netstack" / folder).rglob("*.py"))
    assert len(below) > 20
    for path in below:
        names = _imports(path)
        assert "asyncio" not in names, path
        assert not {n for n in names if n.split(".")[:2] == ["netstack", "adapters"]}, path
    assert not (ROOT / "netstack" / "sockets.py").exists()
    assert not (ROOT / "netstack" / "transport" / "tcp" / "streams.py").exists()
