"""The fake-IP pool: stable allocation, LRU recycling, reverse lookup, bounds, persistence."""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from netstack.counters import Counters
from olm.dns.fakeip import FakeIpError, FakeIpPool

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def alloc(pool: FakeIpPool, name: str, version: int = 4) -> V4 | V6:
    address = pool.address_for(name, version)
    assert address is not None
    return address


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_defaults() -> None:
    pool = FakeIpPool()
    assert pool.ipv4_network == ipaddress.IPv4Network("198.18.0.0/15")
    assert pool.ipv6_network is None
    assert pool.size == 65536
    assert len(pool) == 0
    assert pool.address_for("example.com.", 6) is None
    assert len(pool) == 0  # no IPv6 pool: nothing to map
    assert pool.address_for("example.com.", 4) == V4("198.18.0.1")


def test_allocation_is_stable_per_name() -> None:
    pool = FakeIpPool("198.18.0.0/24")
    a = alloc(pool, "a.example.")
    b = alloc(pool, "b.example.")
    assert a != b
    assert pool.address_for("a.example.", 4) == a
    assert pool.address_for("b.example.", 4) == b
    assert pool.name_for(a) == "a.example."
    assert pool.name_for(str(b)) == "b.example."
    assert pool.name_for(b.packed) == "b.example."
    assert pool.name_for("198.18.0.200") is None
    assert len(pool) == 2


def test_one_mapping_holds_v4_and_v6_allocated_lazily() -> None:
    pool = FakeIpPool("198.18.0.0/24", "fd00:198:18::/64")
    v6 = pool.address_for("a.example.", 6)
    assert v6 == V6("fd00:198:18::1")  # never the all-zero interface id
    assert pool.mappings() == [("a.example.", None, "fd00:198:18::1")]
    v4 = pool.address_for("a.example.", 4)
    assert v4 == V4("198.18.0.1")
    assert pool.mappings() == [("a.example.", "198.18.0.1", "fd00:198:18::1")]
    assert len(pool) == 1
    assert pool.name_for(v6) == pool.name_for(v4) == "a.example."
    assert pool.name_for(V6("fd00:198:18::1").packed) == "a.example."
    assert pool.address_for("a.example.", 6) == v6


def test_names_are_case_insensitive_and_get_a_trailing_dot() -> None:
    pool = FakeIpPool("198.18.0.0/24")
    a = alloc(pool, "WWW.Example.COM")
    assert pool.address_for("www.example.com.", 4) == a
    assert pool.address_for("www.EXAMPLE.com", 4) == a
    assert pool.mappings() == [("www.example.com.", str(a), None)]
    assert pool.name_for(a) == "www.example.com."


def test_only_ascii_letters_fold() -> None:
    # RFC 4343 section 3: non-ASCII characters are not case-folded.
    pool = FakeIpPool("198.18.0.0/24")
    assert pool.address_for("É.example.", 4) != pool.address_for("é.example.", 4)
    assert [name for name, _, _ in pool.mappings()] == ["É.example.", "é.example."]


def test_bad_arguments() -> None:
    pool = FakeIpPool("198.18.0.0/24")
    with pytest.raises(ValueError, match="IP version"):
        pool.address_for("a.example.", 5)
    with pytest.raises(ValueError, match="empty"):
        pool.address_for("", 4)
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        pool.name_for(b"\x01\x02\x03")
    with pytest.raises(ValueError):
        pool.name_for("not an address")


def test_never_the_network_or_last_address() -> None:
    pool = FakeIpPool("198.18.0.0/29")  # .1 to .6
    got = [pool.address_for(f"n{i}.example.", 4) for i in range(6)]
    assert got == [V4(f"198.18.0.{i}") for i in range(1, 7)]
    # Full: more names recycle, and still never .0 or .7.
    for i in range(6, 40):
        assert pool.address_for(f"n{i}.example.", 4) in {V4(f"198.18.0.{i}") for i in range(1, 7)}


