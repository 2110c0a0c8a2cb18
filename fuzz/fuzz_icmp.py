"""Fuzz the ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) message parsers.

The first byte picks the version; the rest is the message. Oracle: parse raises only
ParseError; a parsed message rebuilds to the same bytes when its checksum was right, and a
rebuilt message always parses with its checksum verified.
"""

from __future__ import annotations

from fuzz.common import fuzz_main, parse_or_none
from netstack.header import icmpv4, icmpv6

SRC6 = bytes.fromhex("fd00" + "00" * 13 + "01")
DST6 = bytes.fromhex("fd00" + "00" * 13 + "02")


def _same_but_zero(rebuilt: bytes, original: bytes) -> bool:
    """Equal, or equal but for the checksum holding the other ones' complement zero."""
    if rebuilt == original:
        return True
    zeros = {b"\x00\x00", b"\xff\xff"}
    return (
        rebuilt[:2] + rebuilt[4:] == original[:2] + original[4:]
        and {
            rebuilt[2:4],
            original[2:4],
        }
        == zeros
    )


def _v4(buf: bytes) -> None:
    lenient = parse_or_none(lambda: icmpv4.ICMPv4Message.parse(buf, verify_checksum=False))
    strict = parse_or_none(lambda: icmpv4.ICMPv4Message.parse(buf))
    if lenient is None:
        assert strict is None
        return
    rebuilt = lenient.build()
    assert icmpv4.ICMPv4Message.parse(rebuilt) == lenient
    if strict is not None:
        assert _same_but_zero(rebuilt, buf)
    assert lenient.is_error == (lenient.type in icmpv4.ERROR_TYPES)
    if lenient.type == icmpv4.ECHO_REQUEST:
        reply = icmpv4.echo_reply_for(lenient)
        assert (reply.ident, reply.sequence, reply.payload) == (
            lenient.ident,
            lenient.sequence,
            lenient.payload,
        )


def _v6(buf: bytes) -> None:
    lenient = parse_or_none(
        lambda: icmpv6.ICMPv6Message.parse(buf, SRC6, DST6, verify_checksum=False)
    )
    strict = parse_or_none(lambda: icmpv6.ICMPv6Message.parse(buf, SRC6, DST6))
    if lenient is None:
        assert strict is None
        return
    rebuilt = lenient.build(SRC6, DST6)
    assert icmpv6.ICMPv6Message.parse(rebuilt, SRC6, DST6) == lenient
    if strict is not None:
        assert _same_but_zero(rebuilt, buf)
    assert lenient.is_error == (lenient.type < 128)


def test_one_input(data: bytes) -> None:
    """Parse the message after the version byte."""
    if not data:
        return
    if data[0] & 1:
        _v4(data[1:])
    else:
        _v6(data[1:])


if __name__ == "__main__":
    fuzz_main(test_one_input)
