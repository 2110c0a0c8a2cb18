"""Fuzz a live stack: packet sequences and clock steps through the whole receive path.

Each input is decoded (fuzz/packets.py) into up to 48 operations on a fresh stack: crafted
IPv4 and IPv6 packets (UDP, ICMP, TCP, unknown protocols; extension headers; disordered,
overlapping, repeated fragment trains), raw and mutated packets, and clock steps. The first
byte picks tight limits or the defaults. After every operation the invariants of
fuzz/invariants.py are checked; at the end the clock jumps past every timeout and nothing may
be left held.
"""

from __future__ import annotations

from fuzz.common import fuzz_main
from fuzz.live import LiveStack, small_limits
from fuzz.packets import decode_ops


def test_one_input(data: bytes) -> None:
    """Run the operations ``data`` decodes to on a fresh stack, checking every invariant."""
    if not data:
        return
    options = small_limits() if data[0] & 1 else None
    LiveStack(options, seed=data[0]).run(decode_ops(data[1:]))


if __name__ == "__main__":
    fuzz_main(test_one_input)
