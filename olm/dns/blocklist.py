r"""DNS blocklists, the data side: reading lists, compact sets of names, sources and their refresh.

Names are in DNS wire format, lower case, ending with the root label (RFC 1035 section 3.1):
``www.example.com`` is ``b"\x03www\x07example\x03com\x00"``, as in a request's cache key.

* :func:`parse_list` reads a list in hosts format, as plain domains or in adblock syntax,
  detected line by line. Every listed name blocks itself and its subdomains, as blocky and
  AdGuard Home treat hosts and domain entries.
* :class:`DomainSet` holds a million names in 8 MB and answers whether a name or one of its
  parents is in it; :class:`Blocklists` is an immutable snapshot of named sets and an allow set.
* :class:`ListSource` names a file or an ``http(s)://`` URL; :func:`load` reads one at start-up
  (a URL from its cached copy when there is one), :func:`fetch` downloads a URL again, and
  :class:`ListRefresher` does so every ``refresh`` seconds. A download replaces the cached copy
  only when it reads as a list, so a failed or bad download keeps the last good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import ipaddress
import logging
import os
import re
import time
import urllib.error
import urllib.request
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from netstack.counters import Counters
from olm.fileio import write_atomically

__all__ = [
    "MAX_LIST_BYTES",
    "Blocklists",
    "DomainSet",
    "ListError",
    "ListRefresher",
    "ListSource",
    "ParsedList",
    "fetch",
    "load",
    "parse_list",
    "text_name",
    "wire_name",
]

log = logging.getLogger("olm.dns.blocklist")

#: The largest list accepted, read or downloaded (a million names in hosts format: 30 MiB).
MAX_LIST_BYTES: Final = 128 * 1024 * 1024
#: How many skipped lines :attr:`ParsedList.first_skipped` keeps, and how long each may be.
_FIRST_SKIPPED: Final = 5
_SKIPPED_TEXT: Final = 80
#: A file with more non-blank lines than this that yields no rule is not a blocklist.
_FEW_LINES: Final = 5
_USER_AGENT: Final = "olm-blocklist/1"

_MAX_NAME: Final = 255  # octets on the wire (RFC 1035 section 3.1)
_MAX_LABEL: Final = 63
_LENGTH_BYTES: Final = tuple(bytes((n,)) for n in range(_MAX_LABEL + 1))

#: Names in hosts files that stand for the machine or the link, never blocked (the header of
#: the usual hosts-format lists maps them).
_NOT_BLOCKED: Final = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)

#: A host name as lists spell it: letters, digits, hyphens and underscores (service labels,
#: RFC 8552), labels of 1 to 63 octets, an optional final dot. Checked after lower-casing.
_HOST_NAME: Final = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*\.?")


class ListError(ValueError):
    """A list cannot be used: unreadable, not UTF-8 text, or not a list at all.

    ``origin`` is the file or URL, ``line`` the line at fault (0 when it is about the whole
    file or the download); ``str()`` gives ``"{origin}:{line}: {message}"``.
    """

    def __init__(self, origin: str, line: int, message: str) -> None:
        super().__init__(f"{origin}:{line}: {message}")
        self.origin = origin
        self.line = line
        self.message = message


# -- names -------------------------------------------------------------------------------------


def wire_name(text: str) -> bytes:
    """Return the wire form of a name in presentation form, in lower case.

    The final dot is optional and ``"."`` is the root. Labels are ASCII; a backslash quotes
    the next character or gives an octet as three decimal digits (RFC 1035 section 5.1).
    Raises ValueError for an empty label, a label over 63 octets or a name over 255 (RFC 1035
    section 2.3.4), and for characters that are not printable ASCII.
    """
    if text == ".":
        return b"\x00"
    if "\\" in text:
        labels = _unescape(text)
    else:
        if not text.isascii() or not text.isprintable() or " " in text:
            raise ValueError(f"{text!r}: not a name of printable ASCII characters")
        labels = text.encode("ascii").split(b".")
        if len(labels) > 1 and not labels[-1]:
            labels.pop()  # the final dot
    size = 1
    for label in labels:
        if not label:
            raise ValueError(f"{text!r}: empty label")
        if len(label) > _MAX_LABEL:
            raise ValueError(f"{text!r}: label longer than 63 octets")
        size += len(label) + 1
    if size > _MAX_NAME:
        raise ValueError(f"{text!r}: name longer than 255 octets")
    return b"".join([_LENGTH_BYTES[len(label)] + label for label in labels]).lower() + b"\x00"


def _unescape(text: str) -> list[bytes]:
    """Split a name with backslash escapes into labels (a final dot leaves no empty label)."""
    labels: list[bytes] = []
    label = bytearray()
    i = 0
    end = len(text)
    while i < end:
        char = text[i]
        i += 1
        if char == ".":
            labels.append(bytes(label))
            label.clear()
            if i == end:
                return labels
            continue
        if char == "\\":
            digits = text[i : i + 3]
            if digits[:1] in ("", *"0123456789"):
                if len(digits) < 3 or not all(d in "0123456789" for d in digits):
                    raise ValueError(f"{text!r}: a backslash needs 3 digits or one character")
                value = int(digits)
                if value > 255:
                    raise ValueError(f"{text!r}: \\{digits} is not an octet")
                label.append(value)
                i += 3
                continue
            char = text[i]
            i += 1
        elif char == " ":
            raise ValueError(f"{text!r}: a space must be escaped")
        if not (char.isascii() and char.isprintable()):
            raise ValueError(f"{text!r}: not a name of printable ASCII characters")
        label.append(ord(char))
    labels.append(bytes(label))
    return labels


def _text_octet(octet: int) -> str:
    if octet in (0x2E, 0x5C):  # "." and "\" are quoted
        return "\\" + chr(octet)
    if 0x21 <= octet <= 0x7E:
        return chr(octet)
    return f"\\{octet:03d}"


_TEXT_OCTETS: Final = tuple(_text_octet(octet) for octet in range(256))


def text_name(wire: bytes) -> str:
    """Return the presentation form of a wire name, with its final dot (``"."`` for the root).

    Octets that are not printable ASCII, and dots and backslashes inside labels, are escaped
    as RFC 1035 section 5.1 does, so :func:`wire_name` reads the result back. Raises
    ValueError when ``wire`` is not exactly one uncompressed name.
    """
    parts: list[str] = []
    off = 0
    end = len(wire)
    while True:
        if off >= end:
            raise ValueError("name without its root label")
        length = wire[off]
        if length == 0:
            break
        if length > _MAX_LABEL or off + 1 + length > end:
            raise ValueError(f"bad label at offset {off}")
        parts.append("".join([_TEXT_OCTETS[octet] for octet in wire[off + 1 : off + 1 + length]]))
        off += length + 1
    if off + 1 != end:
        raise ValueError("bytes after the root label")
    if end > _MAX_NAME:
        raise ValueError("name longer than 255 octets")
    return ".".join(parts) + "."


def _list_name(text: str) -> bytes | None:
    """Return the wire form of a host name as lists write it (lower case), None if it is not."""
    if _HOST_NAME.fullmatch(text) is None:
        return None
    raw = text.encode("ascii")
    if raw[-1] == 0x2E:
        raw = raw[:-1]
    if len(raw) > _MAX_NAME - 2:  # a first length octet and the root label come on top
        return None
    return b"".join([_LENGTH_BYTES[len(label)] + label for label in raw.split(b".")]) + b"\x00"


# -- reading lists -----------------------------------------------------------------------------


@dataclass(slots=True)
class ParsedList:
    """What a list says: names it blocks and names it allows (wire form), and what it skipped.

    ``lines`` counts every line read; ``skipped`` the lines that were not understood (rules
    with modifiers, paths, cosmetic rules, regular expressions, invalid names), of which
    ``first_skipped`` keeps the first few as ``(line number, text)`` for logs.
    """

    origin: str
    block: list[bytes] = field(default_factory=list, repr=False)
    allow: list[bytes] = field(default_factory=list, repr=False)
    lines: int = 0
    skipped: int = 0
    first_skipped: list[tuple[int, str]] = field(default_factory=list)


def parse_list(text: str, origin: str) -> ParsedList:
    """Read a list in hosts format, as plain domains or in adblock syntax, detected per line.

    * hosts: ``0.0.0.0 ads.example.com``, every name after the address (the names of the
      machine itself, ``localhost`` and the like, are left out); ``#`` starts a comment.
    * plain: one domain per line; ``*.example.com`` is the same as ``example.com``.
    * adblock: ``||example.com^`` blocks, ``@@||example.com^`` allows; ``!`` comments and
      ``[Adblock Plus 2.0]`` headers are ignored; other rules (``$`` modifiers, paths, ``##``
      cosmetic rules, ``/regular expressions/``) are skipped and counted.

    Every name blocks or allows itself and its subdomains. Raises :class:`ListError` for a
    NUL character (not a text file) and when a file of more than a few lines yields no rule.
    """
    result = ParsedList(origin)
    block = result.block
    allow = result.allow
    addresses: set[str] = set()  # first fields already known to be addresses
    nul = text.find("\x00")
    if nul >= 0:
        raise ListError(origin, text.count("\n", 0, nul) + 1, "a NUL character: not a text file")
    lines = text.removeprefix("\ufeff").split("\n")  # a byte order mark is not text
    if lines[-1] == "":
        lines.pop()
    result.lines = len(lines)
    content = 0
    for number, raw in enumerate(lines, 1):
        line = raw.strip().lower()
        if not line:
            continue
        content += 1
        first = line[0]
        if first == "#" or first == "!" or (first == "[" and line[-1] == "]"):
            continue
        ok = False
        if first == "|" or first == "@":
            # Adblock Plus and AdGuard filter syntax: only domain rules, ||name^, are read.
            rules = block
            if line.startswith("@@"):
                rules = allow
                line = line[2:]
            if line.startswith("||") and line.endswith("^"):
                wire = _list_name(line[2:-1])
                if wire is not None:
                    rules.append(wire)
                    ok = True
        else:
            fields = line.split()
            head = fields[0]
            if len(fields) > 1 and (head in addresses or _is_address(head, addresses)):
                ok = True
                names = 0
                for name in fields[1:]:
                    if name[0] == "#":
                        break
                    names += 1
                    if name in _NOT_BLOCKED:
                        continue
                    wire = _list_name(name)
                    if wire is None:
                        ok = False
                    else:
                        block.append(wire)
                ok = ok and names > 0
            elif len(fields) == 1 or fields[1][0] == "#":
                if head[-1].isdigit() and _is_address(head, addresses):
                    pass  # an address without names
                elif head in _NOT_BLOCKED:
                    ok = True
                else:
                    wire = _list_name(head[2:] if head.startswith("*.") else head)
                    if wire is not None:
                        block.append(wire)
                        ok = True
        if not ok:
            result.skipped += 1
            if len(result.first_skipped) < _FIRST_SKIPPED:
                result.first_skipped.append((number, raw.strip()[:_SKIPPED_TEXT]))
    if not block and not allow and result.skipped and content > _FEW_LINES:
        number, sample = result.first_skipped[0]
        raise ListError(
            origin,
            0,
            f"no rule in {content} lines, not a list in hosts, domain or adblock format "
            f"(line {number}: {sample!r})",
        )
    return result


def _is_address(text: str, known: set[str]) -> bool:
    """Return whether ``text`` is an IP address, remembering those that are in ``known``."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    known.add(text)
    return True


