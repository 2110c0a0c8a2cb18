"""Sequence number arithmetic (RFC 9293 section 3.4, RFC 1982) next to the 2**32 wrap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from netstack.header.seqnum import (
    seq_add,
    seq_geq,
    seq_gt,
    seq_in_window,
    seq_leq,
    seq_lt,
    seq_max,
    seq_min,
    seq_sub,
)

MOD = 1 << 32
HALF = 1 << 31
# Values anywhere, and values crowded next to the wrap.
seqs = st.one_of(
    st.integers(0, MOD - 1),
    st.integers(MOD - 2000, MOD - 1),
    st.integers(0, 2000),
    st.integers(HALF - 1000, HALF + 1000),
)
# Signed distances where the order is defined: strictly inside (-2**31, 2**31).
distances = st.one_of(
    st.integers(-HALF + 1, HALF - 1),
    st.integers(-2000, 2000),
    st.integers(HALF - 1000, HALF - 1),
    st.integers(-HALF + 1, -HALF + 1000),
)


def test_wrap_examples() -> None:
    assert seq_add(MOD - 1, 1) == 0
    assert seq_add(0, -1) == MOD - 1
    assert seq_sub(0, MOD - 1) == 1
    assert seq_sub(MOD - 1, 0) == -1
    assert seq_lt(MOD - 10, 5)
    assert seq_gt(5, MOD - 10)
    assert seq_in_window(2, MOD - 3, 10)
    assert not seq_in_window(MOD - 4, MOD - 3, 10)
    assert not seq_in_window(7, MOD - 3, 10)
    assert seq_max(MOD - 1, 3) == 3
    assert seq_min(MOD - 1, 3) == MOD - 1
    # Exactly half way: the distance is +2**31 both ways (RFC 1982 leaves it undefined).
    assert seq_sub(HALF, 0) == seq_sub(0, HALF) == HALF


@given(seqs, distances)
def test_add_then_sub_recovers_distance(a: int, d: int) -> None:
    b = seq_add(a, d)
    assert 0 <= b < MOD
    assert seq_sub(b, a) == d
    assert seq_sub(a, b) == -d


@given(seqs, distances)
def test_order_matches_integer_order_of_the_distance(a: int, d: int) -> None:
    b = seq_add(a, d)
    assert seq_lt(a, b) == (d > 0)
    assert seq_gt(a, b) == (d < 0)
    assert seq_leq(a, b) == (d >= 0)
    assert seq_geq(a, b) == (d <= 0)
    # Antisymmetry and trichotomy hold away from the half-way point.
    assert seq_lt(a, b) == seq_gt(b, a)
    assert [seq_lt(a, b), a == b, seq_gt(a, b)].count(True) == 1
    assert seq_max(a, b) == (b if d >= 0 else a)
    assert seq_min(a, b) == (a if d >= 0 else b)


@given(seqs, seqs)
def test_sub_range_and_consistency(a: int, b: int) -> None:
    d = seq_sub(a, b)
    assert -HALF < d <= HALF
    assert seq_add(b, d) == a
    assert seq_lt(a, b) == (d < 0)
    assert seq_gt(a, b) == (d > 0)
    assert seq_leq(a, b) == (d <= 0)
    assert seq_geq(a, b) == (d >= 0)


@given(seqs, st.integers(0, 2000), st.integers(0, 2000))
def test_transitivity_across_the_wrap(a: int, d1: int, d2: int) -> None:
    b = seq_add(a, d1)
    c = seq_add(b, d2)
    if d1 and d2:
        assert seq_lt(a, b)
        assert seq_lt(b, c)
        assert seq_lt(a, c)
    assert seq_leq(a, c)


@given(seqs, st.integers(0, MOD - 1), st.integers(0, HALF))
def test_in_window(start: int, k: int, size: int) -> None:
    x = seq_add(start, k)
    assert seq_in_window(x, start, size) == (k < size)
    if size:
        assert seq_in_window(start, start, size)
        assert seq_in_window(seq_add(start, size - 1), start, size)
        assert not seq_in_window(seq_add(start, size), start, size)
    else:
        assert not seq_in_window(start, start, 0)
