"""The Internet checksum against a word-by-word reference and the RFC 1071 example."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from netstack.header.checksum import (
    checksum,
    combine,
    ones_sum,
    pseudo_header_sum,
    transport_checksum,
)


def reference_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 section 4.1, written the slow obvious way: add words, fold carries."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_rfc1071_numerical_example() -> None:
    # RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2; the checksum is 220d.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert checksum(data) == 0x220D
    # With the checksum appended the data sums to all ones and verifies as 0.
    assert checksum(data + (0x220D).to_bytes(2, "big")) == 0


@given(st.binary(max_size=300), st.integers(0, 0x3FFFF))
def test_ones_sum_matches_reference(data: bytes, initial: int) -> None:
    expect = reference_sum(data, initial)
    got = ones_sum(data, initial)
    # One's complement has two zeros; the fast sum only yields 0 when everything is zero.
    if expect == 0xFFFF or expect == 0:
        assert got in (0, 0xFFFF)
        assert (got == 0) == (initial == 0 and not any(data))
    else:
        assert got == expect


@given(st.binary(max_size=100))
def test_memoryview_and_bytearray_agree(data: bytes) -> None:
    assert ones_sum(memoryview(data)) == ones_sum(bytearray(data)) == ones_sum(data)


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_sums_of_even_halves_combine(a: bytes, b: bytes) -> None:
    if len(a) % 2:
        a += b"\x00"
    assert combine(ones_sum(a), ones_sum(b)) % 0xFFFF == ones_sum(a + b) % 0xFFFF


addr_pairs = st.sampled_from([4, 16]).flatmap(
    lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))
)


@given(addr_pairs, st.integers(0, 255), st.binary(max_size=200))
def test_pseudo_header_sum_matches_explicit_layout(
    addrs: tuple[bytes, bytes], proto: int, segment: bytes
) -> None:
    src, dst = addrs
    n = len(segment)
    if len(src) == 4:
        # RFC 768: src, dst, zero, protocol, UDP length.
        pseudo = src + dst + bytes((0, proto)) + n.to_bytes(2, "big")
    else:
        # RFC 8200 section 8.1: src, dst, 32-bit length, 3 zero bytes, next header.
        pseudo = src + dst + n.to_bytes(4, "big") + bytes(3) + bytes((proto,))
    assert pseudo_header_sum(src, dst, proto, n) % 0xFFFF == reference_sum(pseudo) % 0xFFFF
    assert transport_checksum(src, dst, proto, segment) == checksum(pseudo + segment)
