"""Files of local data: custom records, lines (client groups) and hosts files.

* Records: the Pipy DNS proxy's JSON format, unchanged: an array of objects with ``name``,
  ``type``, ``ttl``, ``rdata`` and optional ``labels`` and ``status`` (``"deny"``); ``rdata`` is
  a string for A, AAAA, CNAME, NS, PTR and TXT and an object for MX, SRV, SOA and CAA
  (:func:`olm.dns.rdata.encode_rdata`). The same objects may be written in TOML
  (``[[records]]``), in a file or in the settings.
* Lines: the Pipy format, ``{"line1": ["192.168.1.110/32"], "line2": ["127.0.0.1/32"]}``: a
  label for each group of client prefixes (IPv4 and IPv6).
* Hosts files: hosts(5): an address, a canonical name, aliases; ``#`` comments.

Every error names the file, the line and the field: ``records.json:12: field 'rdata': ...``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olm.dns.local import LocalData, LocalRecord
from olm.dns.rdata import TYPES, RdataError, encode_rdata, name_from_text, ptr_name

__all__ = [
    "DataError",
    "HostsData",
    "Lines",
    "RecordSpec",
    "build_local_data",
    "parse_records",
    "read_hosts_files",
    "read_lines_file",
    "read_records_file",
]

_DEFAULT_TTL = 300
_MAX_TTL = 2**31 - 1  # RFC 2181 section 8
_RECORD_FIELDS = {"name", "type", "ttl", "rdata", "labels", "status"}


class DataError(ValueError):
    """A data file is unreadable or wrong; the message names the file, line and field."""


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """One record as written in a file or the settings, checked; ``origin`` is ``file:line``."""

    name: str
    type: str
    ttl: int
    rdata: Any
    labels: tuple[str, ...] = ()
    deny: bool = False
    origin: str = ""


def _json_elements(text: str, path: Path) -> list[tuple[int, Any]]:
    """Return the elements of a top-level JSON array, each with the line it starts on."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    try:
        start = ws.match(text, 0).end()  # type: ignore[union-attr]
        if text[start : start + 1] != "[":
            raise DataError(f"{path}:{_line_of(text, start)}: must be a JSON array of records")
        pos = ws.match(text, start + 1).end()  # type: ignore[union-attr]
        elements: list[tuple[int, Any]] = []
        if text[pos : pos + 1] == "]":
            return elements
        while True:
            value, end = decoder.raw_decode(text, pos)
            elements.append((_line_of(text, pos), value))
            pos = ws.match(text, end).end()  # type: ignore[union-attr]
            if text[pos : pos + 1] == "]":
                return elements
            if text[pos : pos + 1] != ",":
                raise DataError(f"{path}:{_line_of(text, pos)}: expected ',' or ']'")
            pos = ws.match(text, pos + 1).end()  # type: ignore[union-attr]
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None


def _field_line(text: str, start_line: int, key: str) -> int:
    """Return the line where ``key`` first appears at or after ``start_line``."""
    lines = text.splitlines()
    pattern = re.compile(rf"""["']?{re.escape(key)}["']?\s*[:=]""")
    for number in range(start_line, len(lines) + 1):
        if pattern.search(lines[number - 1]):
            return number
    return start_line


def parse_records(
    items: Iterable[tuple[int, Any]], path: Path | str, text: str = ""
) -> list[RecordSpec]:
    """Check record objects (each with the line it starts on) and return their specs."""
    specs = []
    for line, item in items:

        def fail(name: str, message: str, *, at: int = line) -> DataError:
            where = _field_line(text, at, name.split(".")[0]) if text else at
            return DataError(f"{path}:{where}: field {name!r}: {message}")

        if not isinstance(item, Mapping):
            raise DataError(f"{path}:{line}: a record must be an object, not {item!r}")
        unknown = set(item) - _RECORD_FIELDS
        if unknown:
            raise fail(sorted(unknown)[0], f"unknown (known: {', '.join(sorted(_RECORD_FIELDS))})")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise fail("name", "must be a domain name")
        rtype = item.get("type")
        if not isinstance(rtype, str) or rtype.upper() not in TYPES:
            raise fail("type", f"must be one of {', '.join(TYPES)}")
        ttl = item.get("ttl", _DEFAULT_TTL)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= _MAX_TTL:
            raise fail("ttl", f"must be an integer from 0 to {_MAX_TTL}")
        labels = item.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise fail("labels", "must be a list of strings")
        status = item.get("status")
        if status not in (None, "deny", "allow"):
            raise fail("status", "must be 'deny' (or 'allow')")
        if "rdata" not in item and status != "deny":
            raise fail("rdata", "is missing")
        spec = RecordSpec(
            name,
            rtype.upper(),
            ttl,
            item.get("rdata"),
            tuple(labels),
            status == "deny",
            f"{path}:{line}",
        )
        try:
            name_from_text(name)
            if not spec.deny:
                encode_rdata(spec.type, spec.rdata)
        except RdataError as exc:
            raise fail(exc.field, exc.message) from None
        specs.append(spec)
    return specs


def read_records_file(path: str | Path) -> list[RecordSpec]:
    """Read a records file: JSON (the Pipy format) or TOML (``[[records]]``)."""
    path = Path(path)
    text = _read(path)
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise DataError(f"{path}: {exc}") from None
        records = data.get("records", [])
        if set(data) - {"records"} or not isinstance(records, list):
            raise DataError(f"{path}: must hold [[records]] tables only")
        return parse_records(_toml_lines(text, records), path, text)
    return parse_records(_json_elements(text, path), path, text)


