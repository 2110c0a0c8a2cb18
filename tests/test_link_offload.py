"""Tests for TUN segmentation offload: virtio_net_hdr, GSO coalescing/splitting, and FdEndpoint.

The pure part checks, with Hypothesis, that coalescing a stream of TCP segments and splitting the
result the way the kernel does (tcp_gso_segment) gives back the original segments byte for byte,
and that every checksum is right. The endpoint part runs FdEndpoint(vnet_hdr=True) over a
SOCK_SEQPACKET socketpair standing in for a TUN opened with IFF_VNET_HDR. No network traffic.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import textwrap
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.counters import Counters
from netstack.errors import ParseError
from netstack.header.checksum import ones_sum, pseudo_header_sum, transport_checksum
from netstack.header.ipv4 import IPv4Header
from netstack.header.ipv6 import IPv6Header
from netstack.header.tcp import TCPHeader, TCPOptions, build_tcp, tcp_checksum_ok
from netstack.header.udp import build_udp, udp_checksum_ok
from netstack.link.fd import FdEndpoint
from netstack.link.offload import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    PLAIN_HEADER,
    VNET_HDR_LEN,
    VirtioNetHdr,
    coalesce,
    complete_checksum,
    finish_plain,
    receive_frame,
    segment_gso,
    starts_run,
)

from netns import NetNS

WAIT = 5.0
ACK, PSH, FIN, SYN = 0x10, 0x08, 0x01, 0x02
V4 = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
V6 = (bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02"))
TS = TCPOptions(timestamp=(123456, 654321))


def segment(
    v6: bool,
    seq: int,
    payload: bytes,
    *,
    flags: int = ACK,
    ident: int = 0,
    ack: int = 1000,
    window: int = 512,
    options: TCPOptions = TS,
    src_port: int = 40000,
) -> bytes:
    """One IPv4 or IPv6 TCP segment with correct checksums, DF set on IPv4 as the stack does."""
    src, dst = V6 if v6 else V4
    tcp = build_tcp(src, dst, TCPHeader(src_port, 80, seq, ack, flags, window, 0, options), payload)
    if v6:
        return IPv6Header(src=src, dst=dst, next_header=6).pack(tcp)
    return IPv4Header(src=src, dst=dst, protocol=6, ident=ident, dont_fragment=True).pack(tcp)


def stream(v6: bool, seq: int, ident: int, sizes: list[int], push_last: bool) -> list[bytes]:
    """Consecutive segments of one flow, as a sender emits them."""
    out = []
    for i, size in enumerate(sizes):
        flags = ACK | PSH if push_last and i == len(sizes) - 1 else ACK
        payload = bytes((seq + i + k) & 0xFF for k in range(size))
        out.append(segment(v6, seq, payload, flags=flags, ident=(ident + i) & 0xFFFF))
        seq = (seq + size) & 0xFFFFFFFF
    return out


def split_all(frames: list[bytes]) -> list[bytes]:
    """What the kernel makes of written frames: GSO packets segmented, others unchanged."""
    out: list[bytes] = []
    for frame in frames:
        hdr = VirtioNetHdr.parse(frame)
        if hdr.gso_type == GSO_NONE:
            assert hdr == VirtioNetHdr()
            out.append(frame[VNET_HDR_LEN:])
        else:
            out.extend(segment_gso(hdr, frame[VNET_HDR_LEN:]))
    return out


def tcp_part(packet: bytes) -> tuple[bytes, bytes, bytes]:
    if packet[0] >> 4 == 4:
        return packet[12:16], packet[16:20], packet[20:]
    return packet[8:24], packet[24:40], packet[40:]


# -- virtio_net_hdr ----------------------------------------------------------------------------


@given(
    st.integers(0, 255),
    st.integers(0, 255),
    *(st.integers(0, 0xFFFF) for _ in range(4)),
)
def test_header_round_trip(flags: int, gso: int, a: int, b: int, c: int, d: int) -> None:
    hdr = VirtioNetHdr(flags, gso, a, b, c, d)
    data = hdr.build()
    assert len(data) == VNET_HDR_LEN
    assert VirtioNetHdr.parse(data + b"tail") == hdr


def test_header_layout_is_native_order() -> None:
    # struct virtio_net_hdr: u8 flags, u8 gso_type, then four 16-bit fields in host order.
    data = VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16).build()
    assert data == struct.pack("=BBHHHH", 1, 1, 52, 1448, 20, 16)


def test_short_header_is_a_parse_error() -> None:
    with pytest.raises(ParseError) as err:
        VirtioNetHdr.parse(b"\x00" * 9)
    assert err.value.reason == "vnet_short"


# -- coalescing --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    v6=st.booleans(),
    seq=st.integers(0, 0xFFFFFFFF),
    ident=st.integers(0, 0xFFFF),
    mss=st.integers(1, 1460),
    count=st.integers(1, 50),
    short_tail=st.integers(0, 1459),
    push_last=st.booleans(),
)
def test_coalesce_then_kernel_split_gives_back_the_segments(
    v6: bool, seq: int, ident: int, mss: int, count: int, short_tail: int, push_last: bool
) -> None:
    sizes = [mss] * count
    if short_tail % mss:
        sizes.append(short_tail % mss)
    packets = stream(v6, seq, ident, sizes, push_last)
    made = coalesce(packets)
    assert split_all(made.frames) == packets
    # Everything that could merge did: every frame but the last is as large as allowed.
    assert len(made.frames) == len(packets) - made.segments_merged + made.gso_packets
    if len(packets) > 1 and len(packets) * (mss + 72) < 60000:
        assert len(made.frames) == 1


@settings(max_examples=60, deadline=None)
@given(v6=st.booleans(), seq=st.integers(0, 0xFFFFFFFF), count=st.integers(2, 30))
def test_gso_packet_has_partial_checksum_and_header(v6: bool, seq: int, count: int) -> None:
    packets = stream(v6, seq, 7, [1000] * count, push_last=True)
    made = coalesce(packets)
    assert made.gso_packets == 1 and made.segments_merged == count
    (frame,) = made.frames
    hdr = VirtioNetHdr.parse(frame)
    t = 40 if v6 else 20
    thl = len(packets[0]) - t - 1000
    assert hdr == VirtioNetHdr(NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, t + thl, 1000, t, 16)
    packet = frame[VNET_HDR_LEN:]
    assert len(packet) == t + thl + 1000 * count
    src, dst, tcp = tcp_part(packet)
    # The field holds the folded pseudo-header sum over the whole TCP length (CHECKSUM_PARTIAL).
    partial = ones_sum(b"", pseudo_header_sum(src, dst, 6, len(tcp)))
    assert struct.unpack_from("!H", tcp, 16)[0] == partial
    # Completing it as a device would gives a correct checksum over the super-packet.
    done = bytearray(packet)
    complete_checksum(done, t, 16)
    assert tcp_checksum_ok(src, dst, bytes(done[t:]))
    if not v6:
        IPv4Header.parse(packet)  # verifies the rebuilt header checksum
    # PSH of the last segment is on the GSO packet's header, and nothing else changed.
    assert packet[t + 13] == ACK | PSH


def test_runs_break_where_segmentation_could_not_rebuild_them() -> None:
    base = stream(False, 1, 1, [100, 100], push_last=False)
    other_flow = segment(False, 201, bytes(100), ident=3, src_port=40001)
    gap = segment(False, 301, bytes(100), ident=3)  # sequence hole
    id_jump = segment(False, 201, bytes(100), ident=9)  # IPv4 ID not consecutive
    bigger = segment(False, 201, bytes(101), ident=3)  # larger than gso_size
    other_ack = segment(False, 201, bytes(100), ident=3, ack=2000)
    other_window = segment(False, 201, bytes(100), ident=3, window=1)
    other_options = segment(False, 201, bytes(100), ident=3, options=TCPOptions(timestamp=(1, 2)))
    fin = segment(False, 201, bytes(100), ident=3, flags=ACK | FIN)
    for follower in (other_flow, gap, id_jump, bigger, other_ack, other_window, other_options, fin):
        made = coalesce([*base, follower])
        assert made.segments_merged == 2, follower
        assert split_all(made.frames) == [*base, follower]
        assert VirtioNetHdr.parse(made.frames[-1]) == VirtioNetHdr()


def test_psh_and_short_segments_end_a_run() -> None:
    packets = stream(True, 5, 0, [100, 100, 40], push_last=False)
    packets += stream(True, 245, 0, [100, 100], push_last=True)
    made = coalesce(packets)
    assert made.gso_packets == 2
    assert split_all(made.frames) == packets


def test_non_tcp_and_control_segments_pass_plain() -> None:
    src, dst = V4
    udp = IPv4Header(src=src, dst=dst, protocol=17).pack(build_udp(src, dst, 1, 2, b"x" * 30))
    syn = segment(False, 0, b"", flags=SYN)
    pure_ack = segment(False, 0, b"")
    made = coalesce([udp, syn, pure_ack, udp])
    assert made.gso_packets == 0
    assert made.frames == [PLAIN_HEADER + p for p in (udp, syn, pure_ack, udp)]
    assert not starts_run(udp) and not starts_run(syn) and not starts_run(pure_ack)
    assert starts_run(segment(False, 0, b"data"))
    assert not starts_run(segment(False, 0, b"data", flags=ACK | PSH))


def test_coalesce_respects_max_size() -> None:
    packets = stream(False, 0, 0, [1448] * 100, push_last=False)
    made = coalesce(packets)
    assert all(len(f) - VNET_HDR_LEN <= 65535 for f in made.frames)
    assert made.gso_packets == len(made.frames) == 3  # 45 + 45 + 10 segments
    assert split_all(made.frames) == packets


# -- receiving ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(v6=st.booleans(), seq=st.integers(0, 0xFFFFFFFF), count=st.integers(2, 40))
def test_receive_gso_as_one_large_segment(v6: bool, seq: int, count: int) -> None:
    packets = stream(v6, seq, 0, [1200] * count, push_last=True)
    (frame,) = coalesce(packets).frames
    got = receive_frame(frame)
    assert got.gso and got.checksum_filled and not got.split
    (big,) = got.packets
    src, dst, tcp = tcp_part(big)
    assert tcp_checksum_ok(src, dst, tcp)
    t = 40 if v6 else 20
    thl = len(packets[0]) - t - 1200
    assert tcp[thl:] == b"".join(p[t + thl :] for p in packets)
    split = receive_frame(frame, gro=False)
    assert split.split and split.packets == packets


def test_kernel_partial_checksum_is_completed_for_udp_and_tcp() -> None:
    src, dst = V4
    datagram = bytearray(build_udp(src, dst, 5353, 53, b"query"))
    datagram[6:8] = struct.pack("!H", ones_sum(b"", pseudo_header_sum(src, dst, 17, 13)))
    packet = IPv4Header(src=src, dst=dst, protocol=17).pack(bytes(datagram))
    frame = VirtioNetHdr(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6).build() + packet
    got = receive_frame(frame)
    assert got.checksum_filled and not got.gso
    assert udp_checksum_ok(src, dst, got.packets[0][20:])
    assert finish_plain(frame) == got.packets[0]
    # A frame with nothing offloaded is the packet itself.
    assert receive_frame(PLAIN_HEADER + packet).packets == [packet]


@pytest.mark.parametrize(
    ("hdr", "reason"),
    [
        (VirtioNetHdr(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 9999), "vnet_bad_csum_offset"),
        (VirtioNetHdr(NEEDS_CSUM, 3, 52, 100, 20, 16), "gso_bad_type"),
        (VirtioNetHdr(NEEDS_CSUM, GSO_TCPV6, 52, 100, 20, 16), "gso_bad_packet"),
        (VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 52, 0, 20, 16), "gso_bad_size"),
        (VirtioNetHdr(0, GSO_TCPV4, 52, 100, 20, 16), "gso_bad_packet"),
        (VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 52, 100, 24, 16), "gso_bad_packet"),
    ],
)
def test_bad_frames_raise_parse_error(hdr: VirtioNetHdr, reason: str) -> None:
    packet = segment(False, 0, bytes(300))
    with pytest.raises(ParseError) as err:
        receive_frame(hdr.build() + packet)
    assert err.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_frames_only_raise_parse_error(data: bytes, gro: bool) -> None:
    try:
        got = receive_frame(data, gro=gro)
    except ParseError:
        return
    assert all(isinstance(p, bytes) for p in got.packets)


@given(st.binary(min_size=11, max_size=120), st.sampled_from([GSO_TCPV4, GSO_TCPV6]))
def test_arbitrary_gso_headers_on_real_packets_only_raise_parse_error(
    tail: bytes, gso: int
) -> None:
    frame = VirtioNetHdr(NEEDS_CSUM, gso | GSO_ECN, 0, 7, 20, 16).build() + tail
    try:
        receive_frame(frame, gro=False)
    except ParseError as exc:
        assert exc.reason.startswith(("gso_", "vnet_"))


# -- FdEndpoint over a socketpair ---------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()


class Collector:
    def __init__(self, want: int) -> None:
        self.want = want
        self.packets: list[bytes] = []
        self.done = asyncio.Event()

    def deliver_network_packet(self, packet: bytes) -> None:
        self.packets.append(packet)
        if len(self.packets) >= self.want:
            self.done.set()


def drain(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    out = []
    for _ in range(10_000):
        try:
            out.append(sock.recv(1 << 17))
        except BlockingIOError:
            break
    return out


def test_endpoint_coalesces_writes_of_one_iteration(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    root = Counters()
    data = stream(False, 100, 0, [1000] * 20, push_last=True)
    pure_ack = segment(True, 7, b"")

    async def main() -> tuple[int, int]:
        ep = FdEndpoint(ours.fileno(), counters=root, vnet_hdr=True)
        # A lone packet that cannot start a run goes out at once ...
        ep.write_packets([pure_ack])
        immediately = len(drain(peer))
        # ... data segments wait for the end of the iteration, across several calls.
        for i in range(0, 20, 5):
            assert ep.write_packets(data[i : i + 5]) == 5
        waiting = ep.pending
        await asyncio.sleep(0)
        ep.close()
        return immediately, waiting

    immediately, waiting = asyncio.run(main())
    assert immediately == 1 and waiting == 20
    frames = drain(peer)
    assert len(frames) == 1
    assert split_all(frames) == data
    assert root.get("fd.tx_gso_packets") == 1
    assert root.get("fd.tx_segments_coalesced") == 20
    assert root.get("fd.tx_packets") == 2


def test_endpoint_keeps_order_behind_waiting_segments(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    data = stream(False, 100, 0, [500] * 3, push_last=False)
    src, dst = V4
    udp = IPv4Header(src=src, dst=dst, protocol=17).pack(build_udp(src, dst, 1, 2, b"late"))

    async def main() -> None:
        ep = FdEndpoint(ours.fileno(), vnet_hdr=True)
        ep.write_packets([data[0], udp, data[1], data[2]])
        assert drain(peer) == []  # the datagram waits behind the first segment
        await asyncio.sleep(0)
        ep.close()

    asyncio.run(main())
    assert split_all(drain(peer)) == [data[0], udp, data[1], data[2]]


def test_endpoint_close_drops_pending_and_counts(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    root = Counters()

    async def main() -> None:
        ep = FdEndpoint(ours.fileno(), counters=root, vnet_hdr=True)
        ep.write_packets(stream(False, 0, 0, [100] * 4, push_last=False))
        ep.close()
        await asyncio.sleep(0)

    asyncio.run(main())
    assert drain(peer) == []
    assert root.get("fd.tx_dropped_closed") == 4


def test_endpoint_reads_gso_and_partial_checksums_and_drops_bad_frames(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    root = Counters()
    data = stream(True, 9, 0, [1400] * 30, push_last=True)  # 42 KB: one GSO packet
    (gso_frame,) = coalesce(data).frames
    src, dst = V4
    plain = IPv4Header(src=src, dst=dst, protocol=17).pack(build_udp(src, dst, 1, 2, b"ok"))
    bad = VirtioNetHdr(NEEDS_CSUM, 77, 0, 1, 20, 16).build() + plain

    async def main() -> Collector:
        ep = FdEndpoint(ours.fileno(), counters=root, vnet_hdr=True)
        got = Collector(2)
        ep.attach(got)
        peer.send(bad)
        peer.send(b"\x00" * 5)
        peer.send(gso_frame)
        peer.send(PLAIN_HEADER + plain)
        await asyncio.wait_for(got.done.wait(), WAIT)
        ep.close()
        return got

    got = asyncio.run(main())
    big, udp = got.packets
    assert udp == plain
    s6, d6, tcp = tcp_part(big)
    assert tcp_checksum_ok(s6, d6, tcp) and len(big) == 40 + 32 + 1400 * 30
    assert transport_checksum(s6, d6, 6, tcp) == 0
    assert root.get("fd.rx_gso_packets") == 1
    assert root.get("fd.rx_csum_filled") == 1
    assert root.get("fd.malformed.gso_bad_type") == 1
    assert root.get("fd.malformed.vnet_short") == 1
    assert root.get("fd.rx_packets") == 4


def test_endpoint_splits_when_gro_is_off(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    root = Counters()
    data = stream(False, 9, 40, [1000] * 10, push_last=False)
    (gso_frame,) = coalesce(data).frames

    async def main() -> Collector:
        ep = FdEndpoint(ours.fileno(), counters=root, vnet_hdr=True, gro=False)
        got = Collector(10)
        ep.attach(got)
        peer.send(gso_frame)
        await asyncio.wait_for(got.done.wait(), WAIT)
        ep.close()
        return got

    assert asyncio.run(main()).packets == data
    assert root.get("fd.rx_gso_split") == 10


# -- open_tun(offload=True) against the real kernel, inside a namespace --------------------------


def test_open_tun_offload_and_clean_fallback(netns: NetNS) -> None:
    script = textwrap.dedent(
        """
        import fcntl, json, logging
        import olm.device.tun as tun_mod
        from olm.device.tun import open_tun

        on = open_tun("olmoff0", mtu=1500, offload=True)
        first = {"offload": on.offload, "error": on.offload_error}
        on.close()
        real = fcntl.ioctl
        def refuse(fd, request, arg=0):
            if request == tun_mod._TUNSETOFFLOAD:
                raise OSError(22, "Invalid argument")
            return real(fd, request, arg)
        tun_mod.fcntl.ioctl = refuse
        logging.disable(logging.WARNING)
        off = open_tun("olmoff0", mtu=1400, offload=True)
        second = {"offload": off.offload, "error": off.offload_error, "mtu": off.mtu}
        off.close()
        print(json.dumps({"first": first, "second": second}))
        """
    )
    out = json.loads(netns.python(script).stdout)
    assert out["first"] == {"offload": True, "error": None}
    assert out["second"]["offload"] is False
    assert out["second"]["error"] == "TUNSETOFFLOAD refused: Invalid argument"
    assert out["second"]["mtu"] == 1400
