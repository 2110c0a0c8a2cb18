"""Tests for the sniffer endpoint: pcap capture and one-line logs of both directions."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from netstack.counters import Counters
from netstack.header.checksum import checksum, transport_checksum
from netstack.header.summary import summarize
from netstack.link.channel import ChannelEndpoint
from netstack.link.pcap import PcapWriter, read_pcap
from netstack.link.sniffer import SnifferEndpoint

SRC = bytes([10, 30, 30, 1])
DST = bytes([10, 30, 30, 30])


def ipv4_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """Build an IPv4/UDP packet with correct checksums (RFC 791, RFC 768)."""
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = transport_checksum(src, dst, 17, udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0x4000, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


class Recorder:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def deliver_network_packet(self, packet: bytes) -> None:
        self.packets.append(packet)


class FakeTime:
    """A time source that ticks by one second on every call."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


QUERY = ipv4_udp(SRC, DST, 40000, 53, b"question")
ANSWER = ipv4_udp(DST, SRC, 53, 40000, b"answer")


def make(
    counters: Counters | None = None,
) -> tuple[SnifferEndpoint, ChannelEndpoint, Recorder, io.BytesIO, list[str]]:
    inner = ChannelEndpoint()
    buf = io.BytesIO()
    lines: list[str] = []
    sniffer = SnifferEndpoint(
        inner,
        pcap=PcapWriter(buf),
        log=lines.append,
        time_source=FakeTime(1000.0),
        counters=counters,
    )
    rec = Recorder()
    sniffer.attach(rec)
    return sniffer, inner, rec, buf, lines


def test_forwards_both_directions_unchanged() -> None:
    sniffer, inner, rec, _, _ = make()
    inner.inject(QUERY)
    assert rec.packets == [QUERY]
    assert sniffer.write_packets([ANSWER, QUERY]) == 2
    assert inner.drain() == [ANSWER, QUERY]
    assert sniffer.mtu == inner.mtu
    assert sniffer.inner is inner


def test_logs_one_line_per_packet_with_direction() -> None:
    sniffer, inner, _, _, lines = make()
    inner.inject(QUERY)
    sniffer.write_packets(iter([ANSWER]))  # any iterable, even a one-shot generator
    assert lines == [f"in  {summarize(QUERY)}", f"out {summarize(ANSWER)}"]
    assert inner.drain() == [ANSWER]


def test_pcap_holds_both_directions_with_timestamps() -> None:
    sniffer, inner, _, buf, _ = make()
    inner.inject(QUERY)
    sniffer.write_packets([ANSWER])
    sniffer.flush()
    buf.seek(0)
    assert list(read_pcap(buf)) == [(1001.0, QUERY), (1002.0, ANSWER)]


def test_counters_and_parent_node() -> None:
    root = Counters()
    sniffer, inner, _, _, _ = make(root)
    inner.inject_many([QUERY, QUERY])
    sniffer.write_packets([ANSWER])
    assert root.get("sniffer.in_packets") == 2
    assert root.get("sniffer.out_packets") == 1
    assert root.get("channel.rx_packets") == 0  # the inner channel keeps its own counters
    assert inner.counters.get("rx_packets") == 2


def test_logs_garbage_without_raising() -> None:
    _, inner, rec, _, lines = make()
    garbage = [b"", b"\x00", b"\x45" + bytes(5), b"\x60" + bytes(3), bytes(range(256))]
    inner.inject_many(garbage)
    assert rec.packets == garbage
    assert len(lines) == len(garbage)
    assert all(line.startswith("in  ") for line in lines)


def test_failing_pcap_is_counted_and_traffic_still_flows() -> None:
    sniffer, inner, rec, buf, _ = make()
    buf.close()  # writes now raise ValueError
    inner.inject(QUERY)
    sniffer.write_packets([ANSWER])
    assert rec.packets == [QUERY]
    assert inner.drain() == [ANSWER]
    assert sniffer.counters.get("pcap_errors") == 2


def test_without_pcap_or_log_it_only_counts() -> None:
    inner = ChannelEndpoint()
    sniffer = SnifferEndpoint(inner)
    rec = Recorder()
    sniffer.attach(rec)
    inner.inject(QUERY)
    sniffer.write_packets([ANSWER])
    assert rec.packets == [QUERY]
    assert inner.drain() == [ANSWER]
    assert sniffer.counters.snapshot() == {"in_packets": 1, "out_packets": 1}


def test_detach_and_close() -> None:
    sniffer, inner, rec, _, _ = make()
    sniffer.attach(None)
    inner.inject(QUERY)
    assert rec.packets == []
    assert inner.counters.get("rx_dropped_detached") == 1
    sniffer.close()
    assert inner.closed


def test_pcap_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "capture.pcap"
    inner = ChannelEndpoint()
    with path.open("wb") as stream:
        sniffer = SnifferEndpoint(inner, pcap=PcapWriter(stream), time_source=lambda: 5.0)
        sniffer.attach(Recorder())
        inner.inject(QUERY)
        sniffer.write_packets([ANSWER])
        sniffer.close()
    with path.open("rb") as stream:
        assert [p for _, p in read_pcap(stream)] == [QUERY, ANSWER]
