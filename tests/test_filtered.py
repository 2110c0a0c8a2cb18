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


# -- prefix rules --------------------------------------------------------------------------------


def test_prefix_rule_claims_the_whole_prefix() -> None:
    dev, _, counters = make()
    sink = Sink()
    dev.add_prefix_rule("198.18.0.0/15", sink)
    packets = [
        ipv4("198.18.0.1"),
        ipv4("198.19.255.254"),
        ipv4("198.17.255.255"),
        ipv4("198.20.0.0"),
        ipv6("::c612:1"),  # 198.18.0.1's bits, but IPv6: not claimed by an IPv4 prefix
    ]
    rest = dev.filter(packets)
    assert sink.packets == packets[:2]
    assert rest == packets[2:]
    assert dev.prefixes == ["198.18.0.0/15"]
    assert counters.get("filter.claimed") == 2
    assert counters.get("filter.claimed_prefix") == 2
    assert counters.get("filter.unclaimed") == 3


def test_longest_prefix_wins() -> None:
    dev, _, _ = make()
    wide, narrow, narrowest = Sink(), Sink(), Sink()
    dev.add_prefix_rule("198.18.0.0/24", narrow)
    dev.add_prefix_rule("198.18.0.0/15", wide)
    dev.add_prefix_rule("198.18.0.128/25", narrowest)
    dev.filter([ipv4("198.18.0.1"), ipv4("198.18.0.200"), ipv4("198.18.1.1")])
    assert narrow.packets == [ipv4("198.18.0.1")]
    assert narrowest.packets == [ipv4("198.18.0.200")]
    assert wide.packets == [ipv4("198.18.1.1")]
    assert dev.prefixes == ["198.18.0.0/24", "198.18.0.0/15", "198.18.0.128/25"]


def test_exact_rule_beats_prefix_rule() -> None:
    dev, _, counters = make()
    exact, prefix = Sink(), Sink()
    dev.add_prefix_rule("10.30.30.0/24", prefix)
    dev.add_prefix_rule("0.0.0.0/0", Sink())
    dev.add_rule("10.30.30.30", exact)
    dev.filter([ipv4("10.30.30.30"), ipv4("10.30.30.31")])
    assert exact.packets == [ipv4("10.30.30.30")]
    assert prefix.packets == [ipv4("10.30.30.31")]
    assert counters.get("filter.claimed") == 2
    assert counters.get("filter.claimed_prefix") == 1


def test_ipv6_prefix_rule() -> None:
    dev, _, counters = make()
    sink, v4 = Sink(), Sink()
    dev.add_prefix_rule("fd00:198:18::/64", sink)
    dev.add_prefix_rule("0.0.0.0/0", v4)
    packets = [ipv6("fd00:198:18::1"), ipv6("fd00:198:18:0:ffff::"), ipv6("fd00:198:19::1")]
    assert dev.filter(packets) == [packets[2]]
    assert sink.packets == packets[:2]
    assert v4.packets == []  # an IPv4 /0 claims no IPv6 packet
    assert counters.get("filter.claimed_prefix") == 2


def test_prefix_rules_can_be_removed() -> None:
    dev, _, counters = make()
    wide, narrow = Sink(), Sink()
    dev.add_prefix_rule("198.18.0.0/15", wide)
    dev.add_prefix_rule("198.18.0.0/24", narrow)
    dev.remove_prefix_rule("198.18.0.0/24")
    dev.filter([ipv4("198.18.0.1")])
    assert wide.packets == [ipv4("198.18.0.1")]
    assert narrow.packets == []
    dev.remove_prefix_rule("198.18.0.0/15")
    assert dev.prefixes == []
    assert dev.filter([ipv4("198.18.0.1")]) == [ipv4("198.18.0.1")]
    assert counters.get("filter.unclaimed") == 1
    with pytest.raises(KeyError):
        dev.remove_prefix_rule("198.18.0.0/15")


def test_prefix_rule_errors() -> None:
    dev, _, _ = make()
    dev.add_prefix_rule("198.18.0.0/15", Sink())
    with pytest.raises(ValueError, match="already has a prefix rule"):
        dev.add_prefix_rule("198.18.0.0/15", Sink())
    with pytest.raises(ValueError, match="host bits set"):
        dev.add_prefix_rule("198.18.0.1/15", Sink())
    dev.add_prefix_rule("fd00::/64", Sink())
    with pytest.raises(ValueError, match="already has a prefix rule"):
        dev.add_prefix_rule("fd00:0:0:0::/64", Sink())  # the same prefix spelt otherwise
    assert dev.prefixes == ["198.18.0.0/15", "fd00::/64"]


def test_a_prefix_rule_and_an_address_rule_are_kept_apart() -> None:
    dev, _, _ = make()
    dev.add_rule("198.18.0.1", Sink())
    dev.add_prefix_rule("198.18.0.1/32", Sink())  # not a duplicate: a different kind of rule
    assert dev.addresses == ["198.18.0.1"]
    assert dev.prefixes == ["198.18.0.1/32"]


PREFIXES = st.builds(
    lambda address, length: ipaddress.ip_network(f"{address}/{length}", strict=False),
    st.sampled_from(["198.18.0.0", "198.18.0.128", "198.19.7.0", "10.0.0.0", "0.0.0.0"]),
    st.integers(0, 32),
)


@given(
    st.lists(PREFIXES, max_size=8, unique=True),
    st.lists(st.integers(0, 2**32 - 1) | st.sampled_from([0xC6120001, 0xC6120080]), max_size=20),
)
def test_prefix_lookup_matches_longest_prefix_reference(
    networks: list[ipaddress.IPv4Network], destinations: list[int]
) -> None:
    dev, _, _ = make()
    sinks = {network: Sink() for network in networks}
    for network, sink in sinks.items():
        dev.add_prefix_rule(str(network), sink)
    for destination in destinations:
        address = ipaddress.IPv4Address(destination)
        packet = ipv4(str(address))
        holding = [network for network in networks if address in network]
        rest = dev.filter([packet])
        if holding:
            best = max(holding, key=lambda network: network.prefixlen)
            assert rest == []
            assert sinks[best].packets[-1] is packet
        else:
            assert rest == [packet]
    assert sum(len(sink.packets) for sink in sinks.values()) <= len(destinations)