def _decode(data: bytes, origin: str) -> str:
    """Return a list's bytes as text (UTF-8; :func:`parse_list` drops a byte order mark)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ListError(origin, data.count(b"\n", 0, exc.start) + 1, "not UTF-8 text") from None


# -- sets of names -----------------------------------------------------------------------------


class DomainSet:
    """An immutable set of names matched with their subdomains, in about 8.3 bytes per name.

    Each name is kept as the 64-bit ``hash()`` of its wire form in a sorted ``array("q")`` and
    looked up by bisection. Python hashes bytes with SipHash-1-3 under a random key drawn at
    start-up (``sys.hash_info``; unless ``PYTHONHASHSEED`` fixes it), so whoever writes a list
    or sends queries cannot craft names whose hashes collide. A name not in the set is taken for
    one that is with probability about n / 2**64 per suffix tried: below 1e-12 per lookup for a
    million names. The hashes are only good in the process that made them: never store them.

    A second array, one 32-bit offset per 2**k hashes' worth of the hash space (about one per
    16 names), gives the slice of the sorted array where a hash's top bits put it: the
    bisection then takes 4 steps instead of 20 for a million names.
    """

    __slots__ = ("_hashes", "_index", "_shift", "_size")

    def __init__(self, hashes: array[int]) -> None:
        """Wrap ``hashes``, sorted and without duplicates (as :meth:`build` makes them)."""
        self._hashes = hashes
        self._size = size = len(hashes)
        bits = max(1, (size >> 4).bit_length())
        self._shift = shift = 64 - bits
        # _index[b] is where the hashes whose top ``bits`` bits are b start, b counted from
        # the most negative hash; _index[2**bits] is the end.
        half = 1 << (bits - 1)
        self._index = array(
            "I", [bisect_left(hashes, (b - half) << shift) for b in range(2 * half)] + [size]
        )

    @classmethod
    def build(cls, names: Iterable[bytes]) -> DomainSet:
        """Return the set of ``names`` (wire form, lower case); duplicates collapse."""
        return cls(array("q", sorted(set(map(hash, names)))))

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """The bytes of its two arrays (hashes and index)."""
        return self._size * self._hashes.itemsize + len(self._index) * self._index.itemsize

    def covers(self, name: bytes) -> bool:
        """Return whether ``name`` or one of its parents (the root apart) is in the set."""
        if not self._size:
            return False
        hashes = self._hashes
        index = self._index
        shift = self._shift
        half = len(index) >> 1
        off = 0
        last = len(name) - 1  # the root label
        while off < last:
            key = hash(name[off:])
            bucket = (key >> shift) + half
            hi = index[bucket + 1]
            i = bisect_left(hashes, key, index[bucket], hi)
            if i < hi and hashes[i] == key:
                return True
            off += name[off] + 1
        return False

    def __repr__(self) -> str:
        return f"DomainSet({self._size} names)"


_EMPTY: Final = DomainSet(array("q"))


class Blocklists:
    """An immutable snapshot of named blocklists and one allow set; the allow set wins.

    ``lists`` are ``(name, set)`` pairs in the order they are asked; a name is blocked by the
    first list that covers it, unless ``allow`` covers it.
    """

    __slots__ = ("_allow", "_lists")

    def __init__(self, lists: Sequence[tuple[str, DomainSet]], allow: DomainSet = _EMPTY) -> None:
        names = [name for name, _ in lists]
        if len(set(names)) != len(names):
            raise ValueError(f"blocklist names must differ: {names}")
        self._lists = tuple(lists)
        self._allow = allow

    def match(self, name: bytes) -> str | None:
        """Return the name of the first list that blocks ``name`` (wire form), None if none."""
        for list_name, domains in self._lists:
            if domains.covers(name):
                return None if self._allow.covers(name) else list_name
        return None

    def __len__(self) -> int:
        return len(self._lists)

    @property
    def names(self) -> tuple[str, ...]:
        """The lists' names, in order."""
        return tuple(name for name, _ in self._lists)

    @property
    def lists(self) -> tuple[tuple[str, DomainSet], ...]:
        """The ``(name, set)`` pairs, in order."""
        return self._lists

    @property
    def allow(self) -> DomainSet:
        """The names never blocked."""
        return self._allow

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {len(domains)}" for name, domains in self._lists)
        return f"Blocklists({sizes}; allow: {len(self._allow)})"


