"""Tests for the pcap writer and reader (classic libpcap format, LINKTYPE_RAW)."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.errors import ParseError
from netstack.header.checksum import checksum, transport_checksum
from netstack.link.pcap import LINKTYPE_RAW, PCAP_MAGIC, PcapWriter, read_pcap


def ipv4_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """Build an IPv4/UDP packet with correct checksums (RFC 791, RFC 768)."""
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = transport_checksum(src, dst, 17, udp) or 0xFFFF  # RFC 768: 0 is sent as all ones
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    total = 20 + udp_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0x1234, 0x4000, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


SRC = bytes([10, 30, 30, 1])
DST = bytes([10, 30, 30, 30])


def test_file_header_is_classic_pcap_raw_ip() -> None:
    buf = io.BytesIO()
    PcapWriter(buf, snaplen=4096)
    header = buf.getvalue()
    assert len(header) == 24
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack("=IHHiIII", header)
    assert (magic, major, minor, zone, sigfigs) == (PCAP_MAGIC, 2, 4, 0, 0)
    assert snaplen == 4096
    assert linktype == LINKTYPE_RAW == 101


def test_records_round_trip() -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    packets = [ipv4_udp(SRC, DST, 5000 + i, 53, bytes([i]) * i) for i in range(5)]
    for i, p in enumerate(packets):
        writer.write(p, 1_700_000_000.25 + i)
    assert writer.packets == 5
    buf.seek(0)
    got = list(read_pcap(buf))
    assert [p for _, p in got] == packets
    assert [t for t, _ in got] == pytest.approx([1_700_000_000.25 + i for i in range(5)])


def test_record_header_fields_and_microsecond_carry() -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    writer.write(b"\x45" + bytes(19), 10.9999996)  # rounds up into the next second
    seconds, micros, captured, length = struct.unpack_from("=IIII", buf.getvalue(), 24)
    assert (seconds, micros, captured, length) == (11, 0, 20, 20)


def test_snaplen_truncates_but_keeps_original_length() -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf, snaplen=16)
    writer.write(bytes(range(40)), 1.0)
    _, _, captured, length = struct.unpack_from("=IIII", buf.getvalue(), 24)
    assert (captured, length) == (16, 40)
    buf.seek(0)
    assert list(read_pcap(buf)) == [(1.0, bytes(range(16)))]


def test_reads_big_endian_nanosecond_files() -> None:
    data = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 101)
    data += struct.pack(">IIII", 5, 500_000_000, 3, 3) + b"abc"
    assert list(read_pcap(io.BytesIO(data))) == [(5.5, b"abc")]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "pcap_truncated"),
        (b"\xa1\xb2\xc3", "pcap_truncated"),
        (b"\x00" * 24, "pcap_bad_magic"),
    ],
)
def test_bad_file_header_raises_parse_error(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        list(read_pcap(io.BytesIO(data)))
    assert info.value.reason == reason


def test_truncated_record_raises_parse_error() -> None:
    buf = io.BytesIO()
    PcapWriter(buf).write(bytes(30), 1.0)
    whole = buf.getvalue()
    for cut in (len(whole) - 1, 24 + 10):
        with pytest.raises(ParseError) as info:
            list(read_pcap(io.BytesIO(whole[:cut])))
        assert info.value.reason == "pcap_truncated"


def test_captured_longer_than_original_is_rejected() -> None:
    data = struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, 101)
    data += struct.pack("<IIII", 0, 0, 8, 4) + bytes(8)
    with pytest.raises(ParseError) as info:
        list(read_pcap(io.BytesIO(data)))
    assert info.value.reason == "pcap_bad_record"


def test_close_closes_stream_and_refuses_writes() -> None:
    buf = io.BytesIO()
    with PcapWriter(buf) as writer:
        writer.write(bytes(20), 0.0)
    assert buf.closed
    writer.close()  # twice is harmless
    with pytest.raises(ValueError):
        writer.write(bytes(20), 0.0)


@given(
    records=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=2**32 - 1),
            st.integers(min_value=0, max_value=999_999),
            st.binary(max_size=300),
        ),
        max_size=20,
    )
)
def test_round_trip_property(records: list[tuple[int, int, bytes]]) -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    for seconds, micros, packet in records:
        writer.write(packet, seconds + micros / 1e6)
    buf.seek(0)
    got = list(read_pcap(buf))
    assert [p for _, p in got] == [p for _, _, p in records]
    for (ts, _), (seconds, micros, _) in zip(got, records, strict=True):
        # A double holds 2**32 seconds to within a microsecond; allow one unit of rounding.
        assert abs(ts - (seconds + micros / 1e6)) <= 2e-6


@given(data=st.binary(max_size=200))
def test_reader_only_raises_parse_error(data: bytes) -> None:
    try:
        for _ in read_pcap(io.BytesIO(data)):
            pass
    except ParseError:
        pass


def test_tshark_reads_our_file(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tshark is required in CI (apt-get install tshark)")
        pytest.skip("tshark not installed; install it (apt-get install tshark) to run this test")
    packets = [
        ipv4_udp(SRC, DST, 40000, 53, b"hello"),
        ipv4_udp(SRC, DST, 40001, 53, bytes(100)),
        ipv4_udp(DST, SRC, 53, 40000, bytes(512)),
    ]
    # A control: the same packet with one payload bit flipped must show a bad UDP checksum,
    # which proves tshark really verified the sums of the packets above.
    good = ipv4_udp(SRC, DST, 40002, 53, b"control")
    packets.append(good[:-1] + bytes([good[-1] ^ 1]))
    path = tmp_path / "link.pcap"
    with PcapWriter(path.open("wb")) as writer:
        for i, p in enumerate(packets):
            writer.write(p, 1_700_000_000 + i / 10)
    fields = ["frame.len", "ip.src", "udp.dstport", "ip.checksum.status", "udp.checksum.status"]
    cmd = [tshark, "-r", str(path), "-o", "ip.check_checksum:TRUE"]
    cmd += ["-o", "udp.check_checksum:TRUE", "-T", "fields", "-E", "separator=,"]
    for field in fields:
        cmd += ["-e", field]
    env = dict(os.environ, HOME=str(tmp_path))  # keep tshark's profile out of the real home
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stderr
    rows = [line.split(",") for line in result.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [len(p) for p in packets]
    assert [r[1] for r in rows] == ["10.30.30.1", "10.30.30.1", "10.30.30.30", "10.30.30.1"]
    assert [r[2] for r in rows] == ["53", "53", "40000", "53"]
    # Wireshark's checksum status enumeration: 0 is Bad, 1 is Good.
    assert [(r[3], r[4]) for r in rows] == [("1", "1")] * 3 + [("1", "0")], result.stdout
