"""A tree of named counters: every decision and every drop in the stack bumps one.

Each layer holds its own node (``stack.counters.child("ipv4")``) and increments plain string
keys on it, so the hot path costs one dict update. ``snapshot()`` flattens the tree into dotted
names (``ipv4.malformed.bad_checksum``) for tests, ``olm inspect`` and exporters.
"""

from __future__ import annotations

from collections.abc import Iterator


class Counters:
    """One node of the counter tree: a mapping of local names to integers plus named children."""

    __slots__ = ("children", "name", "values")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.values: dict[str, int] = {}
        self.children: dict[str, Counters] = {}

    def child(self, name: str) -> Counters:
        """Return the child node called ``name``, creating it on first use."""
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = Counters(name)
        return node

    def inc(self, key: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``key`` of this node."""
        values = self.values
        values[key] = values.get(key, 0) + amount

    def get(self, dotted: str) -> int:
        """Return the value of a counter by its dotted path below this node (0 if never bumped)."""
        node: Counters | None = self
        parts = dotted.split(".")
        # Try the longest key that exists at each level: keys may themselves contain dots.
        for i in range(len(parts)):
            assert node is not None
            key = ".".join(parts[i:])
            if key in node.values:
                return node.values[key]
            node = node.children.get(parts[i])
            if node is None:
                return 0
        return 0

    def items(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """Yield every (dotted name, value) pair below this node, sorted by name."""
        for key in sorted(self.values):
            yield (f"{prefix}{key}", self.values[key])
        for name in sorted(self.children):
            yield from self.children[name].items(f"{prefix}{name}.")

    def snapshot(self) -> dict[str, int]:
        """Return a flat dict of every counter below this node keyed by dotted name."""
        return dict(self.items())

    def total(self) -> int:
        """Return the sum of every counter below this node."""
        return sum(v for _, v in self.items())