def test_ipv6_skips_only_the_all_zero_interface_id() -> None:
    pool = FakeIpPool("198.18.0.0/24", "fd00::/126")  # ::1 to ::3
    assert pool.size == 3
    got = [pool.address_for(f"n{i}.example.", 6) for i in range(3)]
    assert got == [V6("fd00::1"), V6("fd00::2"), V6("fd00::3")]


def test_recycles_the_least_recently_used_when_full() -> None:
    counters = Counters()
    pool = FakeIpPool("198.18.0.0/29", counters=counters)  # 6 addresses
    first = {f"n{i}.example.": alloc(pool, f"n{i}.example.") for i in range(6)}
    pool.address_for("n0.example.", 4)  # n0 used again: n1 is now the least recently used
    new = alloc(pool, "new.example.")
    assert new == first["n1.example."]
    assert pool.name_for(new) == "new.example."
    assert "n1.example." not in [name for name, _, _ in pool.mappings()]
    assert len(pool) == 6
    # n1 comes back: it gets the address of the least recently used now, n2.
    assert pool.address_for("n1.example.", 4) == first["n2.example."]
    assert pool.name_for(first["n2.example."]) == "n1.example."
    assert counters.get("fakeip.allocated") == 8
    assert counters.get("fakeip.recycled") == 2
    assert counters.get("fakeip.hits") == 1


def test_recycled_v6_address_goes_to_the_next_v6_name() -> None:
    pool = FakeIpPool("198.18.0.0/29", "fd00::/64", size=2)
    a6 = alloc(pool, "a.example.", 6)
    pool.address_for("b.example.", 4)
    c4 = pool.address_for("c.example.", 4)  # recycles a: its IPv6 address is freed
    assert c4 == V4("198.18.0.2")
    assert pool.name_for(a6) is None  # c was not answered with it
    assert pool.address_for("c.example.", 6) == a6
    assert pool.name_for(a6) == "c.example."


def test_address_for_marks_used_name_for_does_not() -> None:
    pool = FakeIpPool("198.18.0.0/29", size=2)
    a = alloc(pool, "a.example.")
    b = pool.address_for("b.example.", 4)
    assert pool.name_for(a) == "a.example."  # a stays the least recently used
    assert pool.address_for("c.example.", 4) == a
    assert pool.mappings() == [("b.example.", str(b), None), ("c.example.", str(a), None)]
    pool.address_for("b.example.", 4)  # b is now the most recently used
    assert pool.address_for("d.example.", 4) == a
    assert [name for name, _, _ in pool.mappings()] == ["b.example.", "d.example."]


def test_size_bounds_the_table() -> None:
    counters = Counters()
    pool = FakeIpPool("198.18.0.0/24", "fd00::/64", size=3, counters=counters)
    for i in range(10):
        pool.address_for(f"n{i}.example.", 4 if i % 2 else 6)
        assert len(pool) == min(i + 1, 3)
    assert [name for name, _, _ in pool.mappings()] == ["n7.example.", "n8.example.", "n9.example."]
    assert counters.get("fakeip.recycled") == 7


def test_size_defaults_to_the_smaller_pool_capped() -> None:
    assert FakeIpPool("10.0.0.0/8").size == 65536
    assert FakeIpPool("198.18.0.0/24").size == 254
    assert FakeIpPool("198.18.0.0/24", "fd00::/125").size == 7


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "size", "message"),
    [
        ("nonsense", None, None, "not a network prefix"),
        ("198.18.0.0/33", None, None, "not a network prefix"),
        ("198.18.0.1/15", None, None, "host bits set"),
        ("fd00::/64", None, None, "IPv6 prefix, not IPv4"),
        ("198.18.0.0/31", None, None, "too small"),
        ("198.18.0.1", None, None, "too small"),
        ("198.18.0.0/24", "198.19.0.0/24", None, "IPv4 prefix, not IPv6"),
        ("198.18.0.0/24", "fd00::1/64", None, "host bits set"),
        ("198.18.0.0/24", "fd00::/128", None, "too small"),
        ("198.18.0.0/29", None, 7, "exceeds the 6 usable addresses of 198.18.0.0/29"),
        ("198.18.0.0/24", "fd00::/126", 4, "exceeds the 3 usable addresses of fd00::/126"),
        ("198.18.0.0/24", None, 0, "at least 1"),
    ],
)
def test_invalid_settings(ipv4: str, ipv6: str | None, size: int | None, message: str) -> None:
    with pytest.raises(FakeIpError, match=message) as info:
        FakeIpPool(ipv4, ipv6, size)
    assert isinstance(info.value, ValueError)


