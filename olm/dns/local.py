r"""Local DNS data: names with records, the zones they form, wildcards, and the answers they give.

Names are wire-format and lower case (``b"\\x03www\\x07example\\x03com\\x00"``); records carry their
RDATA encoded once (:mod:`olm.dns.rdata`) and the labels (lines, views) of the clients that may
see them. A lookup follows RFC 1034 section 4.3.2 for the data we hold:

* a name with records of the asked type: those records (AA=1);
* a name with a CNAME: the CNAME, then the target followed through local data (RFC 1034
  3.6.2), or handed back to the caller when the target is not local; a loop is refused;
* a name that exists (it owns records, or names below it do: an empty non-terminal) without the
  type: NODATA, with the zone's SOA (RFC 2308 section 2.2);
* a missing name: the wildcard ``*.<closest encloser>`` if there is one (RFC 4592 section 3.3.1:
  only the closest encloser's wildcard, so an explicit name blocks the wildcards above it);
  otherwise NXDOMAIN with the SOA when the name lies in a local zone, and "not ours" outside.

Negative answers always carry a SOA, so that resolvers cache them (RFC 2308 section 3): the
zone's own, or one synthesised for the name. A local zone is the owner of a SOA record in the
data or a name listed in ``zones``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from olm.dns.answer import NOERROR, NXDOMAIN, Answer
from olm.dns.rdata import encode_record, name_from_text, soa_rdata
from olm.dns.wire import AA, HEADER, TYPE_ANY

__all__ = ["LocalData", "LocalRecord", "Lookup", "Outcome", "local_answer"]

TYPE_CNAME: Final = 5
TYPE_SOA: Final = 6
_WILDCARD: Final = b"\x01*"
_POINTER: Final = b"\xc0\x0c"  # the question's name, at offset 12 (RFC 1035 4.1.4)
#: Longest CNAME chain followed through local data (loops end sooner).
MAX_CHAIN: Final = 8
_MNAME: Final = name_from_text("localhost.")
_RNAME: Final = name_from_text("hostmaster.localhost.")


@dataclass(frozen=True, slots=True)
class LocalRecord:
    """One record of a local name: type, TTL, encoded RDATA, and who may see it."""

    rtype: int
    ttl: int
    rdata: bytes
    labels: frozenset[str] = frozenset()  # empty: every client


class Outcome(enum.Enum):
    """What local data says about a name."""

    ANSWER = "answer"  # records (maybe after a CNAME chain)
    CNAME_OUT = "cname_out"  # a CNAME chain whose end is not local: ask for ``target``
    NODATA = "nodata"
    NXDOMAIN = "nxdomain"
    DENIED = "denied"  # on the deny list, or a record with status deny: REFUSED
    LOOP = "loop"  # a CNAME loop in local data
    NOT_OURS = "not_ours"


@dataclass(slots=True)
class Lookup:
    """The result of :meth:`LocalData.lookup`: records as ``(owner, record)`` and what else."""

    outcome: Outcome
    records: list[tuple[bytes, LocalRecord]] = field(default_factory=list)
    soa: bytes = b""  # a whole SOA record for the authority section of a negative answer
    target: bytes = b""  # the name to ask elsewhere, for CNAME_OUT


def _parents(name: bytes) -> Iterable[bytes]:
    """Yield the name's ancestors, nearest first, down to (not including) the root."""
    if not name[0]:
        return  # the root has none
    off = name[0] + 1
    while name[off]:
        yield name[off:]
        off += name[off] + 1