# -- sources -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListSource:
    """A list to read: its name, a file path or ``http://``/``https://`` URL, how often to refresh.

    ``refresh`` (seconds) applies to URLs: :class:`ListRefresher` downloads them again that
    often. Files are read when loaded.
    """

    name: str
    location: str
    refresh: float = 86400.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a list needs a name")
        if not self.location:
            raise ValueError(f"list {self.name}: no location")
        if not self.refresh > 0:
            raise ValueError(f"list {self.name}: refresh must be greater than 0")

    @property
    def is_url(self) -> bool:
        """Whether the list is downloaded (an ``http://`` or ``https://`` URL)."""
        return self.location.startswith(("http://", "https://"))

    def cache_path(self, cache_dir: Path) -> Path:
        """Return where the last good download of this URL is kept (named by its SHA-256)."""
        digest = hashlib.sha256(self.location.encode("utf-8")).hexdigest()[:32]
        return cache_dir / f"blocklist-{digest}.txt"


def load(source: ListSource, cache_dir: Path, timeout: float = 30.0) -> ParsedList:
    """Read a list at start-up: a file directly, a URL from its cached copy or, without one, now.

    A cached copy that cannot be read is logged and the URL downloaded instead. Blocks while
    it reads or downloads. Raises :class:`ListError`.
    """
    if not source.is_url:
        return _read_file(source.location)
    cached = source.cache_path(cache_dir)
    if cached.exists():
        try:
            return _read_file(str(cached))
        except ListError as exc:
            log.warning("blocklist %s: the cached copy is unusable: %s", source.name, exc)
    parsed = _fetch_now(source, cache_dir, timeout, unchanged=False)
    assert parsed is not None
    return parsed


