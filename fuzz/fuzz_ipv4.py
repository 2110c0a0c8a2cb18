"""Fuzz the IPv4 header parser and its option parser (RFC 791 section 3.1).

Oracle: arbitrary bytes either parse or raise ParseError; a parsed header rebuilds into bytes
that parse back to the same record, and its option area parses the same way twice.
"""

from __future__ import annotations

from fuzz.common import fuzz_main, parse_or_none
from netstack.header.ipv4 import IPv4Header, build_options, is_fragment, parse_options


def test_one_input(data: bytes) -> None:
    """Parse ``data`` as an IPv4 packet and check the round trip of whatever parses."""
    lenient = parse_or_none(lambda: IPv4Header.parse(data, verify_checksum=False))
    strict = parse_or_none(lambda: IPv4Header.parse(data))
    if strict is not None:
        assert lenient == strict, (lenient, strict)
    parse_or_none(lambda: parse_options(data[:40]))
    if lenient is None:
        return
    hdr = lenient
    assert 20 <= hdr.header_length <= hdr.total_length <= len(data)
    assert is_fragment(hdr) == (hdr.more_fragments or hdr.fragment_offset > 0)
    payload = data[hdr.header_length : hdr.total_length]
    rebuilt = hdr.pack(payload)
    assert len(rebuilt) == hdr.total_length
    again = IPv4Header.parse(rebuilt)  # a freshly built header has a valid checksum
    assert again == hdr, (again, hdr)
    # The rebuilt bytes equal the input except for the checksum field (and it is right there
    # whenever the input's was).
    assert rebuilt[:10] + rebuilt[12:] == bytes(data[:10]) + bytes(data[12 : hdr.total_length])
    if strict is not None:
        # Ones' complement has two zeros: a sender may write 0xFFFF where we compute 0.
        assert rebuilt == data[: hdr.total_length] or {hdr.checksum, again.checksum} == {
            0,
            0xFFFF,
        }
    options = parse_options(hdr.options)
    assert parse_options(build_options(options)) == options


if __name__ == "__main__":
    fuzz_main(test_one_input)
