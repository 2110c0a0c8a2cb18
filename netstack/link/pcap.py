"""Classic libpcap capture files of raw IP packets, written and read back.

The format is the one tcpdump, Wireshark and tshark read everywhere (draft-ietf-opsawg-pcap,
"PCAP Capture File Format"): a 24-byte file header, then per packet a 16-byte record header and
the captured bytes. The link type is LINKTYPE_RAW (101): each record is a bare IPv4 or IPv6
packet, told apart by its version nibble -- exactly what crosses a TUN link.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO, Final

from netstack.errors import ParseError

__all__ = [
    "LINKTYPE_RAW",
    "PCAP_MAGIC",
    "PCAP_MAGIC_NANO",
    "PcapWriter",
    "read_pcap",
]

PCAP_MAGIC: Final = 0xA1B2C3D4
"""Magic number of a pcap file with microsecond timestamps."""
PCAP_MAGIC_NANO: Final = 0xA1B23C4D
"""Magic number of a pcap file with nanosecond timestamps."""
LINKTYPE_RAW: Final = 101
"""Link type of records that are raw IP packets with no link-layer header."""

_VERSION_MAJOR: Final = 2
_VERSION_MINOR: Final = 4
_DEFAULT_SNAPLEN: Final = 65535

# File header (section 4): magic, major, minor, reserved1 (thiszone), reserved2 (sigfigs),
# snaplen, link type. Written in native order, as libpcap does; readers detect it by the magic.
_FILE_HEADER: Final = struct.Struct("=IHHiIII")
# Packet record header (section 5): seconds, sub-second part, captured length, original length.
_RECORD_HEADER: Final = struct.Struct("=IIII")
_RECORD_HEADER_BE: Final = struct.Struct(">IIII")
_RECORD_HEADER_LE: Final = struct.Struct("<IIII")
_FILE_HEADER_BE: Final = struct.Struct(">IHHiIII")
_FILE_HEADER_LE: Final = struct.Struct("<IHHiIII")


class PcapWriter:
    """Writes packets to a binary stream as a pcap file with link type LINKTYPE_RAW.

    The file header goes out at construction. Packets longer than ``snaplen`` are cut to
    ``snaplen`` bytes, with their original length kept in the record.
    """

    __slots__ = ("_closed", "_snaplen", "_stream", "packets")

    def __init__(self, stream: BinaryIO, *, snaplen: int = _DEFAULT_SNAPLEN) -> None:
        if snaplen <= 0:
            raise ValueError(f"snaplen must be positive, not {snaplen}")
        self._stream = stream
        self._snaplen = snaplen
        self._closed = False
        self.packets = 0  # packet records written so far
        header = (PCAP_MAGIC, _VERSION_MAJOR, _VERSION_MINOR, 0, 0, snaplen, LINKTYPE_RAW)
        stream.write(_FILE_HEADER.pack(*header))

    @property
    def snaplen(self) -> int:
        """Longest part of a packet the file keeps."""
        return self._snaplen

    def write(self, packet: bytes | bytearray | memoryview, timestamp: float) -> None:
        """Append one packet captured at ``timestamp`` (seconds since the Unix epoch)."""
        if self._closed:
            raise ValueError("write to a closed PcapWriter")
        seconds = int(timestamp)
        micros = round((timestamp - seconds) * 1_000_000)
        if micros >= 1_000_000:  # rounding carried into the next second
            seconds += 1
            micros -= 1_000_000
        length = len(packet)
        captured = length if length <= self._snaplen else self._snaplen
        stream = self._stream
        stream.write(_RECORD_HEADER.pack(seconds & 0xFFFFFFFF, micros, captured, length))
        stream.write(packet if captured == length else packet[:captured])
        self.packets += 1

    def flush(self) -> None:
        """Push buffered records to the underlying stream."""
        if not self._closed:
            self._stream.flush()

    def close(self) -> None:
        """Flush and close the underlying stream; closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._stream.flush()
            self._stream.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_pcap(stream: BinaryIO) -> Iterator[tuple[float, bytes]]:
    """Yield ``(timestamp, packet)`` for each record of a classic pcap file.

    Accepts either byte order and microsecond or nanosecond timestamps. Raises
    :class:`~netstack.errors.ParseError` (reasons ``pcap_truncated``, ``pcap_bad_magic``,
    ``pcap_bad_record``) on a file that is not a well-formed pcap.
    """
    header = stream.read(_FILE_HEADER.size)
    if len(header) < _FILE_HEADER.size:
        raise ParseError("pcap_truncated", f"file header has {len(header)} of 24 bytes")
    (magic,) = struct.unpack_from("<I", header)
    if magic in (PCAP_MAGIC, PCAP_MAGIC_NANO):
        file_header, record_header = _FILE_HEADER_LE, _RECORD_HEADER_LE
    else:
        (magic,) = struct.unpack_from(">I", header)
        if magic not in (PCAP_MAGIC, PCAP_MAGIC_NANO):
            raise ParseError("pcap_bad_magic", f"magic {header[:4].hex()}")
        file_header, record_header = _FILE_HEADER_BE, _RECORD_HEADER_BE
    _, _, _, _, _, snaplen, _ = file_header.unpack(header)
    scale = 1e-9 if magic == PCAP_MAGIC_NANO else 1e-6
    limit = max(snaplen, _DEFAULT_SNAPLEN)
    size = record_header.size
    while True:
        record = stream.read(size)
        if not record:
            return
        if len(record) < size:
            raise ParseError("pcap_truncated", f"record header has {len(record)} of {size} bytes")
        seconds, fraction, captured, length = record_header.unpack(record)
        if captured > limit or captured > length:
            raise ParseError("pcap_bad_record", f"captured {captured} of {length} bytes")
        data = stream.read(captured)
        if len(data) < captured:
            raise ParseError("pcap_truncated", f"record data has {len(data)} of {captured} bytes")
        yield (seconds + fraction * scale, data)