def _toml_lines(text: str, records: Sequence[Any]) -> list[tuple[int, Any]]:
    """Pair each ``[[records]]`` table with the line of its header."""
    header = re.compile(r"\s*\[\[\s*records\s*\]\]")
    headers = [n for n, line in enumerate(text.splitlines(), 1) if header.match(line)]
    return [(headers[i] if i < len(headers) else 1, item) for i, item in enumerate(records)]


def build_local_data(
    specs: Sequence[RecordSpec],
    *,
    zones: Iterable[str] = (),
    deny: Iterable[str] = (),
    auto_ptr: bool = False,
    negative_ttl: int = 60,
    serial: int = 1,
) -> LocalData:
    """Make the LocalData of checked specs; a CNAME beside other data is an error.

    RFC 1034 section 3.6.2: a name with a CNAME has no other data. With ``auto_ptr``, every A
    and AAAA record gets a PTR record for its address (unless one is given).
    """
    records: list[tuple[bytes, LocalRecord]] = []
    denied = [name_from_text(n, "deny") for n in deny]
    owners: dict[bytes, tuple[set[str], str]] = {}
    for spec in specs:
        owner = name_from_text(spec.name)
        if spec.deny:
            denied.append(owner)
            continue
        types, first = owners.setdefault(owner, (set(), spec.origin))
        types.add(spec.type)
        if "CNAME" in types and len(types) > 1:
            raise DataError(
                f"{spec.origin}: field 'type': {spec.name} has a CNAME and other data "
                f"(RFC 1034 3.6.2; first record at {first})"
            )
        rdata = encode_rdata(spec.type, spec.rdata)
        labels = frozenset(spec.labels)
        records.append((owner, LocalRecord(TYPES[spec.type], spec.ttl, rdata, labels)))
    if auto_ptr:
        have = {owner for owner, r in records if r.rtype == TYPES["PTR"]}
        for spec in specs:
            if spec.type in ("A", "AAAA") and not spec.deny:
                reverse = ptr_name(spec.rdata)
                if reverse not in have:
                    have.add(reverse)
                    record = LocalRecord(TYPES["PTR"], spec.ttl, name_from_text(spec.name))
                    records.append((reverse, record))
    return LocalData(
        records,
        zones=[name_from_text(z, "zones") for z in zones],
        deny=denied,
        negative_ttl=negative_ttl,
        serial=serial,
    )


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Lines:
    """Client groups by source prefix: ``(network, label)`` pairs, longest prefix first."""

    prefixes: tuple[tuple[_Network, str], ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> Lines:
        """Check ``{"label": ["prefix", ...]}``; ``where`` starts the error messages."""
        pairs: list[tuple[_Network, str]] = []
        for label, prefixes in data.items():
            if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
                raise DataError(f"{where}: field {label!r}: must be a list of prefixes")
            for text in prefixes:
                try:
                    pairs.append((ipaddress.ip_network(text, strict=False), label))
                except ValueError:
                    raise DataError(
                        f"{where}: field {label!r}: {text!r} is not an IP prefix"
                    ) from None
        pairs.sort(key=lambda pair: -pair[0].prefixlen)
        return cls(tuple(pairs))

    def labels_of(self, address: bytes) -> frozenset[str] | None:
        """Return the labels of every group holding ``address`` (packed), None for none."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        found = frozenset(label for net, label in self.prefixes if ip in net)
        return found or None


def read_lines_file(path: str | Path) -> Lines:
    """Read a lines file in the Pipy format."""
    path = Path(path)
    text = _read(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}:1: must be an object of lines")
    try:
        return Lines.from_mapping(data, str(path))
    except DataError as exc:
        # Name the line of the offending label.
        message = str(exc)
        match = re.search(r"field '([^']*)'", message)
        line = _field_line(text, 1, match.group(1)) if match else 1
        raise DataError(message.replace(f"{path}:", f"{path}:{line}:", 1)) from None


@dataclass(slots=True)
class HostsData:
    """Names and addresses from hosts files: both directions, as wire names and packed IPs."""

    addresses: dict[bytes, list[bytes]] = field(default_factory=dict)  # name -> packed
    names: dict[bytes, bytes] = field(default_factory=dict)  # reverse name -> canonical name

    def __len__(self) -> int:
        return len(self.addresses)


def read_hosts_files(paths: Iterable[str | Path]) -> HostsData:
    """Read hosts(5) files in order; the first canonical name of an address answers its PTR."""
    data = HostsData()
    for path in map(Path, paths):
        text = _read(path)
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            try:
                address = ipaddress.ip_address(fields[0].split("%", 1)[0])
            except ValueError:
                raise DataError(
                    f"{path}:{number}: field 'address': {fields[0]!r} is not an IP address"
                ) from None
            if len(fields) < 2:
                raise DataError(f"{path}:{number}: field 'name': an address needs a name")
            names = []
            for text_name in fields[1:]:
                try:
                    names.append(name_from_text(text_name))
                except RdataError as exc:
                    raise DataError(f"{path}:{number}: field 'name': {exc.message}") from None
            packed = address.packed
            for name in names:
                known = data.addresses.setdefault(name, [])
                if packed not in known:
                    known.append(packed)
            data.names.setdefault(ptr_name(str(address)), names[0])
    return data
