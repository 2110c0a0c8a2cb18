"""ICMPv4 (RFC 792) and ICMPv6 (RFC 4443): round trips, checksums, fields, known answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.errors import ParseError
from netstack.header import icmpv4, icmpv6
from netstack.header.icmpv4 import ICMPv4Message
from netstack.header.icmpv6 import ICMPv6Message

addr6 = st.binary(min_size=16, max_size=16)
v4_messages = st.builds(
    ICMPv4Message,
    type=st.integers(0, 255),
    code=st.integers(0, 255),
    rest=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=100),
)
v6_messages = st.builds(
    ICMPv6Message,
    type=st.integers(0, 255),
    code=st.integers(0, 255),
    rest=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=100),
)

FE80_1 = bytes.fromhex("fe80" + "00" * 13 + "01")
FE80_2 = bytes.fromhex("fe80" + "00" * 13 + "02")


def test_icmpv4_echo_known_answer() -> None:
    # smoltcp src/wire/icmpv4.rs: echo request id 0x1234 seq 0xabcd, checksum 0x8efe.
    raw = bytes.fromhex("08008efe1234abcdaa0000ff")
    msg = ICMPv4Message.parse(raw)
    assert msg == icmpv4.echo_request(0x1234, 0xABCD, b"\xaa\x00\x00\xff")
    assert (msg.type, msg.ident, msg.sequence, msg.checksum) == (8, 0x1234, 0xABCD, 0x8EFE)
    assert not msg.is_error
    assert msg.build() == raw


def test_icmpv6_known_answers() -> None:
    # smoltcp src/wire/icmpv6.rs, fe80::1 -> fe80::2: an echo request and a Packet Too Big
    # (MTU 1500) quoting an IPv6/UDP packet.
    echo = bytes.fromhex("800019b31234abcdaa0000ff")
    msg = ICMPv6Message.parse(echo, FE80_1, FE80_2)
    assert msg == icmpv6.echo_request(0x1234, 0xABCD, b"\xaa\x00\x00\xff")
    assert msg.build(FE80_1, FE80_2) == echo
    quoted = (
        bytes.fromhex("60000000000c1140")
        + FE80_1
        + FE80_2
        + bytes.fromhex("bf000035000c124daa0000ff")
    )
    ptb = bytes.fromhex("02000fc9000005dc") + quoted
    msg = ICMPv6Message.parse(ptb, FE80_1, FE80_2)
    assert (msg.type, msg.mtu, msg.payload, msg.is_error) == (2, 1500, quoted, True)
    assert msg.build(FE80_1, FE80_2) == ptb
    # The same bytes from other addresses fail the pseudo-header checksum.
    with pytest.raises(ParseError) as info:
        ICMPv6Message.parse(ptb, FE80_1, FE80_1)
    assert info.value.reason == "bad_checksum"


@given(v4_messages)
def test_icmpv4_round_trip(msg: ICMPv4Message) -> None:
    raw = msg.build()
    parsed = ICMPv4Message.parse(raw)
    assert parsed == msg
    assert parsed.checksum == int.from_bytes(raw[2:4], "big")
    assert ICMPv4Message.parse(memoryview(raw)) == msg
    assert parsed.ident << 16 | parsed.sequence == msg.rest
    assert parsed.mtu == msg.rest & 0xFFFF
    assert parsed.pointer == msg.rest >> 24
    assert parsed.is_error == (msg.type in (3, 4, 5, 11, 12))


@given(v6_messages, addr6, addr6)
def test_icmpv6_round_trip(msg: ICMPv6Message, src: bytes, dst: bytes) -> None:
    raw = msg.build(src, dst)
    parsed = ICMPv6Message.parse(raw, src, dst)
    assert parsed == msg
    assert parsed.checksum == int.from_bytes(raw[2:4], "big")
    assert parsed.mtu == parsed.pointer == msg.rest
    assert parsed.is_error == (msg.type < 128)


@given(v4_messages, st.data())
def test_icmpv4_one_bit_flip_is_detected(msg: ICMPv4Message, data: st.DataObject) -> None:
    raw = bytearray(msg.build())
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ParseError) as info:
        ICMPv4Message.parse(raw)
    assert info.value.reason == "bad_checksum"
    assert ICMPv4Message.parse(raw, verify_checksum=False).type == raw[0]


@given(v6_messages, addr6, addr6, st.data())
def test_icmpv6_one_bit_flip_is_detected(
    msg: ICMPv6Message, src: bytes, dst: bytes, data: st.DataObject
) -> None:
    raw = bytearray(msg.build(src, dst))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ParseError) as info:
        ICMPv6Message.parse(raw, src, dst)
    assert info.value.reason == "bad_checksum"


@given(st.binary(max_size=40), addr6, addr6)
def test_arbitrary_bytes_raise_only_parse_error(data: bytes, src: bytes, dst: bytes) -> None:
    for parse in (
        lambda: ICMPv4Message.parse(data),
        lambda: ICMPv6Message.parse(data, src, dst),
    ):
        try:
            msg = parse()
        except ParseError as exc:
            assert exc.reason in {"truncated", "bad_checksum"}
        else:
            assert msg.payload == data[8:]


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=56))
def test_echo_replies(ident: int, seq: int, payload: bytes) -> None:
    req4 = icmpv4.echo_request(ident, seq, payload)
    rep4 = icmpv4.echo_reply_for(req4)
    assert (rep4.type, rep4.code, rep4.ident, rep4.sequence, rep4.payload) == (
        icmpv4.ECHO_REPLY,
        0,
        ident,
        seq,
        payload,
    )
    req6 = icmpv6.echo_request(ident, seq, payload)
    rep6 = icmpv6.echo_reply_for(req6)
    assert (rep6.type, rep6.ident, rep6.sequence, rep6.payload) == (
        icmpv6.ECHO_REPLY,
        ident,
        seq,
        payload,
    )


def test_echo_reply_refuses_other_types_and_bad_fields() -> None:
    with pytest.raises(ValueError):
        icmpv4.echo_reply_for(ICMPv4Message(icmpv4.ECHO_REPLY, 0))
    with pytest.raises(ValueError):
        icmpv6.echo_reply_for(ICMPv6Message(icmpv6.NEIGHBOR_SOLICITATION, 0))
    with pytest.raises(ValueError):
        icmpv4.echo_request(0x10000, 0)
    with pytest.raises(ValueError):
        ICMPv4Message(256, 0).build()
    with pytest.raises(ValueError):
        ICMPv6Message(1, 0, 1 << 32).build(FE80_1, FE80_2)


def test_fragmentation_needed_mtu_and_parameter_pointer() -> None:
    # RFC 1191 section 4: the low 16 bits carry the next-hop MTU.
    frag_needed = ICMPv4Message(icmpv4.DEST_UNREACHABLE, icmpv4.FRAGMENTATION_NEEDED, 1400)
    assert frag_needed.mtu == 1400
    assert frag_needed.is_error
    # RFC 792: the pointer is the first octet after the checksum.
    problem = ICMPv4Message.parse(ICMPv4Message(icmpv4.PARAMETER_PROBLEM, 0, 9 << 24).build())
    assert problem.pointer == 9
    assert problem.build()[4] == 9


def test_constants() -> None:
    assert (icmpv4.ECHO_REPLY, icmpv4.DEST_UNREACHABLE, icmpv4.ECHO_REQUEST) == (0, 3, 8)
    assert (icmpv4.TIME_EXCEEDED, icmpv4.PARAMETER_PROBLEM, icmpv4.REDIRECT) == (11, 12, 5)
    assert (icmpv4.PORT_UNREACHABLE, icmpv4.FRAGMENTATION_NEEDED) == (3, 4)
    assert (icmpv6.PACKET_TOO_BIG, icmpv6.ECHO_REQUEST, icmpv6.ECHO_REPLY) == (2, 128, 129)
    assert (icmpv6.NEIGHBOR_SOLICITATION, icmpv6.MLDV2_REPORT) == (135, 143)
    assert (icmpv6.PORT_UNREACHABLE, icmpv6.UNRECOGNIZED_NEXT_HEADER) == (4, 1)
