"""Modular 32-bit sequence number arithmetic for TCP (RFC 9293 section 3.4, RFC 1982).

Sequence numbers live on a circle of 2**32 values. ``a`` is "before" ``b`` when going forward
from ``a`` reaches ``b`` in fewer than 2**31 steps. At a distance of exactly 2**31 the order is
undefined by RFC 1982 section 3.2; here :func:`seq_sub` returns +2**31 there, so both
``seq_gt(a, b)`` and ``seq_gt(b, a)`` hold. Callers keep windows below 2**31 (RFC 7323
section 2.3 bounds a scaled window to 2**30), where the order is a proper one.
"""

from __future__ import annotations

from typing import Final

SEQ_MOD: Final = 1 << 32
"""Size of the sequence number space."""
SEQ_MASK: Final = SEQ_MOD - 1
_HALF: Final = 1 << 31


def seq_add(a: int, n: int) -> int:
    """Return ``a + n`` modulo 2**32 (``n`` may be negative)."""
    return (a + n) & SEQ_MASK


def seq_sub(a: int, b: int) -> int:
    """Return the signed distance from ``b`` to ``a``, in (-2**31, 2**31]."""
    d = (a - b) & SEQ_MASK
    return d - SEQ_MOD if d > _HALF else d


def seq_lt(a: int, b: int) -> bool:
    """Return True if ``a`` comes before ``b``."""
    return ((a - b) & SEQ_MASK) > _HALF


def seq_leq(a: int, b: int) -> bool:
    """Return True if ``a`` comes before ``b`` or equals it."""
    d = (a - b) & SEQ_MASK
    return d == 0 or d > _HALF


def seq_gt(a: int, b: int) -> bool:
    """Return True if ``a`` comes after ``b``."""
    d = (a - b) & SEQ_MASK
    return 0 < d <= _HALF


def seq_geq(a: int, b: int) -> bool:
    """Return True if ``a`` comes after ``b`` or equals it."""
    return ((a - b) & SEQ_MASK) <= _HALF


def seq_in_window(x: int, start: int, size: int) -> bool:
    """Return True if ``start <= x < start + size`` on the circle (False for an empty window)."""
    return ((x - start) & SEQ_MASK) < size


def seq_max(a: int, b: int) -> int:
    """Return whichever of ``a`` and ``b`` comes later."""
    return a if seq_geq(a, b) else b


def seq_min(a: int, b: int) -> int:
    """Return whichever of ``a`` and ``b`` comes earlier."""
    return a if seq_leq(a, b) else b
