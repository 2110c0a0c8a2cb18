"""FilteredDevice: rules by destination address, unclaimed packets, writes bypassing rules."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.counters import Counters
from olm.device.filtered import FilteredDevice


def ipv4(dst: str, size: int = 28) -> bytes:
    header = bytearray(20)
    header[0] = 0x45
    header[12:16] = ipaddress.IPv4Address("192.0.2.1").packed
    header[16:20] = ipaddress.IPv4Address(dst).packed
    return bytes(header) + bytes(size - 20)


def ipv6(dst: str) -> bytes:
    header = bytearray(40)
    header[0] = 0x60
    header[8:24] = ipaddress.IPv6Address("2001:db8::1").packed
    header[24:40] = ipaddress.IPv6Address(dst).packed
    return bytes(header)


class Sink:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def __call__(self, packet: bytes) -> None:
        self.packets.append(packet)


def make() -> tuple[FilteredDevice, list[list[bytes]], Counters]:
    written: list[list[bytes]] = []

    def write(batch: list[bytes]) -> int:
        written.append(batch)
        return len(batch)

    counters = Counters()
    return FilteredDevice(write, counters=counters), written, counters


def test_claimed_go_to_handlers_and_unclaimed_come_back_in_order() -> None:
    dev, _, counters = make()
    v4, v6 = Sink(), Sink()
    dev.add_rule("10.30.30.30", v4)
    dev.add_rule("fd30:30:30::30", v6)
    packets = [
        ipv4("10.30.30.30"),
        ipv4("10.30.30.31"),
        ipv6("fd30:30:30::30"),
        ipv6("fd30:30:30::31"),
        ipv4("10.30.30.30", 40),
    ]
    rest = dev.filter(packets)
    assert rest == [packets[1], packets[3]]
    assert v4.packets == [packets[0], packets[4]]
    assert v6.packets == [packets[2]]
    assert counters.get("filter.claimed") == 3
    assert counters.get("filter.unclaimed") == 2


def test_ipv4_address_bytes_inside_an_ipv6_packet_do_not_match() -> None:
    dev, _, _ = make()
    sink = Sink()
    dev.add_rule("10.30.30.30", sink)
    packet = bytearray(ipv6("::a1e:1e1e"))  # ...0a1e:1e1e at the end: not bytes 24-40 as IPv4
    packet[16:20] = ipaddress.IPv4Address("10.30.30.30").packed
    assert dev.filter([bytes(packet)]) == [bytes(packet)]
    assert sink.packets == []


def test_malformed_packets_are_counted_and_unclaimed() -> None:
    dev, _, counters = make()
    dev.add_rule("10.30.30.30", Sink())
    bad = [b"", ipv4("10.30.30.30")[:19], ipv6("::1")[:39], b"\x50" + bytes(40)]
    assert dev.filter(bad) == bad
    assert counters.get("filter.malformed.empty") == 1
    assert counters.get("filter.malformed.short_ipv4") == 1
    assert counters.get("filter.malformed.short_ipv6") == 1
    assert counters.get("filter.malformed.bad_version") == 1


def test_receive_passes_unclaimed_to_next_consumer_default_drops() -> None:
    dev, _, counters = make()
    dev.receive([ipv4("192.0.2.9")])
    assert counters.get("filter.unclaimed_dropped") == 1
    sink = Sink()
    dev.next_consumer = sink
    dev.receive([ipv4("192.0.2.9"), ipv4("192.0.2.10")])
    assert len(sink.packets) == 2
    assert counters.get("filter.unclaimed_dropped") == 1


def test_rules_can_be_removed_and_not_duplicated() -> None:
    dev, _, _ = make()
    sink = Sink()
    dev.add_rule("10.30.30.30", sink)
    with pytest.raises(ValueError, match="already has a rule"):
        dev.add_rule("10.30.30.30", Sink())
    assert dev.addresses == ["10.30.30.30"]
    dev.remove_rule("10.30.30.30")
    assert dev.filter([ipv4("10.30.30.30")]) == [ipv4("10.30.30.30")]
    with pytest.raises(KeyError):
        dev.remove_rule("10.30.30.30")


def test_writes_bypass_rules() -> None:
    dev, written, counters = make()
    sink = Sink()
    dev.add_rule("10.30.30.30", sink)
    assert dev.write_packets(iter([ipv4("10.30.30.30")])) == 1
    assert written == [[ipv4("10.30.30.30")]]
    assert sink.packets == []
    assert counters.get("filter.written") == 1


class Dispatcher:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def deliver_network_packet(self, packet: bytes) -> None:
        self.packets.append(packet)


def test_stack_link_receives_claimed_and_writes_to_tun() -> None:
    dev, written, counters = make()
    link = dev.stack_link(1400, ["10.30.30.30", "fd30:30:30::30"])
    assert link.mtu == 1400
    disp = Dispatcher()
    dev.filter([ipv4("10.30.30.30")])  # not attached yet: dropped and counted
    assert counters.get("filter.link.rx_dropped_detached") == 1
    link.attach(disp)
    rest = dev.filter([ipv6("fd30:30:30::30"), ipv4("192.0.2.1")])
    assert disp.packets == [ipv6("fd30:30:30::30")]
    assert rest == [ipv4("192.0.2.1")]
    assert link.write_packets([ipv4("192.0.2.1")]) == 1
    assert written == [[ipv4("192.0.2.1")]]
    link.close()
    assert dev.addresses == []
    assert link.write_packets([ipv4("192.0.2.1")]) == 0
    assert counters.get("filter.link.dropped_closed") == 1


@given(st.lists(st.binary(max_size=60), max_size=20))
def test_arbitrary_packets_are_each_either_claimed_or_returned(packets: list[bytes]) -> None:
    dev, _, _ = make()
    sink = Sink()
    dev.add_rule("0.0.0.0", sink)
    dev.add_rule("::", sink)
    rest = dev.filter(packets)
    assert len(rest) + len(sink.packets) == len(packets)
    for packet in sink.packets:
        assert packet[0] >> 4 in (4, 6)