class LocalData:
    """The local names of one configuration: immutable once built.

    ``records`` are ``(owner, LocalRecord)`` pairs; ``zones`` the apexes of local zones (SOA
    owners are zones too); ``deny`` names answered REFUSED (``*.name`` for a whole subtree);
    ``negative_ttl`` is the TTL and MINIMUM of synthesised SOAs.
    """

    def __init__(
        self,
        records: Iterable[tuple[bytes, LocalRecord]] = (),
        *,
        zones: Iterable[bytes] = (),
        deny: Iterable[bytes] = (),
        negative_ttl: int = 60,
        serial: int = 1,
    ) -> None:
        self.names: dict[bytes, dict[int, list[LocalRecord]]] = {}
        for owner, record in records:
            self.names.setdefault(owner, {}).setdefault(record.rtype, []).append(record)
        self.negative_ttl = negative_ttl
        self.serial = serial
        # RFC 4592 section 2.2.2: a name exists if it owns records or has a descendant that
        # does (an empty non-terminal).
        self.exists: set[bytes] = set(self.names)
        for owner in self.names:
            self.exists.update(_parents(owner))
        self.zones: dict[bytes, bytes] = {}
        for apex in zones:
            self.zones[apex] = self.synthetic_soa(apex)
        for owner, types in self.names.items():
            for soa in types.get(TYPE_SOA, ())[:1]:
                self.zones[owner] = encode_record(owner, TYPE_SOA, soa.ttl, soa.rdata)
        self.deny: set[bytes] = set()
        self.deny_below: set[bytes] = set()
        for name in deny:
            if name.startswith(_WILDCARD):
                self.deny_below.add(name[2:])
            else:
                self.deny.add(name)

    def __len__(self) -> int:
        return sum(len(rs) for types in self.names.values() for rs in types.values())

    def synthetic_soa(self, owner: bytes) -> bytes:
        """Return a whole SOA record for ``owner``, made up (TTL and MINIMUM: negative_ttl)."""
        ttl = self.negative_ttl
        return encode_record(owner, TYPE_SOA, ttl, soa_rdata(_MNAME, _RNAME, self.serial, ttl))

    def zone_of(self, name: bytes) -> bytes | None:
        """Return the apex of the local zone ``name`` is in, if any."""
        zones = self.zones
        if name in zones:
            return name
        for parent in _parents(name):
            if parent in zones:
                return parent
        return None

    def denied(self, name: bytes) -> bool:
        """Whether ``name`` is on the deny list (itself, or below a ``*.`` entry)."""
        if name in self.deny:
            return True
        below = self.deny_below
        return bool(below) and any(p in below for p in _parents(name))

    def _visible(
        self, records: Sequence[LocalRecord], lines: frozenset[str] | None
    ) -> list[LocalRecord]:
        """Return the records a client of ``lines`` sees (None: in no line, sees all).

        A record with labels is seen by clients in one of them, one without by everyone. When
        a client's lines leave nothing of a set, it gets the whole set, as a client in no line.
        """
        if lines is None:
            return list(records)
        seen = [r for r in records if not r.labels or r.labels & lines]
        return seen or list(records)

    def _types(self, name: bytes) -> tuple[bytes, dict[int, list[LocalRecord]]] | None:
        """Find the records of ``name``, or of the wildcard standing for it (RFC 4592 4.3.1).

        Returns ``(owner, types)`` with the owner the records are served under (the name
        itself, also for wildcard synthesis); None when the name owns nothing (it may still
        exist as an empty non-terminal).
        """
        types = self.names.get(name)
        if types is not None:
            return name, types
        if name in self.exists:
            return None  # an empty non-terminal: no wildcard applies (RFC 4592 2.2.2)
        for parent in _parents(name):
            if parent in self.exists:
                # The closest encloser; only its own wildcard may be used (RFC 4592 3.3.1).
                source = self.names.get(_WILDCARD + parent)
                return (name, source) if source is not None else None
        return None

    def lookup(self, name: bytes, qtype: int, lines: frozenset[str] | None = None) -> Lookup:
        """Answer ``name`` and ``qtype`` from local data for a client of ``lines``."""
        if self.denied(name):
            return Lookup(Outcome.DENIED)
        result = Lookup(Outcome.ANSWER)
        seen: set[bytes] = set()
        current = name
        for _ in range(MAX_CHAIN + 1):
            found = self._types(current)
            if found is None:
                if not result.records:
                    return self._negative(current, exists=current in self.exists)
                # A CNAME chain ending outside local data (or at a missing local name).
                result.outcome = Outcome.CNAME_OUT
                result.target = current
                if self.zone_of(current) is not None:
                    negative = self._negative(current, exists=current in self.exists)
                    result.outcome, result.soa = negative.outcome, negative.soa
                return result
            owner, types = found
            if qtype == TYPE_ANY:
                for records in types.values():
                    result.records.extend((owner, r) for r in self._visible(records, lines))
                return result
            wanted = types.get(qtype)
            if wanted is not None:
                result.records.extend((owner, r) for r in self._visible(wanted, lines))
                return result
            cname = types.get(TYPE_CNAME)
            if cname is None:
                negative = self._negative(current, exists=True)
                if result.records:  # NODATA at the end of a chain: the chain and the SOA
                    result.outcome, result.soa = Outcome.NODATA, negative.soa
                    return result
                return negative
            if current in seen:
                return Lookup(Outcome.LOOP)
            seen.add(current)
            link = self._visible(cname, lines)[0]
            result.records.append((owner, link))
            current = link.rdata  # the target, an uncompressed lower-case name
            if current in seen:
                return Lookup(Outcome.LOOP)
        return Lookup(Outcome.LOOP)

    def _negative(self, name: bytes, *, exists: bool) -> Lookup:
        apex = self.zone_of(name)
        if apex is None and not exists:
            return Lookup(Outcome.NOT_OURS)
        soa = self.zones[apex] if apex is not None else self.synthetic_soa(name)
        return Lookup(Outcome.NODATA if exists else Outcome.NXDOMAIN, soa=soa)


def local_answer(
    question: bytes,
    name: bytes,
    records: Sequence[tuple[bytes, LocalRecord]],
    *,
    rcode: int = NOERROR,
    authority: Sequence[bytes] = (),
    extra: bytes = b"",
    extra_count: int = 0,
    authoritative: bool = True,
) -> Answer:
    """Make the Answer for local records: AA=1, TTLs as given (local data does not age).

    ``question`` is the question section (any spelling of ``name``); records owned by ``name``
    point at it (RFC 1035 4.1.4), others carry their owner in full. ``extra`` are further answer
    records already encoded (``extra_count`` of them), ``authority`` whole records.
    """
    body = bytearray()
    for owner, record in records:
        body += encode_record(
            _POINTER if owner == name else owner, record.rtype, record.ttl, record.rdata
        )
    body += extra
    for whole in authority:
        body += whole
    count = len(records) + extra_count
    header = HEADER.pack(0, AA if authoritative else 0, 1, count, len(authority), 0)
    ttls = [r.ttl for _, r in records]
    negative = rcode == NXDOMAIN or (rcode == NOERROR and not records and not extra_count)
    return Answer(
        header + question + bytes(body),
        12 + len(question),
        rcode,
        bits=AA if authoritative else 0,
        ttl=min(ttls) if ttls else -1,
        negative=negative,
    )