def test_contains_is_prefix_membership() -> None:
    pool = FakeIpPool("198.18.0.0/15", "fd00:198:18::/64")
    assert pool.contains("198.18.0.0")
    assert pool.contains("198.19.255.255")
    assert pool.contains(V4("198.19.1.2").packed)
    assert not pool.contains("198.20.0.1")
    assert pool.contains(V6("fd00:198:18::5"))
    assert not pool.contains("fd00:198:19::5")
    assert not FakeIpPool().contains("fd00:198:18::5")


# -- persistence ---------------------------------------------------------------------------------


def test_persistence_round_trip_keeps_mappings_and_lru_order(tmp_path: Path) -> None:
    state = tmp_path / "fakeip.json"
    clock = FakeClock()
    pool = FakeIpPool("198.18.0.0/24", "fd00::/64", state_file=state, clock=clock)
    assert not pool.dirty
    for name in ("a.example.", "b.example.", "c.example."):
        pool.address_for(name, 4)
    pool.address_for("b.example.", 6)
    pool.address_for("a.example.", 4)  # order: c, b, a
    assert pool.dirty
    assert pool.dirty_since == 1000.0
    pool.save()
    assert not pool.dirty
    assert state.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["fakeip.json"]  # no temp file left behind

    again = FakeIpPool("198.18.0.0/24", "fd00::/64", state_file=state)
    assert again.mappings() == pool.mappings()
    assert [name for name, _, _ in again.mappings()] == ["c.example.", "b.example.", "a.example."]
    assert not again.dirty
    # Allocation carries on without handing out an address already in use.
    d = again.address_for("d.example.", 4)
    assert d not in {V4(v4) for _, v4, _ in pool.mappings() if v4 is not None}
    assert again.address_for("c.example.", 6) == V6("fd00::2")
    # The LRU order survived: a full table recycles c first.
    small = FakeIpPool("198.18.0.0/24", "fd00::/64", size=3, state_file=state)
    small.address_for("e.example.", 4)
    assert [name for name, _, _ in small.mappings()] == ["b.example.", "a.example.", "e.example."]


def test_open_reads_the_file_and_checks_the_directory(tmp_path: Path) -> None:
    state = tmp_path / "fakeip.json"
    pool = FakeIpPool.open(state, "198.18.0.0/24")
    assert len(pool) == 0  # no file yet: an empty table
    pool.address_for("a.example.", 4)
    pool.save()
    assert FakeIpPool.open(state, "198.18.0.0/24").mappings() == pool.mappings()
    missing = tmp_path / "nowhere" / "fakeip.json"
    with pytest.raises(FakeIpError, match="does not exist") as info:
        FakeIpPool.open(missing)
    assert info.value.path == missing


def test_changed_prefixes_drop_the_mappings_outside(tmp_path: Path) -> None:
    state = tmp_path / "fakeip.json"
    pool = FakeIpPool("198.18.0.0/24", "fd00::/64", state_file=state)
    for i in range(3):
        pool.address_for(f"n{i}.example.", 4)
    pool.address_for("n1.example.", 6)
    pool.address_for("v6only.example.", 6)
    pool.save()

    counters = Counters()
    # The IPv4 prefix shrank to .0/30 (.1 and .2 usable) and the IPv6 prefix moved.
    again = FakeIpPool("198.18.0.0/30", "fd01::/64", state_file=state, counters=counters)
    assert again.mappings() == [
        ("n0.example.", "198.18.0.1", None),
        ("n1.example.", "198.18.0.2", None),
    ]
    assert counters.get("fakeip.load_dropped") == 2
    assert again.dirty  # the file still holds the dropped ones
    assert again.address_for("n1.example.", 6) == V6("fd01::1")


