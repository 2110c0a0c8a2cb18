"""The ``olm`` command line: ``olm stack`` (a netstack on a TUN) and more as they land."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from olm.device import DeviceError
from olm.privilege import require_net_admin


class EchoProtocol(asyncio.DatagramProtocol):
    """Sends every datagram back to where it came from (RFC 862 over UDP)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to answer on."""
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Echo ``data`` to ``addr``."""
        if self.transport is not None:
            self.transport.sendto(data, addr)


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"port out of range: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every ``olm`` subcommand."""
    parser = argparse.ArgumentParser(prog="olm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stack", help="attach a netstack to a TUN device and serve on it")
    st.add_argument("--tun", default="olm0", help="TUN device name (default: olm0)")
    st.add_argument(
        "--address",
        action="append",
        dest="addresses",
        metavar="IP",
        help="service address the stack holds (repeatable; default 10.30.30.30 and fd30:30:30::30)",
    )
    st.add_argument("--mtu", type=int, default=1500, help="TUN MTU (default: 1500)")
    st.add_argument("--udp-echo", type=_port, metavar="PORT", help="serve UDP echo on PORT")
    st.add_argument("--pcap", metavar="FILE", help="write every packet to a pcap file")
    st.add_argument("--trace", action="store_true", help="print one line per packet")
    st.add_argument("--stats", action="store_true", help="print the counters on exit")
    return parser


async def run_stack(args: argparse.Namespace) -> int:
    """Serve a stack on a TUN until SIGINT or SIGTERM; return the exit status."""
    from netstack.sockets import create_datagram_endpoint
    from olm.runtime import TunStack, TunStackConfig

    config = TunStackConfig(
        tun=args.tun,
        addresses=args.addresses or ["10.30.30.30", "fd30:30:30::30"],
        mtu=args.mtu,
        pcap=args.pcap,
        trace=(lambda line: print(line, flush=True)) if args.trace else None,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with TunStack(config) as running:
        stack = running.stack
        assert stack is not None
        services = []
        if args.udp_echo:
            families = {":" in a for a in config.addresses}
            for wildcard in [h for h, v6 in (("0.0.0.0", False), ("::", True)) if v6 in families]:
                transport, _ = await create_datagram_endpoint(
                    stack, EchoProtocol, local_addr=(wildcard, args.udp_echo)
                )
                services.append(transport)
        extra = f" udp-echo={args.udp_echo}" if args.udp_echo else ""
        print(
            f"olm stack: ready on {config.tun} ({', '.join(config.addresses)}){extra}",
            flush=True,
        )
        await stop.wait()
        for transport in services:
            transport.close()
        if args.stats:
            for name, value in stack.counters.items():
                print(f"{name} {value}", file=sys.stderr)
    print("olm stack: stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``olm`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "stack":
        require_net_admin(f"creating TUN device {args.tun}")
        try:
            return asyncio.run(run_stack(args))
        except DeviceError as exc:
            print(f"olm: {exc}", file=sys.stderr)
            return 2 if exc.is_permission_error else 1
        except ValueError as exc:
            print(f"olm: {exc}", file=sys.stderr)
            return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
