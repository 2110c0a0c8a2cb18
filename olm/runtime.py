"""A netstack Stack attached to a real TUN device, with setup and guaranteed teardown.

Shared by ``olm stack`` and ``olm up``: opens the TUN with python-pytun, configures it
with pyroute2 (link up, MTU, host-side addresses, a route per service address), builds a Stack
on an asyncio clock with an fd link endpoint (wrapped in a sniffer when a pcap or a trace is
wanted), and undoes all of it on exit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO

from netstack.clock import AsyncioClock
from netstack.link import LinkEndpoint
from netstack.link.fd import FdEndpoint
from netstack.link.pcap import PcapWriter
from netstack.link.sniffer import SnifferEndpoint
from netstack.stack import Stack, StackOptions
from olm.device.filtered import FilteredDevice
from olm.device.netconfig import NetConfig, configure_tun, default_host_address
from olm.device.tun import TunDevice, open_tun


@dataclass
class TunStackConfig:
    """What to build: the TUN's name and MTU, the service addresses, and what to record."""

    tun: str = "olm0"
    addresses: list[str] = field(default_factory=lambda: ["10.30.30.30", "fd30:30:30::30"])
    mtu: int = 1500
    pcap: str | None = None
    trace: Callable[[str], None] | None = None
    options: StackOptions | None = None
    #: TCP segmentation offload on the TUN (IFF_VNET_HDR + TUNSETOFFLOAD), if the kernel agrees.
    offload: bool = True
    #: Put a FilteredDevice between the TUN and the stack: the stack sees only packets for its
    #: addresses, the rest goes to the device's next consumer (``olm up``).
    filtered: bool = False
    #: Prefixes routed through the TUN besides the service addresses (the fake-IP ranges).
    prefixes: list[str] = field(default_factory=list)


def assign_service_addresses(stack: Stack, nic: str, addresses: list[str]) -> None:
    """Give ``nic`` each service address as a host address and a default route per family.

    Everything the stack sends leaves through that NIC: back to the kernel, over the TUN.
    """
    families = set()
    for text in addresses:
        addr = ipaddress.ip_address(text)
        stack.add_address(nic, f"{addr}/{addr.max_prefixlen}")
        families.add(addr.version)
    if 4 in families:
        stack.add_route("0.0.0.0/0", nic)
    if 6 in families:
        stack.add_route("::/0", nic)


class TunStack:
    """An async context manager: a configured TUN with a Stack answering on its addresses."""

    def __init__(self, config: TunStackConfig, stack: Stack | None = None) -> None:
        self.config = config
        self._given_stack = stack
        self.stack: Stack | None = None
        self.filtered: FilteredDevice | None = None
        self.device: TunDevice | None = None
        self.netconfig: NetConfig | None = None
        self.link: LinkEndpoint | None = None
        self._pcap_file: BinaryIO | None = None
        self._pcap: PcapWriter | None = None

    async def __aenter__(self) -> TunStack:
        cfg = self.config
        for text in cfg.addresses:
            ipaddress.ip_address(text)  # ValueError names a bad address before any change
        try:
            self.device = open_tun(cfg.tun, cfg.mtu, offload=cfg.offload)
            # pyroute2's synchronous IPRoute runs an event loop of its own: keep it off ours.
            self.netconfig = await asyncio.to_thread(
                configure_tun,
                self.device.name,
                mtu=cfg.mtu,
                host_addresses=[default_host_address(a) for a in cfg.addresses],
                service_addresses=list(cfg.addresses),
                prefixes=list(cfg.prefixes),
            )
            self.stack = self._build_stack()
        except BaseException:
            await self._teardown()
            raise
        return self

    def _build_stack(self) -> Stack:
        cfg = self.config
        assert self.device is not None
        stack = self._given_stack or Stack(AsyncioClock(), cfg.options)
        link: LinkEndpoint = FdEndpoint(
            self.device.fd, cfg.mtu, counters=stack.counters, vnet_hdr=self.device.offload
        )
        if cfg.pcap or cfg.trace:
            if cfg.pcap:
                self._pcap_file = open(cfg.pcap, "wb")  # noqa: SIM115 - closed in teardown
                self._pcap = PcapWriter(self._pcap_file)
            link = SnifferEndpoint(link, pcap=self._pcap, log=cfg.trace, counters=stack.counters)
        self.link = link
        if cfg.filtered:
            # Writes from the stack go straight to the TUN; reads pass the rules first.
            self.filtered = FilteredDevice(link.write_packets, counters=stack.counters)
            link.attach(self.filtered)
            stack.create_nic("tun", self.filtered.stack_link(cfg.mtu, cfg.addresses))
        else:
            stack.create_nic("tun", link)
        assign_service_addresses(stack, "tun", cfg.addresses)
        return stack

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        """Undo everything in reverse order; each step runs even if an earlier one failed."""
        errors: list[BaseException] = []
        for step in (self._close_link, self._close_pcap):
            try:
                step()
            except Exception as failure:  # report every failure, stop at none
                errors.append(failure)
        for step in (self._undo_netconfig, self._close_tun):
            try:
                await asyncio.to_thread(step)
            except Exception as failure:
                errors.append(failure)
        for error in errors:
            print(f"olm: teardown: {error}", file=sys.stderr)

    def _close_link(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def _close_pcap(self) -> None:
        if self._pcap is not None:
            self._pcap.close()
            self._pcap = None
            self._pcap_file = None

    def _undo_netconfig(self) -> None:
        if self.netconfig is not None:
            self.netconfig.undo()
            self.netconfig = None

    def _close_tun(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None
