"""Fuzz the one-line packet decoder of the sniffer (netstack.header.summary).

``summarize`` promises never to raise; it does so by catching everything, which would also
hide a decoder bug. This harness calls the inner decoder, which must not raise at all.
"""

from __future__ import annotations

from fuzz.common import fuzz_main
from netstack.header import summary


def test_one_input(data: bytes) -> None:
    """Describe ``data`` as a packet; the description must be one non-empty line."""
    line = summary._summarize(data)  # any exception here is a decoder bug
    assert line and "\n" not in line, line
    assert summary.summarize(data) == line


if __name__ == "__main__":
    fuzz_main(test_one_input)
