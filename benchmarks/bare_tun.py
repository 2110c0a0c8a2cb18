"""The loop the bare baselines share: a TUN, a select() loop, one answer function per packet.

No stack, no asyncio: read one packet, ask ``answer`` for the reply, write it back. Removes its
TUN on SIGTERM/SIGINT. Run as root.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable

from olm.device.netconfig import configure_tun, default_host_address
from olm.device.tun import open_tun


def serve(
    tun: str, addresses: list[str], answer: Callable[[bytes], bytes | None], name: str
) -> None:
    """Answer packets on a new TUN until SIGTERM/SIGINT; prints "<name>: ready" when serving."""
    dev = open_tun(tun, 1500)
    net = configure_tun(
        dev.name,
        mtu=1500,
        host_addresses=[default_host_address(a) for a in addresses],
        service_addresses=addresses,
    )
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fd = dev.fd
    print(f"{name}: ready", flush=True)
    read, write = os.read, os.write
    try:
        while not stop:
            try:
                ready, _, _ = select.select([fd], [], [], 0.2)
            except InterruptedError:
                continue
            if ready:
                out = answer(read(fd, 65535))
                if out is not None:
                    write(fd, out)
    finally:
        net.undo()
        dev.close()
