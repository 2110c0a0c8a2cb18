"""Helpers for tests that drive a Stack through an in-memory channel link."""

from __future__ import annotations

from netstack.clock import ManualClock
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Header
from netstack.header.numbers import IPPROTO_UDP
from netstack.header.udp import build_udp
from netstack.link.channel import ChannelEndpoint
from netstack.stack import Stack, StackOptions, parse_address

HOST4 = "10.0.0.1"  # the peer that sends into the stack
STACK4 = "10.0.0.2"
HOST6 = "fd00::1"
STACK6 = "fd00::2"


def make_stack(
    mtu: int = 1500, options: StackOptions | None = None, seed: int = 1
) -> tuple[Stack, ChannelEndpoint, ManualClock]:
    """A stack with one NIC on a channel link, addresses 10.0.0.2/24 and fd00::2/64, and routes."""
    clock = ManualClock()
    stack = Stack(clock, options, seed=seed)
    link = ChannelEndpoint(mtu=mtu)
    stack.create_nic("eth0", link)
    stack.add_address("eth0", f"{STACK4}/24")
    stack.add_address("eth0", f"{STACK6}/64")
    stack.add_route("0.0.0.0/0", "eth0")
    stack.add_route("::/0", "eth0")
    return stack, link, clock


def a(text: str) -> bytes:
    """Pack an address."""
    return parse_address(text)


def udp_packet(
    src: str, dst: str, sport: int, dport: int, payload: bytes, *, ttl: int = 64
) -> bytes:
    """A whole IPv4 or IPv6 packet carrying one UDP datagram."""
    s, d = a(src), a(dst)
    datagram = build_udp(s, d, sport, dport, payload)
    if len(s) == 4:
        return IPv4Header(src=s, dst=d, protocol=IPPROTO_UDP, ttl=ttl, ident=7).pack(datagram)
    return IPv6Header(src=s, dst=d, next_header=IPPROTO_UDP, hop_limit=ttl).pack(datagram)
