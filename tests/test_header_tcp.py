"""TCP header and options (RFC 9293, RFC 7323, RFC 2018): round trips, rejections, checksum."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from netstack.errors import ParseError
from netstack.header.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    NO_OPTIONS,
    PSH,
    RST,
    SYN,
    TCP_MIN_HEADER_LEN,
    URG,
    TCPHeader,
    TCPOptions,
    build_tcp,
    flags_str,
    tcp_checksum_ok,
)

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
addr_pairs = st.sampled_from([4, 16]).flatmap(
    lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))
)
unknown_kinds = st.integers(9, 255) | st.sampled_from([6, 7])

options_strategy = st.builds(
    TCPOptions,
    mss=st.none() | u16,
    window_scale=st.none() | st.integers(0, 255),
    sack_permitted=st.booleans(),
    sack_blocks=st.lists(st.tuples(u32, u32), max_size=4).map(tuple),
    timestamp=st.none() | st.tuples(u32, u32),
    unknown=st.lists(st.tuples(unknown_kinds, st.binary(max_size=6)), max_size=3).map(tuple),
)


def fits(options: TCPOptions) -> bool:
    try:
        options.build()
    except ValueError:
        return False
    return True


fitting_options = options_strategy.filter(fits)

headers = st.builds(
    TCPHeader,
    src_port=u16,
    dst_port=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 255),
    window=u16,
    urgent=u16,
    options=st.just(NO_OPTIONS) | fitting_options,
)

# smoltcp src/wire/tcp.rs test vector: 192.168.1.1:48896 -> 192.168.1.2:80,
# FIN|RST|ACK|URG, window 0x123, urgent 0x201, checksum 0x20be, 4 data bytes.
SRC = bytes((192, 168, 1, 1))
DST = bytes((192, 168, 1, 2))
SMOLTCP_SEGMENT = bytes.fromhex("bf000050 01234567 89abcdef 50350123 20be0201 aa0000ff")


def test_known_answer_segment() -> None:
    hdr = TCPHeader.parse(SMOLTCP_SEGMENT)
    assert hdr == TCPHeader(
        src_port=48896,
        dst_port=80,
        seq=0x01234567,
        ack=0x89ABCDEF,
        flags=FIN | RST | ACK | URG,
        window=0x123,
        urgent=0x201,
    )
    assert hdr.checksum == 0x20BE
    assert hdr.header_length == 20
    assert tcp_checksum_ok(SRC, DST, SMOLTCP_SEGMENT)
    assert build_tcp(SRC, DST, hdr, SMOLTCP_SEGMENT[20:]) == SMOLTCP_SEGMENT


def test_known_answer_linux_syn_options() -> None:
    # The option block of a Linux SYN: mss 1460, sackOK, TS val 1 ecr 0, nop, wscale 7.
    raw = bytes.fromhex("020405b4 0402080a 00000001 00000000 01030307")
    opts = TCPOptions.parse(raw)
    assert opts == TCPOptions(mss=1460, window_scale=7, sack_permitted=True, timestamp=(1, 0))
    # The canonical layout is this very block: 20 bytes, 32-bit values aligned.
    assert opts.build() == raw


@given(fitting_options)
def test_options_round_trip(options: TCPOptions) -> None:
    raw = options.build()
    assert len(raw) % 4 == 0
    assert len(raw) <= 40
    assert TCPOptions.parse(raw) == options


@given(options_strategy)
def test_options_build_size_and_refusal(options: TCPOptions) -> None:
    # The canonical layout: MSS 4, SACK-permitted/timestamps 4 or 12, NOP+wscale 4,
    # NOP NOP + SACK 4 + 8n, then the unknown options, NOP-padded to a multiple of 4.
    size = 4 if options.mss is not None else 0
    size += 12 if options.timestamp else 4 if options.sack_permitted else 0
    size += 4 if options.window_scale is not None else 0
    size += 4 + 8 * len(options.sack_blocks) if options.sack_blocks else 0
    size += sum(2 + len(data) for _, data in options.unknown)
    size += -size & 3
    if size > 40:
        with pytest.raises(ValueError):
            options.build()
    else:
        assert len(options.build()) == size


@given(headers, addr_pairs, st.binary(max_size=100))
def test_segment_round_trip(hdr: TCPHeader, addrs: tuple[bytes, bytes], payload: bytes) -> None:
    src, dst = addrs
    segment = build_tcp(src, dst, hdr, payload)
    parsed = TCPHeader.parse(segment)
    assert parsed == hdr
    assert parsed.header_length == len(hdr.build())
    assert segment[parsed.header_length :] == payload
    assert tcp_checksum_ok(src, dst, segment)
    assert tcp_checksum_ok(src, dst, memoryview(segment))
    # build() is the same header with a zero checksum field.
    assert hdr.build()[16:18] == b"\x00\x00"
    assert hdr.build()[:16] == segment[:16]
    assert TCPHeader.parse(memoryview(segment)) == hdr


@given(headers, addr_pairs, st.binary(max_size=40), st.data())
def test_one_bit_flip_is_detected(
    hdr: TCPHeader, addrs: tuple[bytes, bytes], payload: bytes, data: st.DataObject
) -> None:
    src, dst = addrs
    segment = bytearray(build_tcp(src, dst, hdr, payload))
    bit = data.draw(st.integers(0, len(segment) * 8 - 1))
    segment[bit // 8] ^= 1 << (bit % 8)
    assert not tcp_checksum_ok(src, dst, segment)


@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        hdr = TCPHeader.parse(data)
    except ParseError as exc:
        assert exc.reason in {"truncated", "bad_data_offset", "bad_option"}
    else:
        assert TCP_MIN_HEADER_LEN <= hdr.header_length <= len(data)
    try:
        TCPOptions.parse(data)
    except ParseError as exc:
        assert exc.reason == "bad_option"


@pytest.mark.parametrize(
    "raw",
    [
        b"\x02",  # kind without length
        b"\x02\x04\x05",  # MSS past the end
        b"\x02\x03\x05\x01",  # MSS with length 3
        b"\x03\x02\x01\x01",  # window scale with length 2
        b"\x04\x03\x00\x01",  # SACK-permitted with length 3
        b"\x05\x02\x01\x01",  # SACK with no blocks
        b"\x05\x09" + bytes(7),  # SACK length not 2 + 8n
        b"\x08\x0a" + bytes(7),  # timestamp past the end
        b"\x08\x06" + bytes(4),  # timestamp with length 6
        b"\x1e\x01\x01\x01",  # unknown kind with length 1
        b"\x1e\x00\x01\x01",  # unknown kind with length 0
    ],
)
def test_malformed_options(raw: bytes) -> None:
    with pytest.raises(ParseError) as info:
        TCPOptions.parse(raw)
    assert info.value.reason == "bad_option"


def test_options_details() -> None:
    assert TCPOptions.parse(b"") is NO_OPTIONS
    # EOL ends the list: whatever follows it is padding and is not read.
    assert TCPOptions.parse(b"\x01\x00\x02\x01") == TCPOptions()
    # Unknown options are kept with their data, in order.
    assert TCPOptions.parse(b"\x1e\x04\xab\xcd\x22\x02\x01\x01").unknown == (
        (30, b"\xab\xcd"),
        (34, b""),
    )
    sack = TCPOptions.parse(b"\x01\x01\x05\x12" + bytes(range(16)))
    assert sack.sack_blocks == ((0x00010203, 0x04050607), (0x08090A0B, 0x0C0D0E0F))
    # A repeated option keeps its last value.
    assert TCPOptions.parse(b"\x02\x04\x00\x01\x02\x04\x00\x02").mss == 2


@pytest.mark.parametrize(
    "options",
    [
        TCPOptions(sack_blocks=((1, 2),) * 5),
        TCPOptions(mss=70000),
        TCPOptions(timestamp=(1 << 32, 0)),
        TCPOptions(unknown=((2, b"\x00\x00"),)),  # a known kind cannot pass as unknown
        TCPOptions(unknown=((30, bytes(39)),)),
    ],
)
def test_options_build_rejects(options: TCPOptions) -> None:
    with pytest.raises(ValueError):
        options.build()


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        (bytes(19), "truncated"),
        (bytes(12) + b"\x40" + bytes(7), "bad_data_offset"),
        (bytes(12) + b"\x60" + bytes(7), "bad_data_offset"),
        (bytes(12) + b"\x60" + bytes(7) + b"\x02\x04\x05", "bad_data_offset"),
        (bytes(12) + b"\x60" + bytes(7) + b"\x02\x05\x00\x00", "bad_option"),
    ],
)
def test_header_rejections(segment: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        TCPHeader.parse(segment)
    assert info.value.reason == reason


def test_build_rejects_bad_fields() -> None:
    with pytest.raises(ValueError):
        TCPHeader(1, 2, 1 << 32, 0, SYN, 100).build()
    with pytest.raises(ValueError):
        build_tcp(SRC, DST, TCPHeader(1, 2, 0, 0, 256, 100))


def test_flags_str() -> None:
    assert flags_str(SYN | ACK) == "SYN,ACK"
    assert flags_str(FIN | PSH | ACK) == "FIN,PSH,ACK"
    assert flags_str(ECE | CWR | SYN) == "SYN,ECE,CWR"
    assert flags_str(RST) == "RST"
    assert flags_str(0) == "none"


@given(st.integers(0, 255))
def test_flags_str_names_each_bit(flags: int) -> None:
    names = flags_str(flags).split(",")
    assume(flags)
    assert len(names) == bin(flags).count("1")