async def fetch(source: ListSource, cache_dir: Path, timeout: float = 30.0) -> ParsedList:
    """Download a URL list again (a file is read again) and cache it if it reads as a list.

    The download and the parsing run in a thread. A failed download, an HTTP status other than
    200 or a body that is not a list raises :class:`ListError` and leaves the cached copy as it
    was.
    """
    parsed = await asyncio.to_thread(_fetch_now, source, cache_dir, timeout, False)
    assert parsed is not None
    return parsed


def _read_file(path: str) -> ParsedList:
    """Read and parse a list file."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise ListError(path, 0, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_LIST_BYTES:
        raise ListError(path, 0, f"larger than {MAX_LIST_BYTES} bytes")
    return parse_list(_decode(data, path), path)


def _fetch_now(
    source: ListSource, cache_dir: Path, timeout: float, unchanged: bool
) -> ParsedList | None:
    """Download, parse and cache a list; with ``unchanged``, return None if the cache has it."""
    if not source.is_url:
        return _read_file(source.location)
    data = _download(source.location, timeout)
    cached = source.cache_path(cache_dir)
    if unchanged:
        with contextlib.suppress(OSError):
            if cached.read_bytes() == data:
                os.utime(cached)  # checked now: the next refresh is due one period from now
                return None
    parsed = parse_list(_decode(data, source.location), source.location)
    try:
        write_atomically(cached, data)
    except OSError as exc:
        log.warning("blocklist %s: cannot cache it in %s: %s", source.name, cached, exc)
    return parsed


def _download(url: str, timeout: float) -> bytes:
    """Return the body of a 200 answer to a GET of ``url``, within about ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    chunks: list[bytes] = []
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            if status != 200:
                raise ListError(url, 0, f"HTTP status {status}")
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > MAX_LIST_BYTES:
                    raise ListError(url, 0, f"larger than {MAX_LIST_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise ListError(url, 0, f"download took longer than {timeout:g} s")
                chunks.append(chunk)
    except urllib.error.HTTPError as exc:
        raise ListError(url, 0, f"HTTP status {exc.code}") from None
    except urllib.error.URLError as exc:
        raise ListError(url, 0, f"download failed: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ListError(url, 0, f"download failed: {exc!r}") from None
    return b"".join(chunks)


class ListRefresher:
    """Downloads each URL source again every ``refresh`` seconds and reports new versions.

    A new version that reads as a list is cached and passed to ``on_update(name, parsed)``
    (called on the event loop). One that is byte for byte the cached copy is only counted. A
    failure is logged and tried again after ``retry_delay`` seconds, doubling, at most
    ``retries`` times; then the source waits for its next period with its last good copy.
    The first download of a source is due one period after its cached copy was written (at
    once without one). Counters: ``fetched``, ``fetch_failed``, ``unchanged``.
    """

    def __init__(
        self,
        sources: Iterable[ListSource],
        cache_dir: Path,
        on_update: Callable[[str, ParsedList], None],
        counters: Counters,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        retry_delay: float = 60.0,
    ) -> None:
        self.sources = [source for source in sources if source.is_url]
        self.cache_dir = cache_dir
        self.on_update = on_update
        self.counters = counters
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the refresh task (nothing to do without URL sources)."""
        if self._task is None and self.sources:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="blocklist refresh"
            )

    async def stop(self) -> None:
        """Stop the refresh task; a download in progress finishes in its thread, unused."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due: dict[ListSource, float] = {}
        failures: dict[ListSource, int] = {}
        for source in self.sources:
            try:
                age = time.time() - source.cache_path(self.cache_dir).stat().st_mtime
            except OSError:
                age = source.refresh
            due[source] = loop.time() + max(0.0, source.refresh - age)
            failures[source] = 0
        while True:
            source = min(due, key=due.__getitem__)
            delay = due[source] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if await self._refresh(source):
                failures[source] = 0
                due[source] = loop.time() + source.refresh
            elif failures[source] < self.retries:
                due[source] = loop.time() + self.retry_delay * 2 ** failures[source]
                failures[source] += 1
            else:
                failures[source] = 0
                due[source] = loop.time() + source.refresh

    async def _refresh(self, source: ListSource) -> bool:
        """Download one source; return whether it went well (a new version or the same)."""
        try:
            parsed = await asyncio.to_thread(_fetch_now, source, self.cache_dir, self.timeout, True)
        except ListError as exc:
            self.counters.inc("fetch_failed")
            log.warning("blocklist %s: %s; keeping the last good copy", source.name, exc)
            return False
        except Exception:
            self.counters.inc("fetch_failed")
            log.exception("blocklist %s: download failed; keeping the last good copy", source.name)
            return False
        if parsed is None:
            self.counters.inc("unchanged")
            log.debug("blocklist %s: unchanged", source.name)
            return True
        self.counters.inc("fetched")
        log.info(
            "blocklist %s: %d names blocked, %d allowed, %d of %d lines skipped",
            source.name,
            len(parsed.block),
            len(parsed.allow),
            parsed.skipped,
            parsed.lines,
        )
        try:
            self.on_update(source.name, parsed)
        except Exception:
            log.exception("blocklist %s: the update failed", source.name)
        return True