def test_a_smaller_size_keeps_the_most_recently_used(tmp_path: Path) -> None:
    state = tmp_path / "fakeip.json"
    pool = FakeIpPool("198.18.0.0/24", "fd00::/64", state_file=state)
    for i in range(5):
        pool.address_for(f"n{i}.example.", 4 if i < 3 else 6)
    pool.save()
    again = FakeIpPool("198.18.0.0/24", "fd00::/64", size=2, state_file=state)
    assert [name for name, _, _ in again.mappings()] == ["n3.example.", "n4.example."]
    assert again.name_for("198.18.0.1") is None
    # The IPv4 addresses of the mappings left out are free again.
    assert again.address_for("n3.example.", 4) == V4("198.18.0.1")


def _document(mappings: object) -> str:
    return json.dumps(
        {"format": "olm-fakeip", "version": 1, "ipv4": "198.18.0.0/24", "mappings": mappings}
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"format": "other", "version": 1, "mappings": []}', "format"),
        ('{"format": "olm-fakeip", "version": 99, "mappings": []}', "unsupported version 99"),
        ('{"format": "olm-fakeip", "version": 1}', "'mappings' is not a list"),
        (_document([["a.example.", "198.18.0.1"]]), "mapping 0 is not"),
        (_document([[7, "198.18.0.1", None]]), "the name is not"),
        (_document([["a.example.", "fd00::1", None]]), "not an IPv4 address"),
        (_document([["a.example.", None, "198.18.0.1"]]), "not an IPv6 address"),
        (_document([["a.example.", 5, None]]), "not a string"),
        (_document([["a.example.", None, None]]), "has no address"),
        (
            _document([["a.example.", "198.18.0.1", None], ["A.example", "198.18.0.2", None]]),
            "mapping 1: a name seen before",
        ),
        (
            _document([["a.example.", "198.18.0.1", None], ["b.example.", "198.18.0.1", None]]),
            "given to two names",
        ),
    ],
)
def test_corrupt_state_file_is_an_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    state = tmp_path / "fakeip.json"
    state.write_text(text)
    with pytest.raises(FakeIpError, match=message) as info:
        FakeIpPool.open(state, "198.18.0.0/24")
    assert str(state) in str(info.value)
    assert info.value.path == state


def test_invalid_utf8_state_file(tmp_path: Path) -> None:
    state = tmp_path / "fakeip.json"
    state.write_bytes(b"\xff\xfe{}")
    with pytest.raises(FakeIpError, match="not JSON"):
        FakeIpPool(state_file=state)


def test_unreadable_state_file(tmp_path: Path) -> None:
    state = tmp_path / "fakeip.json"
    state.mkdir()  # exists, but reading it fails
    with pytest.raises(FakeIpError, match="cannot read") as info:
        FakeIpPool(state_file=state)
    assert info.value.path == state


def test_failed_load_leaves_the_table(tmp_path: Path) -> None:
    state = tmp_path / "fakeip.json"
    pool = FakeIpPool("198.18.0.0/24", state_file=state)
    pool.address_for("a.example.", 4)
    state.write_text("{")
    with pytest.raises(FakeIpError):
        pool.load()
    assert pool.mappings() == [("a.example.", "198.18.0.1", None)]


def test_save_without_a_state_file() -> None:
    pool = FakeIpPool("198.18.0.0/24")
    pool.address_for("a.example.", 4)
    with pytest.raises(FakeIpError, match="no state file"):
        pool.save()
    assert not pool.save_if_due(0)
    assert pool.dirty


def test_save_if_due_waits_for_the_delay(tmp_path: Path) -> None:
    clock = FakeClock()
    state = tmp_path / "fakeip.json"
    pool = FakeIpPool("198.18.0.0/24", state_file=state, clock=clock)
    assert not pool.save_if_due(30)  # nothing changed
    pool.address_for("a.example.", 4)
    clock.now += 10
    pool.address_for("b.example.", 4)  # a later change does not move the first one's time
    assert pool.dirty_since == 1000.0
    clock.now += 19
    assert not pool.save_if_due(30)
    assert not state.exists()
    clock.now += 1
    assert pool.save_if_due(30)
    assert state.exists()
    assert not pool.dirty
    assert pool.dirty_since is None


