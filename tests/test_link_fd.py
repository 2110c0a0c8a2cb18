"""Tests for the file-descriptor link endpoint, over a SOCK_SEQPACKET socketpair.

A SEQPACKET socket keeps message boundaries, so one read returns one packet and one write sends
one, exactly like a TUN opened with IFF_NO_PI. No network traffic leaves the process.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from netstack.counters import Counters
from netstack.link.fd import FdEndpoint

# Generous upper bound for waiting on events that happen in microseconds; never asserted on.
WAIT = 5.0


def pkt(i: int, size: int = 40) -> bytes:
    return struct.pack("!I", i) + bytes(size - 4)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()


class Collector:
    """A dispatcher that records packets and wakes a waiter once ``want`` have arrived."""

    def __init__(self, want: int, on_packet: Callable[[bytes], None] | None = None) -> None:
        self.want = want
        self.packets: list[bytes] = []
        self.done = asyncio.Event()
        self.on_packet = on_packet

    def deliver_network_packet(self, packet: bytes) -> None:
        self.packets.append(packet)
        if self.on_packet is not None:
            self.on_packet(packet)
        if len(self.packets) >= self.want:
            self.done.set()


def test_sets_fd_non_blocking(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    assert os.get_blocking(ours.fileno())
    ep = FdEndpoint(ours.fileno())
    assert not os.get_blocking(ours.fileno())
    assert ep.fd == ours.fileno()
    assert ep.mtu == 1500


def test_reads_packets_in_batches_and_delivers_in_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    sent = [pkt(i, 20 + i) for i in range(10)]

    async def main() -> Collector:
        ep = FdEndpoint(ours.fileno(), batch=3)
        got = Collector(len(sent))
        ep.attach(got)
        for p in sent:
            peer.send(p)
        await asyncio.wait_for(got.done.wait(), WAIT)
        ep.close()
        return got

    got = asyncio.run(main())
    assert got.packets == sent


def test_receive_counters(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    root = Counters()

    async def main() -> None:
        ep = FdEndpoint(ours.fileno(), counters=root)
        got = Collector(2)
        ep.attach(got)
        peer.send(pkt(1, 50))
        peer.send(pkt(2, 70))
        await asyncio.wait_for(got.done.wait(), WAIT)
        ep.close()

    asyncio.run(main())
    assert root.get("fd.rx_packets") == 2
    assert root.get("fd.rx_bytes") == 120


def test_detach_stops_reading(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair

    async def main() -> tuple[Collector, bytes]:
        loop = asyncio.get_running_loop()
        ep = FdEndpoint(ours.fileno(), loop=loop)
        got = Collector(1, on_packet=lambda _: ep.attach(None))
        ep.attach(got)
        peer.send(pkt(1))
        peer.send(pkt(2))
        await asyncio.wait_for(got.done.wait(), WAIT)
        for _ in range(5):
            await asyncio.sleep(0)  # give a still-registered reader every chance to run
        left = os.read(ours.fileno(), 100)
        ep.close()
        return got, left

    got, left = asyncio.run(main())
    assert got.packets == [pkt(1)]
    assert left == pkt(2)  # still in the socket: nobody read it after the detach


def test_read_error_is_counted_and_reading_continues(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, peer = pair
    real_read = os.read
    failures = [OSError(errno.EIO, "injected")]

    def flaky_read(fd: int, n: int) -> bytes:
        if fd == ours.fileno() and failures:
            raise failures.pop()
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", flaky_read)

    async def main() -> tuple[Collector, FdEndpoint]:
        ep = FdEndpoint(ours.fileno())
        got = Collector(2)
        ep.attach(got)
        peer.send(pkt(1))
        peer.send(pkt(2))
        await asyncio.wait_for(got.done.wait(), WAIT)
        ep.close()
        return got, ep

    got, ep = asyncio.run(main())
    assert got.packets == [pkt(1), pkt(2)]
    assert ep.counters.get("rx_errors") == 1


def test_end_of_file_unregisters_reader(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair

    async def main() -> FdEndpoint:
        ep = FdEndpoint(ours.fileno())
        ep.attach(Collector(1))
        peer.close()
        for _ in range(100):
            if ep.counters.get("rx_eof"):
                break
            await asyncio.sleep(0.001)
        # remove_reader returns False when no reader was registered for the fd.
        removed = asyncio.get_running_loop().remove_reader(ours.fileno())
        assert removed is False
        ep.close()
        return ep

    ep = asyncio.run(main())
    assert ep.counters.get("rx_eof") == 1


def test_write_packets_sends_each_packet(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair

    async def main() -> FdEndpoint:
        ep = FdEndpoint(ours.fileno())
        assert ep.write_packets([pkt(1, 30), pkt(2, 60)]) == 2
        ep.close()
        return ep

    ep = asyncio.run(main())
    assert peer.recv(100) == pkt(1, 30)
    assert peer.recv(100) == pkt(2, 60)
    assert ep.counters.get("tx_packets") == 2
    assert ep.counters.get("tx_bytes") == 90
    assert ep.counters.get("tx_queued") == 0


def test_write_error_drops_only_that_packet(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair

    async def main() -> FdEndpoint:
        ep = FdEndpoint(ours.fileno())
        # Larger than the socket buffer: EMSGSIZE, as a TUN gives EINVAL for a bad packet.
        huge = bytes(4 * 1024 * 1024)
        assert ep.write_packets([pkt(1), huge, pkt(2)]) == 2
        ep.close()
        return ep

    ep = asyncio.run(main())
    assert ep.counters.get("tx_errors") == 1
    assert peer.recv(100) == pkt(1)
    assert peer.recv(100) == pkt(2)


def _fill_until_blocked(ep: FdEndpoint, start: int, limit: int = 100_000) -> int:
    """Write packets one at a time until the endpoint starts queueing; return the next serial."""
    i = start
    while ep.queued == 0 and i < start + limit:
        ep.write_packets([pkt(i, 1000)])
        i += 1
    assert ep.queued > 0, "socket buffer never filled"
    return i


def test_backpressure_queues_then_flushes_in_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    peer.setblocking(False)

    async def main() -> tuple[list[int], FdEndpoint, int]:
        ep = FdEndpoint(ours.fileno(), write_queue=1024)
        n = _fill_until_blocked(ep, 0)
        # Queue a few more behind the blocked one; order must hold.
        assert ep.write_packets([pkt(i, 1000) for i in range(n, n + 5)]) == 5
        total = n + 5
        received: list[int] = []
        for _ in range(10_000):
            try:
                received.append(struct.unpack("!I", peer.recv(2000)[:4])[0])
            except BlockingIOError:
                if len(received) == total:
                    break
                await asyncio.sleep(0.001)  # let the loop run the writer callback
        ep.close()
        return received, ep, total

    received, ep, total = asyncio.run(main())
    assert received == list(range(total))
    assert ep.counters.get("tx_queued") >= 6
    assert ep.counters.get("tx_packets") == total
    assert ep.queued == 0


def test_write_queue_is_bounded(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)

    async def main() -> FdEndpoint:
        ep = FdEndpoint(ours.fileno(), write_queue=4)
        n = _fill_until_blocked(ep, 0)
        accepted = ep.write_packets([pkt(i, 1000) for i in range(n, n + 10)])
        assert accepted == 3  # one was already queued, room for three more
        assert ep.queued == 4
        ep.close()
        assert ep.queued == 0
        return ep

    ep = asyncio.run(main())
    assert ep.counters.get("tx_dropped_full") == 7
    assert ep.counters.get("tx_queued") == 4


def test_close_respects_fd_ownership(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    borrowed = FdEndpoint(ours.fileno())
    borrowed.close()
    os.fstat(ours.fileno())  # still open
    assert borrowed.write_packets([pkt(1)]) == 0
    assert borrowed.counters.get("tx_dropped_closed") == 1

    dup = os.dup(ours.fileno())
    owned = FdEndpoint(dup, owns_fd=True)
    owned.close()
    owned.close()  # closing twice is harmless
    with pytest.raises(OSError):
        os.fstat(dup)


def test_close_unregisters_reader(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair

    async def main() -> bool:
        ep = FdEndpoint(ours.fileno())
        ep.attach(Collector(1))
        ep.close()
        return asyncio.get_running_loop().remove_reader(ours.fileno())

    assert asyncio.run(main()) is False
