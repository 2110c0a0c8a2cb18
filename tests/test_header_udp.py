"""UDP (RFC 768): round trips, checksum rules per family, bit flips and known answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.errors import ParseError
from netstack.header.checksum import transport_checksum
from netstack.header.numbers import IPPROTO_UDP
from netstack.header.udp import UDP_HEADER_LEN, UDPHeader, build_udp, udp_checksum_ok

addr_pairs = st.sampled_from([4, 16]).flatmap(
    lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))
)
ports = st.integers(0, 0xFFFF)

# smoltcp src/wire/udp.rs test vector: 192.168.1.1:48896 -> 192.168.1.2:53, 4 data bytes.
SMOLTCP_SRC = bytes((192, 168, 1, 1))
SMOLTCP_DST = bytes((192, 168, 1, 2))
SMOLTCP_DATAGRAM = bytes.fromhex("bf000035000c124d aa0000ff")


def test_known_answer() -> None:
    assert UDPHeader.parse(SMOLTCP_DATAGRAM) == UDPHeader(48896, 53, 12)
    assert UDPHeader.parse(SMOLTCP_DATAGRAM).checksum == 0x124D
    assert udp_checksum_ok(SMOLTCP_SRC, SMOLTCP_DST, SMOLTCP_DATAGRAM)
    assert build_udp(SMOLTCP_SRC, SMOLTCP_DST, 48896, 53, b"\xaa\x00\x00\xff") == SMOLTCP_DATAGRAM


@given(addr_pairs, ports, ports, st.binary(max_size=200), st.binary(max_size=8))
def test_round_trip(
    addrs: tuple[bytes, bytes], sport: int, dport: int, payload: bytes, trailer: bytes
) -> None:
    src, dst = addrs
    datagram = build_udp(src, dst, sport, dport, payload)
    assert datagram[UDP_HEADER_LEN:] == payload
    hdr = UDPHeader.parse(datagram + trailer)
    assert hdr == UDPHeader(sport, dport, UDP_HEADER_LEN + len(payload))
    assert hdr.checksum != 0
    assert hdr.build() == datagram[:UDP_HEADER_LEN]
    assert udp_checksum_ok(src, dst, datagram)
    assert udp_checksum_ok(src, dst, memoryview(datagram))
    assert build_udp(src, dst, sport, dport, memoryview(payload)) == datagram


@given(addr_pairs, ports, ports, st.binary(max_size=64), st.data())
def test_one_bit_flip_is_detected(
    addrs: tuple[bytes, bytes], sport: int, dport: int, payload: bytes, data: st.DataObject
) -> None:
    src, dst = addrs
    datagram = bytearray(build_udp(src, dst, sport, dport, payload))
    bit = data.draw(st.integers(0, len(datagram) * 8 - 1))
    datagram[bit // 8] ^= 1 << (bit % 8)
    if datagram[6:8] == b"\x00\x00" and len(src) == 4:
        # The flip produced "no checksum", which IPv4 accepts (RFC 768): not detectable.
        assert udp_checksum_ok(src, dst, datagram)
    else:
        assert not udp_checksum_ok(src, dst, datagram)


def _payload_with_zero_checksum(src: bytes, dst: bytes) -> bytes:
    """Two payload bytes chosen so that the computed checksum is 0."""
    partial = transport_checksum(src, dst, IPPROTO_UDP, bytes.fromhex("0001 0002 000a 0000 0000"))
    # Adding the old checksum as a data word makes the sum all ones, so the checksum is 0.
    return partial.to_bytes(2, "big")


@pytest.mark.parametrize("family", [4, 16])
def test_zero_checksum_is_sent_as_ffff(family: int) -> None:
    src, dst = bytes(range(1, family + 1)), bytes(range(9, family + 9))
    payload = _payload_with_zero_checksum(src, dst)
    datagram = build_udp(src, dst, 1, 2, payload)
    # RFC 768: "If the computed checksum is zero, it is transmitted as all ones".
    assert datagram[6:8] == b"\xff\xff"
    assert udp_checksum_ok(src, dst, datagram)


def test_zero_checksum_means_none_on_ipv4_only() -> None:
    datagram = bytearray(build_udp(bytes(4), bytes(4), 1, 2, b"xyz"))
    datagram[6:8] = b"\x00\x00"
    datagram[8] ^= 0xFF  # the data no longer matches any checksum
    assert udp_checksum_ok(bytes(4), bytes(4), datagram)
    # RFC 8200 section 8.1: IPv6 receivers discard UDP packets with a zero checksum.
    assert not udp_checksum_ok(bytes(16), bytes(16), datagram)
    assert not udp_checksum_ok(bytes(4), bytes(4), datagram[:7])


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "truncated"),
        (bytes(7), "truncated"),
        (bytes.fromhex("0001000200070000"), "bad_length"),
        (bytes.fromhex("00010002000a0000") + b"\x00", "bad_length"),
    ],
)
def test_rejections(datagram: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        UDPHeader.parse(datagram)
    assert info.value.reason == reason


@given(st.binary(max_size=40))
def test_arbitrary_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        hdr = UDPHeader.parse(data)
    except ParseError as exc:
        assert exc.reason in {"truncated", "bad_length"}
    else:
        assert UDP_HEADER_LEN <= hdr.length <= len(data)


def test_build_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        build_udp(bytes(4), bytes(4), 70000, 53, b"")
    with pytest.raises(ValueError):
        build_udp(bytes(4), bytes(4), 1, 53, bytes(0xFFFF - 7))
    assert len(build_udp(bytes(4), bytes(4), 1, 53, bytes(0xFFFF - 8))) == 0xFFFF


@given(st.binary(max_size=40))
def test_the_named_offsets_agree_with_parse_on_any_bytes(data: bytes) -> None:
    """The named field offsets read what the one parse reads (there was a second parser)."""
    from netstack.header.udp import (
        UDP_CHECKSUM_AT,
        UDP_DST_PORT_AT,
        UDP_LENGTH_AT,
        UDP_SRC_PORT_AT,
    )

    try:
        record = UDPHeader.parse(data)
    except ParseError:
        return
    peeked = tuple(
        int.from_bytes(data[at : at + 2], "big")
        for at in (UDP_SRC_PORT_AT, UDP_DST_PORT_AT, UDP_LENGTH_AT, UDP_CHECKSUM_AT)
    )
    assert peeked == (
        record.src_port,
        record.dst_port,
        record.length,
        record.checksum,
    )
