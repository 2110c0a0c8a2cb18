"""The fake-IP pool: names answered with addresses from a reserved prefix, and mapped back.

As the "fake-ip" DNS mode of transparent-proxy gateways (Clash/mihomo, sing-box): a name that
matches the configured suffixes is answered with an address taken from a pool, so that the
traffic later sent to that address can be mapped back to the name. This module is the table
behind it; the DNS handler that decides which names get a fake address lives elsewhere.

* The IPv4 pool is a prefix, by default 198.18.0.0/15 (set aside for benchmarking, RFC 2544 and
  RFC 6890 section 2.2.2, so it routes nowhere real); its network address and its last address
  are never handed out (RFC 1122 section 3.2.1.3: host number 0 and all ones). An optional IPv6
  pool is a prefix too, e.g. ``fd00:198:18::/64`` (a unique local prefix, RFC 4193), without its
  all-zero interface identifier (the Subnet-Router anycast address, RFC 4291 section 2.6.1).
* One mapping per name holds its IPv4 and its IPv6 address, each allocated when first asked for.
  A name keeps its addresses while its mapping lives. Asking for a name's address marks its
  mapping used; mapping an address back to its name does not.
* The table is bounded by ``size`` (by default the IPv4 pool's size, at most 65536). When it is
  full, the least recently used mapping is recycled: its addresses go to the next names asked
  for, the most recently freed first.
* Names are compared as DNS compares them: case-insensitively for ASCII letters only (RFC 4343
  section 3), and kept in lower-case presentation form with the trailing dot of the root.
* The table can be saved to a state file (JSON, written atomically) and is read back at
  construction, so that a restart does not hand a live connection's address to another name.

Not thread-safe: the pool belongs to the event loop that answers DNS and forwards packets.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from netstack.counters import Counters
from olm.fileio import write_atomically

__all__ = [
    "DEFAULT_IPV4_PREFIX",
    "FORMAT_VERSION",
    "MAX_DEFAULT_SIZE",
    "AddressLike",
    "FakeIpError",
    "FakeIpPool",
    "normalise_name",
]

log = logging.getLogger("olm.dns.fakeip")

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
AddressLike = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address

#: The IPv4 pool unless configured otherwise (RFC 2544 benchmarking space, as Clash's default).
DEFAULT_IPV4_PREFIX: Final = "198.18.0.0/15"
#: The default bound on the number of mappings when the pools are larger.
MAX_DEFAULT_SIZE: Final = 65536
#: The state file's format version; a file of another version is refused.
FORMAT_VERSION: Final = 1
_FORMAT_NAME: Final = "olm-fakeip"

# RFC 4343 section 3: only the ASCII letters fold; other characters are left as they are.
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class FakeIpError(ValueError):
    """A fake-IP setting is invalid, or the state file cannot be read.

    ``path`` is the state file when the error is about it (its message then names it), else
    None.
    """

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def normalise_name(name: str) -> str:
    """Return ``name`` as the table keeps it: ASCII letters in lower case, one trailing dot."""
    if not name:
        raise ValueError("empty domain name")
    name = name.lower() if name.isascii() else name.translate(_ASCII_LOWER)
    return name if name.endswith(".") else name + "."


class _Pool:
    """The addresses of one prefix that may be handed out, and those never handed out yet."""

    __slots__ = ("_base", "_cursor", "_free", "_make", "capacity", "first", "last", "network")

    def __init__(self, network: _Network, first: int, last: int) -> None:
        self.network = network
        self.first = first
        self.last = last
        self.capacity = last - first + 1
        self._base = int(network.network_address)
        self._make: Callable[[int], _Address] = (
            ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
        )
        self._cursor = first
        self._free: list[_Address] = []

    def holds(self, address: _Address) -> bool:
        """Whether ``address`` is one the pool may hand out."""
        return (
            address.version == self.network.version
            and self.first <= int(address) - self._base <= self.last
        )

    def take(self, used: dict[bytes, str]) -> _Address:
        """Return a free address: the most recently released one, else the next never used.

        The cursor skips addresses in ``used`` (those read from the state file), so each offset
        is looked at once: O(1) amortised.
        """
        if self._free:
            return self._free.pop()
        make, base = self._make, self._base
        while self._cursor <= self.last:
            address = make(base + self._cursor)
            self._cursor += 1
            if address.packed not in used:
                return address
        # The table never holds more mappings than the pool has addresses (checked at
        # construction), so a mapping without an address of this family always finds one.
        raise AssertionError(f"fake-IP pool {self.network} exhausted")

    def release(self, address: _Address) -> None:
        """Give back an address taken from the pool."""
        self._free.append(address)


class _Mapping:
    """A name's fake addresses, each None until first asked for."""

    __slots__ = ("v4", "v6")

    def __init__(
        self, v4: ipaddress.IPv4Address | None = None, v6: ipaddress.IPv6Address | None = None
    ) -> None:
        self.v4 = v4
        self.v6 = v6


