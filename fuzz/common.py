"""Shared pieces of the harnesses: a byte reader for structured inputs and the atheris entry."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from netstack.errors import ParseError

T = TypeVar("T")

HARNESSES = ("ipv4", "ipv6", "udp", "tcp", "icmp", "summary", "stack", "dns", "config")
"""Names of the harness modules (``fuzz.fuzz_<name>``), in the order ``fuzz/run`` runs them."""


class ByteReader:
    """Consume a fuzz input as a stream of small decisions; never raises when it runs dry.

    Once the input is exhausted every read returns zeros or empty bytes, so a decoder driven by
    it always terminates and every input (even the empty one) decodes to something.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not consumed yet."""
        return len(self._data) - self._pos

    def u8(self) -> int:
        """Return the next byte as an integer (0 once exhausted)."""
        pos = self._pos
        if pos >= len(self._data):
            return 0
        self._pos = pos + 1
        return self._data[pos]

    def u16(self) -> int:
        """Return the next two bytes as a big-endian integer."""
        return int.from_bytes(self.take(2).ljust(2, b"\0"), "big")

    def u32(self) -> int:
        """Return the next four bytes as a big-endian integer."""
        return int.from_bytes(self.take(4).ljust(4, b"\0"), "big")

    def flag(self) -> bool:
        """Return one yes/no decision (the low bit of the next byte)."""
        return bool(self.u8() & 1)

    def below(self, n: int) -> int:
        """Return a number in ``[0, n)`` (n <= 65536) from one or two bytes."""
        if n <= 1:
            return 0
        return (self.u8() if n <= 256 else self.u16()) % n

    def choice(self, items: Sequence[T]) -> T:
        """Pick one of ``items`` (which must not be empty)."""
        return items[self.below(len(items))]

    def take(self, n: int) -> bytes:
        """Return up to ``n`` next bytes (fewer once the input runs out)."""
        pos = self._pos
        chunk = self._data[pos : pos + max(0, n)]
        self._pos = pos + len(chunk)
        return chunk

    def blob(self, limit: int) -> bytes:
        """Return a length-prefixed run of bytes no longer than ``limit``."""
        return self.take(self.below(limit + 1))

    def rest(self) -> bytes:
        """Return every byte not consumed yet."""
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk


def parse_or_none(parse: Callable[[], T]) -> T | None:
    """Run a parser; return None on ParseError (the one error a parser may raise)."""
    try:
        return parse()
    except ParseError as exc:
        if not exc.reason or not exc.reason.replace("_", "").isalnum():
            raise AssertionError(
                f"ParseError reason is not a counter name: {exc.reason!r}"
            ) from exc
        return None


def fuzz_main(
    test_one_input: Callable[[bytes], None], extra_packages: tuple[str, ...] = ()
) -> None:
    """Run ``test_one_input`` under libFuzzer with coverage from the project's modules.

    ``extra_packages`` adds more top-level packages to instrument (``olm``, ``dnslib``).
    Command-line arguments are libFuzzer's (``-runs=N``, ``-max_total_time=S``, corpus
    directories...).
    """
    import atheris

    _instrument(atheris, ("netstack", "fuzz", "__main__", *extra_packages))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def _instrument(atheris: Any, packages: tuple[str, ...]) -> None:
    """Add coverage instrumentation to the functions of ``packages`` only.

    ``atheris.instrument_all()`` would also instrument the standard library: 11 s of start-up
    for nothing, since the harnesses target netstack.
    """
    seen: set[int] = set()

    def patch(func: object) -> None:
        code = getattr(func, "__code__", None)
        if code is not None and id(func) not in seen:
            seen.add(id(func))
            atheris.instrument_func(func)

    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in packages:
            continue
        for obj in list(vars(module).values()):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                patch(obj)
            elif inspect.isclass(obj):
                for attr in vars(obj).values():
                    if isinstance(attr, (staticmethod, classmethod)):
                        patch(attr.__func__)
                    elif isinstance(attr, property):
                        for accessor in (attr.fget, attr.fset, attr.fdel):
                            patch(accessor)
                    else:
                        patch(attr)
