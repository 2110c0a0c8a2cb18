"""A link endpoint over a packet file descriptor (a TUN opened with IFF_TUN | IFF_NO_PI).

Each ``read()`` on the descriptor returns one whole raw IP packet and each ``write()`` sends one,
so the endpoint needs no framing. It runs on an asyncio event loop: ``loop.add_reader`` wakes it
when packets arrive, and it reads a bounded batch of them per wake-up; writes go straight to the
descriptor and fall back to a bounded queue flushed by ``loop.add_writer`` only when the kernel
pushes back (EAGAIN). This is the one endpoint that does I/O; the stack behind it does none.

With ``vnet_hdr=True`` the descriptor is a TUN opened with IFF_VNET_HDR (and, ideally, offloads
enabled with TUNSETOFFLOAD): every read and write carries a 10-byte virtio_net_hdr
(:mod:`netstack.link.offload`). Outbound packets written during one event-loop iteration are
then collected and flushed once, from ``loop.call_soon``, with consecutive TCP segments of one
flow coalesced into GSO packets, so one system call carries up to 64 KiB of TCP. Inbound GSO
packets are delivered as one large TCP segment (or split, with ``gro=False``) after their
checksum is completed; a malformed header or GSO packet is counted and dropped.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Iterable

from netstack.counters import Counters
from netstack.errors import ParseError
from netstack.link import NetworkDispatcher
from netstack.link.offload import (
    GSO_NONE,
    NEEDS_CSUM,
    PLAIN_HEADER,
    VNET_FLAGS_AT,
    VNET_GSO_TYPE_AT,
    VNET_HDR_LEN,
    coalesce,
    finish_plain,
    receive_frame,
    starts_run,
)

__all__ = ["FdEndpoint"]

# Read buffer size: the largest IPv4 packet (RFC 791 section 3.1, 16-bit Total Length) and the
# largest IPv6 packet without a jumbogram. A TUN read with a smaller buffer silently truncates the
# packet; a large buffer costs nothing measurable (os.read shrinks the result to what was read).
_MAX_PACKET = 65535


class FdEndpoint:
    """A link that reads and writes one raw IP packet per system call on a non-blocking fd.

    The descriptor is switched to non-blocking mode. It is closed by :meth:`close` only when
    ``owns_fd`` is true. I/O errors are counted, never raised into the event loop.

    Counters (under the ``fd`` node): ``rx_packets``, ``rx_bytes``, ``rx_errors``, ``rx_eof``,
    ``tx_packets``, ``tx_bytes``, ``tx_errors``, ``tx_dropped_full``, ``tx_dropped_closed``,
    ``tx_queued``; with ``vnet_hdr`` also ``rx_gso_packets``, ``rx_csum_filled``,
    ``rx_gso_split`` (segments made by splitting), ``malformed.<reason>``, ``tx_gso_packets``
    and ``tx_segments_coalesced`` (segments carried inside GSO packets). ``rx_packets`` and
    ``tx_packets`` count system calls (frames), ``rx_bytes``/``tx_bytes`` their bytes.

    With ``vnet_hdr``, :meth:`write_packets` defers: it returns how many packets it took, and
    a later drop (queue full, device error) is only counted.
    """

    __slots__ = (
        "_batch",
        "_closed",
        "_dispatcher",
        "_fd",
        "_flush_handle",
        "_gro",
        "_loop",
        "_mtu",
        "_owns_fd",
        "_pending",
        "_queue",
        "_read_size",
        "_reading",
        "_vnet",
        "_write_queue_limit",
        "_writing",
        "counters",
    )

    def __init__(
        self,
        fd: int,
        mtu: int = 1500,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        batch: int = 64,
        write_queue: int = 1024,
        owns_fd: bool = False,
        counters: Counters | None = None,
        vnet_hdr: bool = False,
        gro: bool = True,
    ) -> None:
        if mtu <= 0:
            raise ValueError(f"mtu must be positive, not {mtu}")
        if batch <= 0:
            raise ValueError(f"batch must be positive, not {batch}")
        if write_queue < 0:
            raise ValueError(f"write_queue must not be negative, not {write_queue}")
        os.set_blocking(fd, False)
        self.counters: Counters = counters.child("fd") if counters is not None else Counters("fd")
        self._fd = fd
        self._mtu = mtu
        self._loop = loop
        self._batch = batch
        self._write_queue_limit = write_queue
        self._owns_fd = owns_fd
        self._dispatcher: NetworkDispatcher | None = None
        self._queue: deque[bytes] = deque()
        self._reading = False
        self._writing = False
        self._closed = False
        self._vnet = vnet_hdr
        self._gro = gro
        self._read_size = _MAX_PACKET + VNET_HDR_LEN if vnet_hdr else _MAX_PACKET
        self._pending: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None

    @property
    def mtu(self) -> int:
        """Largest IP packet, in bytes, the link carries (the TUN device's MTU)."""
        return self._mtu

    @property
    def fd(self) -> int:
        """The file descriptor this endpoint reads and writes."""
        return self._fd

    @property
    def queued(self) -> int:
        """Number of outbound packets waiting for the descriptor to become writable."""
        return len(self._queue)

    @property
    def vnet_hdr(self) -> bool:
        """Whether every read and write carries a virtio_net_hdr (offload mode)."""
        return self._vnet

    @property
    def pending(self) -> int:
        """Outbound packets taken in this loop iteration and not yet coalesced and written."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def attach(self, dispatcher: NetworkDispatcher | None) -> None:
        """Deliver packets read from the fd to ``dispatcher`` (None stops reading).

        Without an explicit ``loop``, this must be called from a running event loop.
        """
        if self._closed:
            raise RuntimeError("endpoint is closed")
        self._dispatcher = dispatcher
        if dispatcher is not None and not self._reading:
            self._get_loop().add_reader(self._fd, self._on_readable)
            self._reading = True
        elif dispatcher is None and self._reading:
            self._get_loop().remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        """Read and deliver up to ``batch`` packets; called by the loop when the fd is readable."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        fd = self._fd
        counters = self.counters
        read = os.read
        size = self._read_size
        vnet = self._vnet
        packets = 0
        nbytes = 0
        filled = 0
        try:
            for _ in range(self._batch):
                try:
                    packet = read(fd, size)
                except BlockingIOError:
                    break
                except OSError:
                    # A transient device error (or the device going away) must not take the
                    # event loop down; count it and try again on the next readiness event.
                    counters.inc("rx_errors")
                    break
                if not packet:
                    # End of file: the peer is gone and the fd would stay readable forever.
                    counters.inc("rx_eof")
                    if self._reading:
                        self._get_loop().remove_reader(fd)
                        self._reading = False
                    break
                packets += 1
                nbytes += len(packet)
                if not vnet:
                    dispatcher.deliver_network_packet(packet)
                elif packet[VNET_GSO_TYPE_AT] == GSO_NONE and len(packet) > VNET_HDR_LEN:
                    # No GSO: strip the header, completing a partial checksum (TUN_F_CSUM lets
                    # the kernel leave one on any packet, UDP included).
                    if packet[VNET_FLAGS_AT] & NEEDS_CSUM:
                        try:
                            packet = finish_plain(packet)
                        except ParseError as exc:
                            counters.inc(f"malformed.{exc.reason}")
                            continue
                        filled += 1
                    else:
                        packet = packet[VNET_HDR_LEN:]
                    dispatcher.deliver_network_packet(packet)
                else:
                    self._deliver_offloaded(dispatcher, packet)
                if self._dispatcher is not dispatcher:
                    # The delivery detached or closed us; stop reading on behalf of a stale owner.
                    break
        finally:
            if packets:
                counters.inc("rx_packets", packets)
                counters.inc("rx_bytes", nbytes)
            if filled:
                counters.inc("rx_csum_filled", filled)

    def _deliver_offloaded(self, dispatcher: NetworkDispatcher, frame: bytes) -> None:
        """Finish one frame the kernel left work on (GSO, partial checksum) and deliver it."""
        counters = self.counters
        try:
            received = receive_frame(frame, gro=self._gro)
        except ParseError as exc:
            counters.inc(f"malformed.{exc.reason}")
            return
        if received.gso:
            counters.inc("rx_gso_packets")
        if received.checksum_filled:
            counters.inc("rx_csum_filled")
        if received.split:
            counters.inc("rx_gso_split", len(received.packets))
        for packet in received.packets:
            dispatcher.deliver_network_packet(packet)
            if self._dispatcher is not dispatcher:
                return

    def write_packets(self, packets: Iterable[bytes]) -> int:
        """Write outbound packets, queueing them while the fd would block.

        Return how many were written or queued; the rest were dropped and counted. In
        ``vnet_hdr`` mode the packets are taken now and written, coalesced, once the current
        event-loop iteration ends.
        """
        counters = self.counters
        if self._closed:
            counters.inc("tx_dropped_closed", sum(1 for _ in packets))
            return 0
        if self._vnet:
            return self._defer(packets)
        return self._write_now(packets)

    def _defer(self, packets: Iterable[bytes]) -> int:
        """Collect packets for :meth:`_flush`, scheduled once per loop iteration."""
        pending = self._pending
        accepted = 0
        for packet in packets:
            if not pending and not starts_run(packet):
                # Nothing waits before it and nothing can join it: send it now, so a lone
                # datagram or ACK never waits for the end of the loop iteration.
                accepted += self._write_now((PLAIN_HEADER + packet,))
                continue
            # Copy what is not bytes: the caller may reuse its buffer before we flush.
            pending.append(packet if type(packet) is bytes else bytes(packet))
            accepted += 1
        if len(pending) >= max(self._write_queue_limit, 64):
            self._flush()  # bounded: never hold more than a write queue's worth
        elif pending and self._flush_handle is None:
            self._flush_handle = self._get_loop().call_soon(self._flush)
        return accepted

    def _flush(self) -> None:
        """Coalesce the collected packets into frames and write them (vnet_hdr mode)."""
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        packets = self._pending
        if not packets or self._closed:
            return
        self._pending = []
        made = coalesce(packets)
        if made.gso_packets:
            counters = self.counters
            counters.inc("tx_gso_packets", made.gso_packets)
            counters.inc("tx_segments_coalesced", made.segments_merged)
        self._write_now(made.frames)

    def _write_now(self, packets: Iterable[bytes]) -> int:
        """Write packets (frames, in vnet_hdr mode) to the fd, queueing on EAGAIN."""
        counters = self.counters
        fd = self._fd
        queue = self._queue
        write = os.write
        accepted = 0
        sent = 0
        nbytes = 0
        for packet in packets:
            if queue:
                # Keep order: once anything waits, everything after it waits too.
                accepted += self._enqueue(packet)
                continue
            try:
                n = write(fd, packet)
            except BlockingIOError:
                accepted += self._enqueue(packet)
                continue
            except OSError:
                # EINVAL/EMSGSIZE for a bad packet, EIO for a device going down: drop this one.
                counters.inc("tx_errors")
                continue
            if n != len(packet):
                # A packet fd writes whole packets or nothing; a short write is a lost packet.
                counters.inc("tx_errors")
                continue
            accepted += 1
            sent += 1
            nbytes += n
        if sent:
            counters.inc("tx_packets", sent)
            counters.inc("tx_bytes", nbytes)
        return accepted

    def _enqueue(self, packet: bytes) -> int:
        """Queue one packet for the writer callback; return 1 if queued, 0 if dropped."""
        if len(self._queue) >= self._write_queue_limit:
            self.counters.inc("tx_dropped_full")
            return 0
        if type(packet) is not bytes:
            packet = bytes(packet)  # the caller may reuse its buffer before we flush
        self._queue.append(packet)
        self.counters.inc("tx_queued")
        if not self._writing:
            self._get_loop().add_writer(self._fd, self._on_writable)
            self._writing = True
        return 1

    def _on_writable(self) -> None:
        """Flush queued packets until the fd would block again; called by the loop."""
        fd = self._fd
        queue = self._queue
        counters = self.counters
        write = os.write
        sent = 0
        nbytes = 0
        while queue:
            packet = queue[0]
            try:
                n = write(fd, packet)
            except BlockingIOError:
                break
            except OSError:
                queue.popleft()
                counters.inc("tx_errors")
                continue
            queue.popleft()
            if n != len(packet):
                counters.inc("tx_errors")
                continue
            sent += 1
            nbytes += n
        if sent:
            counters.inc("tx_packets", sent)
            counters.inc("tx_bytes", nbytes)
        if not queue and self._writing:
            self._get_loop().remove_writer(fd)
            self._writing = False

    def close(self) -> None:
        """Stop reading and writing, discard queued packets, and close the fd if owned."""
        if self._closed:
            return
        self._closed = True
        self._dispatcher = None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            if self._reading:
                loop.remove_reader(self._fd)
            if self._writing:
                loop.remove_writer(self._fd)
        self._reading = False
        self._writing = False
        self._queue.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._pending:
            self.counters.inc("tx_dropped_closed", len(self._pending))
            self._pending = []
        if self._owns_fd:
            os.close(self._fd)
