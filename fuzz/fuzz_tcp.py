"""Fuzz the TCP header and option parsers (RFC 9293 sections 3.1-3.2, RFC 7323, RFC 2018).

Oracle: parse raises only ParseError; decoded options rebuild in canonical form and parse back
to the same record (unless the canonical form would not fit in 40 bytes, the one refusal
``TCPOptions.build`` may give); a segment rebuilt with :func:`build_tcp` has a valid checksum.
"""

from __future__ import annotations

from fuzz.common import fuzz_main, parse_or_none
from netstack.header.tcp import (
    NO_OPTIONS,
    TCPHeader,
    TCPOptions,
    build_tcp,
    flags_str,
    tcp_checksum_ok,
)

SRC, DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def _check_options(options: TCPOptions) -> None:
    try:
        built = options.build()
    except ValueError as exc:
        assert "at most 40" in str(exc), exc
        return
    assert len(built) <= 40 and len(built) % 4 == 0
    assert TCPOptions.parse(built) == options


def test_one_input(data: bytes) -> None:
    """Parse ``data`` as a TCP segment and as a bare option area; check round trips."""
    area = parse_or_none(lambda: TCPOptions.parse(data[:40]))
    if area is not None:
        _check_options(area)
    hdr = parse_or_none(lambda: TCPHeader.parse(data))
    tcp_checksum_ok(SRC, DST, data)
    if hdr is None:
        return
    assert 20 <= hdr.header_length <= len(data)
    assert flags_str(hdr.flags)
    _check_options(hdr.options)
    if hdr.header_length == 20:
        assert hdr.options is NO_OPTIONS
    try:
        segment = build_tcp(SRC, DST, hdr, data[hdr.header_length :])
    except ValueError as exc:
        assert "at most 40" in str(exc), exc
        return
    assert tcp_checksum_ok(SRC, DST, segment)
    again = TCPHeader.parse(segment)
    assert again == hdr, (again, hdr)


if __name__ == "__main__":
    fuzz_main(test_one_input)