def _parse_prefix(text: str, version: int, what: str) -> _Network:
    """Parse a pool prefix, refusing anything but a network of the given IP version."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise FakeIpError(
            f"{what} {text!r} is not a network prefix (such as {DEFAULT_IPV4_PREFIX})"
        ) from None
    if network.version != version:
        raise FakeIpError(f"{what} {text!r} is an IPv{network.version} prefix, not IPv{version}")
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise FakeIpError(f"{what} {text!r} has host bits set (the prefix is {network})") from None
    return network


def _make_pool(text: str, version: int) -> _Pool:
    """Build the pool of a prefix, without the addresses that must never be handed out."""
    what = f"fake-IP ipv{version} prefix"
    network = _parse_prefix(text, version, what)
    if version == 4:
        # RFC 1122 section 3.2.1.3: neither host number 0 nor all ones.
        first, last = 1, network.num_addresses - 2
    else:
        # RFC 4291 section 2.6.1: the all-zero interface identifier is the Subnet-Router
        # anycast address.
        first, last = 1, network.num_addresses - 1
    if last < first:
        raise FakeIpError(f"{what} {network} is too small: it has no address to hand out")
    return _Pool(network, first, last)


def _parse_address(text: AddressLike) -> _Address:
    """Turn text, packed bytes or an address object into an address object."""
    if isinstance(text, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return text
    if isinstance(text, bytes) and len(text) not in (4, 16):
        raise ValueError(f"a packed address is 4 or 16 bytes, not {len(text)}")
    return ipaddress.ip_address(text)


class FakeIpPool:
    """A bounded table of names and the fake addresses they were answered with.

    ``ipv4`` and ``ipv6`` are the pools' prefixes (``ipv6`` None: no IPv6 pool, AAAA questions
    get no fake address). ``size`` bounds the number of mappings; it defaults to the smaller
    pool's number of usable addresses, at most :data:`MAX_DEFAULT_SIZE`, and may not exceed it.
    Invalid settings raise :class:`FakeIpError` (a ValueError).

    ``state_file``: where :meth:`save` writes the table; if it exists at construction, the
    table is read from it (see :meth:`load`). ``clock`` (seconds, monotonic) times how long
    unsaved changes have waited (:attr:`dirty_since`, :meth:`save_if_due`).

    Counters (under ``fakeip``): ``allocated`` (an address newly given to a name), ``hits``
    (the name already had one), ``recycled`` (a least recently used mapping taken back when the
    table was full), ``load_dropped`` (mappings of the state file left out: outside the
    prefixes or beyond ``size``).
    """

    __slots__ = (
        "_by_address",
        "_clock",
        "_dirty_since",
        "_pool4",
        "_pool6",
        "_size",
        "_state_file",
        "_table",
        "counters",
    )

    def __init__(
        self,
        ipv4: str = DEFAULT_IPV4_PREFIX,
        ipv6: str | None = None,
        size: int | None = None,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        counters: Counters | None = None,
    ) -> None:
        self._pool4 = _make_pool(ipv4, 4)
        self._pool6 = _make_pool(ipv6, 6) if ipv6 is not None else None
        capacity = self._pool4.capacity
        smallest = self._pool4
        if self._pool6 is not None and self._pool6.capacity < capacity:
            capacity, smallest = self._pool6.capacity, self._pool6
        if size is None:
            size = min(capacity, MAX_DEFAULT_SIZE)
        elif size < 1:
            raise FakeIpError(f"fake-IP size must be at least 1, not {size}")
        elif size > capacity:
            raise FakeIpError(
                f"fake-IP size {size} exceeds the {capacity} usable addresses of {smallest.network}"
            )
        self._size = size
        self._state_file = state_file
        self._clock = clock
        self.counters = counters.child("fakeip") if counters is not None else Counters("fakeip")
        # Least recently used first.
        self._table: OrderedDict[str, _Mapping] = OrderedDict()
        # Packed address (4 bytes or 16: the lengths keep the families apart) -> name.
        self._by_address: dict[bytes, str] = {}
        self._dirty_since: float | None = None
        if state_file is not None:
            self._load(state_file, missing_ok=True)

    @classmethod
    def open(
        cls,
        state_file: Path,
        ipv4: str = DEFAULT_IPV4_PREFIX,
        ipv6: str | None = None,
        size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        counters: Counters | None = None,
    ) -> FakeIpPool:
        """Build a pool kept in ``state_file``, as at start-up: every problem is an error.

        Raises :class:`FakeIpError` naming the file when it cannot be read or is corrupt, or
        when its directory does not exist (every later save would fail): at start-up the daemon
        reports it and exits with status 2. There is no variant that starts afresh over a
        corrupt file: the file says which names live connections stand for, so it is the
        operator's to remove.
        """
        parent = state_file.parent
        if not parent.is_dir():
            raise FakeIpError(
                f"{state_file}: fake-IP state directory {parent} does not exist", state_file
            )
        return cls(ipv4, ipv6, size, state_file, clock, counters=counters)

    # -- settings ---------------------------------------------------------------------------

    @property
    def ipv4_network(self) -> ipaddress.IPv4Network:
        """The IPv4 pool's prefix."""
        network = self._pool4.network
        assert isinstance(network, ipaddress.IPv4Network)
        return network

    @property
    def ipv6_network(self) -> ipaddress.IPv6Network | None:
        """The IPv6 pool's prefix, or None without an IPv6 pool."""
        if self._pool6 is None:
            return None
        network = self._pool6.network
        assert isinstance(network, ipaddress.IPv6Network)
        return network

    @property
    def size(self) -> int:
        """The largest number of mappings the table holds."""
        return self._size

    @property
    def state_file(self) -> Path | None:
        """Where :meth:`save` writes the table, if anywhere."""
        return self._state_file

    # -- the table --------------------------------------------------------------------------

    def address_for(
        self, name: str, version: int
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """Return the fake address of ``name`` for IP ``version`` (4 or 6), marking it used.

        A name without a mapping gets one, recycling the least recently used mapping when the
        table is full. None for version 6 without an IPv6 pool.
        """
        if version == 4:
            pool = self._pool4
        elif version == 6:
            if self._pool6 is None:
                return None
            pool = self._pool6
        else:
            raise ValueError(f"IP version must be 4 or 6, not {version}")
        name = normalise_name(name)
        table = self._table
        mapping = table.get(name)
        if mapping is None:
            if len(table) >= self._size:
                self._recycle()
            mapping = table[name] = _Mapping()
        else:
            table.move_to_end(name)
            address: _Address | None = mapping.v4 if version == 4 else mapping.v6
            if address is not None:
                self.counters.inc("hits")
                self._touch()
                return address
        address = pool.take(self._by_address)
        if isinstance(address, ipaddress.IPv4Address):
            mapping.v4 = address
        else:
            mapping.v6 = address
        self._by_address[address.packed] = name
        self.counters.inc("allocated")
        self._touch()
        return address

    def name_for(self, address: AddressLike) -> str | None:
        """Return the name a fake address stands for, or None; does not mark it used.

        ``address`` is text, an address object, or packed bytes (4 for IPv4, 16 for IPv6:
        a packet's destination field as it is).
        """
        if type(address) is bytes and len(address) in (4, 16):
            return self._by_address.get(address)
        return self._by_address.get(_parse_address(address).packed)

    def contains(self, address: AddressLike) -> bool:
        """Whether ``address`` lies in the IPv4 or the IPv6 pool's prefix."""
        parsed = _parse_address(address)
        if parsed.version == 4:
            return parsed in self._pool4.network
        return self._pool6 is not None and parsed in self._pool6.network

    def __len__(self) -> int:
        return len(self._table)

    def mappings(self) -> list[tuple[str, str | None, str | None]]:
        """Return (name, IPv4 address, IPv6 address) per mapping, least recently used first."""
        return [
            (name, _text(mapping.v4), _text(mapping.v6)) for name, mapping in self._table.items()
        ]

    def _recycle(self) -> None:
        """Take back the least recently used mapping, freeing its addresses for the next name."""
        _, mapping = self._table.popitem(last=False)
        by_address = self._by_address
        if mapping.v4 is not None:
            del by_address[mapping.v4.packed]
            self._pool4.release(mapping.v4)
        if mapping.v6 is not None:
            assert self._pool6 is not None
            del by_address[mapping.v6.packed]
            self._pool6.release(mapping.v6)
        self.counters.inc("recycled")

    def _touch(self) -> None:
        """Note that the table (or its order, which is saved too) changed."""
        if self._dirty_since is None:
            self._dirty_since = self._clock()

    # -- persistence ------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """Whether the table changed since it was last saved or loaded."""
        return self._dirty_since is not None

    @property
    def dirty_since(self) -> float | None:
        """When (on the pool's clock) the first unsaved change was made, or None."""
        return self._dirty_since

    def save(self) -> None:
        """Write the table to the state file atomically and clear :attr:`dirty`.

        The file is written beside the state file and renamed over it, so a crash leaves
        either the old table or the new one. It is readable by its owner only (the names say
        what was visited). OSError propagates; FakeIpError without a state file.
        """
        path = self._state_file
        if path is None:
            raise FakeIpError("the fake-IP pool has no state file to save to")
        document = {
            "format": _FORMAT_NAME,
            "version": FORMAT_VERSION,
            "ipv4": str(self._pool4.network),
            "ipv6": str(self._pool6.network) if self._pool6 is not None else None,
            "mappings": self.mappings(),
        }
        data = json.dumps(document, separators=(",", ":")).encode()
        write_atomically(path, data)
        self._dirty_since = None

    def save_if_due(self, delay: float) -> bool:
        """Save when changes have waited at least ``delay`` seconds; return whether it saved."""
        since = self._dirty_since
        if self._state_file is None or since is None or self._clock() - since < delay:
            return False
        self.save()
        return True

    def load(self) -> None:
        """Replace the table with the state file's.

        Addresses outside the pools as configured now (the prefixes changed, or an address
        that is never handed out) are left out, and so are mappings left with no address; if
        the file holds more than ``size`` mappings, the least recently used are left out.
        Raises :class:`FakeIpError` naming the file when it cannot be read or is corrupt; the
        table is then unchanged.
        """
        path = self._state_file
        if path is None:
            raise FakeIpError("the fake-IP pool has no state file to load from")
        self._load(path, missing_ok=False)

    def _load(self, path: Path, *, missing_ok: bool) -> None:
        """Do :meth:`load`; a missing file leaves the table empty if ``missing_ok``."""
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError as error:
            if missing_ok:
                return
            raise FakeIpError(f"{path}: cannot read fake-IP state: {error}", path) from error
        except OSError as error:
            raise FakeIpError(f"{path}: cannot read fake-IP state: {error}", path) from error
        except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON
            raise FakeIpError(f"{path}: corrupt fake-IP state: not JSON ({error})", path) from error
        try:
            entries = _entries(document)
        except ValueError as error:
            raise FakeIpError(f"{path}: corrupt fake-IP state: {error}", path) from error
        table: OrderedDict[str, _Mapping] = OrderedDict()
        by_address: dict[bytes, str] = {}
        dropped = 0
        pool6 = self._pool6
        for name, v4, v6 in entries:
            if v4 is not None and not self._pool4.holds(v4):
                v4 = None
            if v6 is not None and (pool6 is None or not pool6.holds(v6)):
                v6 = None
            if v4 is None and v6 is None:
                dropped += 1
                continue
            table[name] = mapping = _Mapping(v4, v6)
            if mapping.v4 is not None:
                by_address[mapping.v4.packed] = name
            if mapping.v6 is not None:
                by_address[mapping.v6.packed] = name
        while len(table) > self._size:
            _, mapping = table.popitem(last=False)
            for address in (mapping.v4, mapping.v6):
                if address is not None:
                    del by_address[address.packed]
            dropped += 1
        self._table = table
        self._by_address = by_address
        # Fresh cursors: they skip the addresses now in use, and find those left out.
        self._pool4 = _Pool(self._pool4.network, self._pool4.first, self._pool4.last)
        if pool6 is not None:
            self._pool6 = _Pool(pool6.network, pool6.first, pool6.last)
        if dropped:
            self.counters.inc("load_dropped", dropped)
            log.info("fake-IP state %s: %d of %d mappings left out", path, dropped, len(entries))
            self._dirty_since = self._clock()
        else:
            self._dirty_since = None


def _text(address: _Address | None) -> str | None:
    """Return an address as text, None as None."""
    return None if address is None else str(address)


def _entries(
    document: Any,
) -> list[tuple[str, ipaddress.IPv4Address | None, ipaddress.IPv6Address | None]]:
    """Check a state document's shape and return its mappings, least recently used first."""
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.get("format") != _FORMAT_NAME:
        raise ValueError(f"format is not {_FORMAT_NAME!r}")
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported version {document.get('version')!r}")
    rows = document.get("mappings")
    if not isinstance(rows, list):
        raise ValueError("'mappings' is not a list")
    entries: list[tuple[str, ipaddress.IPv4Address | None, ipaddress.IPv6Address | None]] = []
    names: set[str] = set()
    addresses: set[_Address] = set()
    for index, row in enumerate(rows):
        where = f"mapping {index}"
        if not isinstance(row, list) or len(row) != 3:
            raise ValueError(f"{where} is not [name, ipv4, ipv6]")
        name, v4_text, v6_text = row
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: the name is not a non-empty string")
        name = normalise_name(name)
        if name in names:
            raise ValueError(f"{where}: a name seen before")
        names.add(name)
        v4 = _row_address(v4_text, 4, where)
        v6 = _row_address(v6_text, 6, where)
        assert v4 is None or isinstance(v4, ipaddress.IPv4Address)
        assert v6 is None or isinstance(v6, ipaddress.IPv6Address)
        if v4 is None and v6 is None:
            raise ValueError(f"{where} has no address")
        for address in (v4, v6):
            if address is not None:
                if address in addresses:
                    raise ValueError(f"{where}: address {address} given to two names")
                addresses.add(address)
        entries.append((name, v4, v6))
    return entries


def _row_address(text: object, version: int, where: str) -> _Address | None:
    """Parse one address of a state file's mapping (None stays None)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{where}: an address is not a string")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is None or address.version != version:
        raise ValueError(f"{where}: {text!r} is not an IPv{version} address")
    return address