def test_a_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "fakeip.json"
    pool = FakeIpPool("198.18.0.0/24", state_file=state)
    pool.address_for("a.example.", 4)
    pool.save()
    before = state.read_bytes()
    pool.address_for("b.example.", 4)

    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("olm.fileio.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        pool.save()
    assert state.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fakeip.json"]
    assert pool.dirty


def test_load_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    state = tmp_path / "fakeip.json"
    pool = FakeIpPool("198.18.0.0/24", state_file=state)  # no file yet: fine at construction
    with pytest.raises(FakeIpError, match="cannot read") as info:
        pool.load()
    assert info.value.path == state


# -- properties ----------------------------------------------------------------------------------

NAMES = st.sampled_from([f"n{i}.example." for i in range(12)] + ["N1.Example", "n2.EXAMPLE."])


def _check_table(pool: FakeIpPool) -> None:
    rows = pool.mappings()
    assert len(rows) == len(pool) <= pool.size
    seen: set[str] = set()
    for name, v4, v6 in rows:
        assert v4 is not None or v6 is not None
        for address in (v4, v6):
            if address is not None:
                assert address not in seen  # no two live names share an address
                seen.add(address)
                assert pool.name_for(address) == name
                assert pool.contains(address)
    assert len({name for name, _, _ in rows}) == len(rows)


@settings(max_examples=200)
@given(st.lists(st.tuples(NAMES, st.sampled_from([4, 6])), max_size=60), st.integers(1, 6))
def test_random_sequences_keep_the_table_consistent(
    calls: list[tuple[str, int]], size: int
) -> None:
    pool = FakeIpPool("198.18.0.0/29", "fd00::/125", size=size)
    for name, version in calls:
        address = pool.address_for(name, version)
        assert address is not None
        assert address.version == version
        assert pool.name_for(address) == name.lower().rstrip(".") + "."
        assert pool.address_for(name, version) == address  # stable while it lives
        _check_table(pool)


class PoolMachine(RuleBasedStateMachine):
    """The pool against a model: an LRU list of names, each with its addresses."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = FakeIpPool("198.18.0.0/29", "fd00::/126", size=3)
        self.model: OrderedDict[str, dict[int, ipaddress.IPv4Address | ipaddress.IPv6Address]] = (
            OrderedDict()
        )

    @rule(name=NAMES, version=st.sampled_from([4, 6]))
    def ask(self, name: str, version: int) -> None:
        key = name.lower().rstrip(".") + "."
        address = self.pool.address_for(name, version)
        assert address is not None
        if key in self.model:
            self.model.move_to_end(key)
            known = self.model[key].get(version)
            if known is not None:
                assert address == known
        else:
            if len(self.model) == 3:
                self.model.popitem(last=False)
            self.model[key] = {}
        self.model[key][version] = address

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def look_up(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(list(self.model)))
        before = self.pool.mappings()
        for address in self.model[name].values():
            assert self.pool.name_for(address) == name
        assert self.pool.mappings() == before  # name_for does not mark used

    @rule(address=st.integers(0, 7))
    def look_up_any(self, address: int) -> None:
        got = self.pool.name_for(f"198.18.0.{address}")
        owners = [n for n, a in self.model.items() if a.get(4) == V4(f"198.18.0.{address}")]
        assert got == (owners[0] if owners else None)

    @invariant()
    def same_as_the_model(self) -> None:
        assert [name for name, _, _ in self.pool.mappings()] == list(self.model)
        for name, v4, v6 in self.pool.mappings():
            assert v4 == (str(self.model[name][4]) if 4 in self.model[name] else None)
            assert v6 == (str(self.model[name][6]) if 6 in self.model[name] else None)
        _check_table(self.pool)


TestPoolMachine = PoolMachine.TestCase
