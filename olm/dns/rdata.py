"""Resource records written by hand: names and RDATA in wire format, never compressed.

Local data (custom records, hosts files, fake-IP, blocked answers) is encoded once, when it is
loaded, into bytes that can be placed anywhere in a message: names are written in full (RFC 1035
section 3.1), so no compression pointer ever depends on where the record ends up. The types are
those the records file may hold: A, AAAA, CNAME, NS, PTR, TXT, MX, SRV, SOA and CAA.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping
from typing import Any, Final

from olm.dns.wire import RR_FIXED, U16

__all__ = [
    "CLASS_IN",
    "TYPES",
    "TYPE_NAMES",
    "RdataError",
    "encode_rdata",
    "encode_record",
    "name_from_text",
    "name_to_text",
    "ptr_name",
    "soa_rdata",
]

#: Type codes of the records a records file may hold (RFC 1035 3.2.2, RFC 3596, RFC 2782,
#: RFC 8659).
TYPES: Final = {
    "A": 1,
    "NS": 2,
    "CNAME": 5,
    "SOA": 6,
    "PTR": 12,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
    "SRV": 33,
    "CAA": 257,
}
TYPE_NAMES: Final = {code: name for name, code in TYPES.items()}
CLASS_IN: Final = 1


class RdataError(ValueError):
    """A record's name or data cannot be encoded; the message says which field and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field
        self.message = message


def name_from_text(text: str, field: str = "name") -> bytes:
    """Encode a domain name (``www.example.com`` or with the final dot) in lower case.

    Labels of 1 to 63 octets, 255 octets in all (RFC 1035 section 2.3.4); ``*`` is an ordinary
    label here (wildcards are the zone's business, RFC 4592). ``.`` alone is the root.
    """
    if not isinstance(text, str):
        raise RdataError(field, f"must be a domain name, not {text!r}")
    stripped = text.strip().rstrip(".")
    if text.strip() == ".":
        return b"\x00"
    if not stripped:
        raise RdataError(field, "must be a domain name, not empty")
    out = bytearray()
    for label in stripped.lower().split("."):
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError:
            raw = label.encode("idna") if label else b""
        if not 1 <= len(raw) <= 63:
            raise RdataError(field, f"{text!r}: labels must have 1 to 63 octets")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise RdataError(field, f"{text!r}: longer than 255 octets")
    return bytes(out)


def name_to_text(wire: bytes) -> str:
    """Return the presentation form of an uncompressed wire name, with the final dot."""
    labels = []
    off = 0
    while wire[off]:
        length = wire[off]
        labels.append(wire[off + 1 : off + 1 + length].decode("ascii", "backslashreplace"))
        off += length + 1
    return ".".join(labels) + "."


def ptr_name(address: str) -> bytes:
    """Return the reverse-mapping name of an address (RFC 1035 3.5, RFC 3596 2.5)."""
    return name_from_text(ipaddress.ip_address(address).reverse_pointer)


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RdataError(field, f"must be a string, not {value!r}")
    return value


def _int(value: Any, field: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise RdataError(field, f"must be an integer from 0 to {(1 << bits) - 1}")
    return value


def _character_strings(text: str) -> bytes:
    """TXT RDATA: the text in <character-string>s of at most 255 octets (RFC 1035 3.3.14)."""
    data = text.encode("utf-8")
    if not data:
        return b"\x00"
    return b"".join(bytes([len(chunk)]) + chunk for chunk in _chunks(data, 255))


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def encode_rdata(rtype: str, rdata: Any) -> bytes:
    """Encode the RDATA of a record of ``rtype`` given as in a records file.

    A string for A, AAAA, CNAME, NS, PTR and TXT; an object for MX (``preference``,
    ``exchange``), SRV (``priority``, ``weight``, ``port``, ``target``), SOA (``mname``,
    ``rname``, ``serial``, ``refresh``, ``retry``, ``expire``, ``minimum``) and CAA (``flags``,
    ``tag``, ``value``). Raises :class:`RdataError` naming the field.
    """
    if rtype in ("A", "AAAA"):
        text = _text(rdata, "rdata")
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise RdataError("rdata", f"{text!r} is not an IP address") from None
        if (address.version == 4) != (rtype == "A"):
            raise RdataError("rdata", f"{text!r} is not an IPv{4 if rtype == 'A' else 6} address")
        return address.packed
    if rtype in ("CNAME", "NS", "PTR"):
        return name_from_text(_text(rdata, "rdata"), "rdata")
    if rtype == "TXT":
        if isinstance(rdata, list):
            return b"".join(_character_strings(_text(part, "rdata")) for part in rdata)
        return _character_strings(_text(rdata, "rdata"))
    if not isinstance(rdata, Mapping):
        raise RdataError("rdata", f"must be an object for {rtype}, not {rdata!r}")
    fields = dict(rdata)
    if rtype == "MX":
        preference = _int(fields.get("preference"), "rdata.preference", 16)
        exchange = name_from_text(fields.get("exchange"), "rdata.exchange")  # type: ignore[arg-type]
        return U16.pack(preference) + exchange
    if rtype == "SRV":
        values = [_int(fields.get(k), f"rdata.{k}", 16) for k in ("priority", "weight", "port")]
        target = name_from_text(fields.get("target"), "rdata.target")  # type: ignore[arg-type]
        return struct.pack("!HHH", *values) + target
    if rtype == "SOA":
        mname = name_from_text(fields.get("mname"), "rdata.mname")  # type: ignore[arg-type]
        rname = name_from_text(fields.get("rname"), "rdata.rname")  # type: ignore[arg-type]
        times = [
            _int(fields.get(k), f"rdata.{k}", 32)
            for k in ("serial", "refresh", "retry", "expire", "minimum")
        ]
        return mname + rname + struct.pack("!IIIII", *times)
    if rtype == "CAA":
        flags = _int(fields.get("flags", 0), "rdata.flags", 8)
        tag = _text(fields.get("tag"), "rdata.tag").encode("ascii", "replace")
        if not 1 <= len(tag) <= 15 or not tag.isalnum():
            raise RdataError("rdata.tag", "must be 1 to 15 letters and digits (RFC 8659 4.1)")
        value = _text(fields.get("value"), "rdata.value").encode("utf-8")
        return bytes([flags, len(tag)]) + tag + value
    raise RdataError("type", f"must be one of {', '.join(TYPES)}")


def encode_record(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    """Encode a whole resource record: owner, TYPE, CLASS IN, TTL, RDLENGTH, RDATA."""
    return owner + RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def soa_rdata(mname: bytes, rname: bytes, serial: int, minimum: int) -> bytes:
    """SOA RDATA for a synthesised SOA: refresh 3600, retry 600, expire 86400 (RFC 1912 2.2)."""
    return mname + rname + struct.pack("!IIIII", serial & 0xFFFFFFFF, 3600, 600, 86400, minimum)
