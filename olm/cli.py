"""The ``olm`` command line: ``up``, ``serve``, ``demo``, ``stack``, ``inspect``, ``trace``...

``up`` is the DNS proxy on a TUN, ``serve`` the same engine on kernel sockets, ``stack``
netstack alone on a TUN; ``inspect``, ``cache flush`` and ``trace`` ask a running one through
its control socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from olm.device import DeviceError
from olm.dns.upstream.group import Policy
from olm.privilege import require_net_admin


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
    st.add_argument("--tcp-echo", type=_port, metavar="PORT", help="serve TCP echo on PORT")
    st.add_argument("--tcp-discard", type=_port, metavar="PORT", help="serve TCP discard on PORT")
    st.add_argument("--pcap", metavar="FILE", help="write every packet to a pcap file")
    st.add_argument("--trace", action="store_true", help="print one line per packet")
    st.add_argument("--stats", action="store_true", help="print the counters on exit")
    _view_flags(st)
    st.add_argument(
        "--no-offload",
        dest="offload",
        action="store_false",
        help="one packet per system call on the TUN (no IFF_VNET_HDR/TSO)",
    )

    demo = sub.add_parser("demo", help="the DNS proxy end to end in memory: no root, no network")
    demo.add_argument("--quiet", action="store_true", help="do not print the packet walk")

    up = sub.add_parser("up", help="run the virtual DNS proxy on a TUN device")
    up.add_argument("--tun", help="TUN device name (default: olm0)")
    up.add_argument(
        "--address",
        action="append",
        dest="addresses",
        metavar="IP",
        help="service address (repeatable; default 10.30.30.30 and fd30:30:30::30)",
    )
    up.add_argument("--mtu", type=int, help="TUN MTU (default: 1500)")
    up.add_argument("--pcap", metavar="FILE", help="write every packet on the TUN to a pcap file")
    up.add_argument(
        "--offload",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="open the TUN with IFF_VNET_HDR and TSO (off: DNS is small UDP messages, which "
        "offload makes dearer; it pays only for bulk TCP)",
    )
    _engine_flags(up)

    serve = sub.add_parser(
        "serve", help="run the same DNS engine on kernel sockets (no TUN: a sidecar, a daemon)"
    )
    serve.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="answer UDP and TCP here (repeatable; default 127.0.0.1:53 and [::1]:53)",
    )
    _engine_flags(serve)
    from olm.controlclient import add_parsers

    add_parsers(sub)
    return parser


def _view_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags of what looks inside a daemon: the control socket and metrics."""
    parser.add_argument(
        "--control",
        metavar="PATH",
        help="control socket for olm inspect and olm trace (default: /run/olm/olm.sock as "
        "root, else under $XDG_RUNTIME_DIR; none: no socket)",
    )
    parser.add_argument(
        "--metrics",
        nargs="?",
        const="127.0.0.1:9153",
        metavar="ADDR:PORT",
        help="serve Prometheus /metrics here (default off; bare flag: 127.0.0.1:9153)",
    )


class _QueryLogAction(argparse.Action):
    """``--query-log FILE``: turn the query log on, writing to FILE."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, "query_log.enabled", True)
        setattr(namespace, self.dest, values)


def _engine_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the DNS engine's settings (shared by ``up`` and ``serve``)."""
    parser.add_argument("--config", metavar="FILE", help="TOML settings file")
    parser.add_argument(
        "--upstream",
        action="append",
        dest="upstreams",
        metavar="URL",
        help="upstream: host[:port], udp://, tcp://, tls://, https://.../dns-query, quic:// "
        "(repeatable; default: the nameservers of /etc/resolv.conf)",
    )
    parser.add_argument(
        "--bootstrap",
        action="append",
        metavar="IP[:PORT]",
        help="plain-DNS resolver that finds upstreams given by name (repeatable)",
    )
    parser.add_argument("--policy", choices=[p.value for p in Policy])
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="per-try upstream timeout")
    parser.add_argument(
        "--deadline", type=float, metavar="SECONDS", help="overall upstream deadline"
    )
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    cache = parser.add_argument_group("cache (TOML [cache], OLM_CACHE_*; docs/dns.md)")
    cache.add_argument(
        "--no-cache",
        dest="cache.enabled",
        action="store_const",
        const=False,
        default=None,
        help="answer every query from upstream",
    )
    for name, metavar, text in (
        ("size", "ENTRIES", "entries at most (default 10000)"),
        ("max_bytes", "BYTES", "bytes at most (default 16 MiB)"),
        ("min_ttl", "SECONDS", "keep answers at least this long (default 0)"),
        ("max_ttl", "SECONDS", "keep answers at most this long (default 86400)"),
        ("max_negative_ttl", "SECONDS", "keep NXDOMAIN/NODATA at most this long (default 3600)"),
        ("failure_ttl", "SECONDS", "keep SERVFAIL this long, 1 to 300 (default 5, RFC 9520)"),
        ("stale_max_age", "SECONDS", "serve expired answers this long (default 86400)"),
    ):
        cache.add_argument(
            "--cache-" + name.replace("_", "-"), dest="cache." + name, metavar=metavar, help=text
        )
    for name, text in (
        ("serve_stale", "answer expired entries at once while refreshing (RFC 8767; off)"),
        ("prefetch", "refresh entries asked for in the last tenth of their TTL (on)"),
    ):
        cache.add_argument(
            "--cache-" + name.replace("_", "-"),
            dest="cache." + name,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=text,
        )
    local = parser.add_argument_group("local answers (docs/dns.md, README: examples)")
    local.add_argument(
        "--records-file",
        action="append",
        dest="records_files",
        metavar="FILE",
        help="custom records, Pipy JSON or TOML [[records]] (repeatable)",
    )
    local.add_argument("--lines-file", metavar="FILE", help="client lines, Pipy JSON format")
    local.add_argument(
        "--hosts-file",
        action="append",
        dest="hosts_files",
        metavar="FILE",
        help="hosts(5) file answered for A, AAAA, PTR (repeatable)",
    )
    local.add_argument(
        "--zone",
        action="append",
        dest="zones",
        metavar="NAME",
        help="local zone: missing names under it get NXDOMAIN (repeatable)",
    )
    local.add_argument(
        "--deny", action="append", metavar="NAME", help="answer NAME (*.NAME: below) REFUSED"
    )
    local.add_argument(
        "--auto-ptr",
        action="store_const",
        const=True,
        default=None,
        help="PTR records for the A and AAAA records",
    )
    local.add_argument(
        "--split",
        action="append",
        metavar="SUFFIX=UPSTREAM[,UPSTREAM][@POLICY]",
        help="send names under SUFFIX to their own upstreams (repeatable)",
    )
    local.add_argument(
        "--private-reverse-upstream",
        action="append",
        dest="private_reverse_upstreams",
        metavar="HOST[:PORT]",
        help="upstream for reverse names of private ranges (repeatable)",
    )
    local.add_argument("--state-dir", metavar="DIR", help="downloaded lists, state (/var/lib/olm)")
    block = parser.add_argument_group("blocklists")
    block.add_argument(
        "--block-list",
        action="append",
        dest="block.lists",
        metavar="FILE|URL",
        help="hosts, domain or adblock list (repeatable)",
    )
    block.add_argument(
        "--block-allow",
        action="append",
        dest="block.allow",
        metavar="NAME|FILE",
        help="never block NAME, or the names of an allow list (repeatable)",
    )
    block.add_argument(
        "--block-answer",
        dest="block.answer",
        metavar="nxdomain|refused|null|ADDR[,ADDR]",
        help="the answer for blocked names (default nxdomain)",
    )
    fake = parser.add_argument_group("fake-IP")
    fake.add_argument(
        "--fake-ip",
        dest="fake_ip.enabled",
        action="store_const",
        const=True,
        default=None,
        help="answer names with addresses from a pool (TTL 1)",
    )
    fake.add_argument(
        "--fake-ip-suffix",
        action="append",
        dest="fake_ip.suffixes",
        metavar="SUFFIX",
        help="only names under SUFFIX (repeatable; default: all)",
    )
    fake.add_argument(
        "--fake-ip-exclude",
        action="append",
        dest="fake_ip.exclude",
        metavar="SUFFIX",
        help="never names under SUFFIX (repeatable)",
    )
    fake.add_argument("--fake-ip-range", dest="fake_ip.ipv4_range", metavar="PREFIX")
    fake.add_argument("--fake-ip-range6", dest="fake_ip.ipv6_range", metavar="PREFIX")
    fake.add_argument("--fake-ip-state-file", dest="fake_ip.state_file", metavar="FILE")
    fastest = parser.add_argument_group("fastest address (TOML [fastest_addr])")
    fastest.add_argument(
        "--fastest-addr",
        dest="fastest_addr.enabled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put first the address of an answer that accepts a TCP connection first",
    )
    fastest.add_argument("--fastest-addr-ports", dest="fastest_addr.ports", metavar="PORT[,PORT]")
    fastest.add_argument(
        "--fastest-addr-mode",
        dest="fastest_addr.mode",
        choices=["first", "only"],
        help="put the winner first, or keep it alone",
    )
    fastest.add_argument(
        "--fastest-addr-budget",
        dest="fastest_addr.budget",
        metavar="SECONDS",
        help="never hold an answer longer than this (default 0.2)",
    )
    qlog = parser.add_argument_group(
        "query log (TOML [query_log], OLM_QUERY_LOG_*; off by default; docs/dns.md)"
    )
    qlog.add_argument(
        "--query-log",
        dest="query_log.path",
        action=_QueryLogAction,
        metavar="FILE",
        help="write one JSON line per query to FILE (names are private: off by default)",
    )
    for name, metavar, text in (
        ("max_bytes", "BYTES", "rotate the file at this size (default 10 MiB)"),
        ("backups", "N", "rotated files kept (default 5)"),
        ("ipv4_prefix", "BITS", "write IPv4 clients as their /BITS network (default 32)"),
        ("ipv6_prefix", "BITS", "write IPv6 clients as their /BITS network (default 128)"),
    ):
        qlog.add_argument(
            "--query-log-" + name.replace("_", "-"),
            dest="query_log." + name,
            metavar=metavar,
            help=text,
        )
    parser.add_argument(
        "--resolv-conf", default="/etc/resolv.conf", help=argparse.SUPPRESS
    )  # for tests: where default upstreams come from
    parser.add_argument("--stats", action="store_true", help="print the counters on exit")
    _view_flags(parser)


_UP_FIELDS = (
    "tun",
    "addresses",
    "listen",
    "bootstrap",
    "upstreams",
    "policy",
    "timeout",
    "deadline",
    "mtu",
    "pcap",
    "log_level",
    "records_files",
    "lines_file",
    "hosts_files",
    "zones",
    "deny",
    "auto_ptr",
    "split",
    "private_reverse_upstreams",
    "state_dir",
    "control",
    "metrics",
)


_TABLE_FLAGS = ("cache.", "block.", "fake_ip.", "fastest_addr.", "query_log.")


def _load(args: argparse.Namespace, serve: bool) -> tuple[Any, Callable[[], Any]]:
    """Load the settings of ``up`` or ``serve``; return them and the reload function."""
    import os

    from olm.config import load_settings
    from olm.serve import dotproxy_environ

    fields = [name for name in _UP_FIELDS if hasattr(args, name)]
    cli = {name: getattr(args, name) for name in fields}
    cli.update({k: v for k, v in vars(args).items() if k.startswith(_TABLE_FLAGS)})

    def load() -> Any:
        environ = dotproxy_environ(os.environ) if serve else os.environ
        return load_settings(cli, environ, args.config)

    return load(), load


def _configure_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=level, format="olm: %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _print_counters(items: Any) -> None:
    for name, value in items:
        print(f"{name} {value}", file=sys.stderr)


def run_up(args: argparse.Namespace) -> int:
    """Load the settings, then run the daemon until SIGINT/SIGTERM."""
    from olm.config import ConfigError
    from olm.daemon import Daemon, StartupError

    try:
        settings, load = _load(args, serve=False)
    except ConfigError as exc:
        print(f"olm: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    require_net_admin(f"creating TUN device {settings.tun}")
    daemon = Daemon(
        settings, reload_settings=load, resolv_conf=args.resolv_conf, offload=args.offload
    )
    try:
        status = asyncio.run(daemon.run())
    except StartupError as exc:
        print(f"olm: {exc}", file=sys.stderr)
        return exc.status
    except DeviceError as exc:
        print(f"olm: {exc}", file=sys.stderr)
        return 2 if exc.is_permission_error else 1
    if args.stats and daemon.stack is not None:
        _print_counters(daemon.stack.counters.items())
    print("olm: stopped", flush=True)
    return status


def run_serve(args: argparse.Namespace) -> int:
    """Load the settings, then serve on kernel sockets until SIGINT/SIGTERM."""
    from olm.config import ConfigError
    from olm.privilege import require_bind_service
    from olm.serve import Serve, listen_addresses
    from olm.serving import StartupError

    try:
        settings, load = _load(args, serve=True)
        listen = listen_addresses(settings.listen)
    except (ConfigError, ValueError) as exc:
        print(f"olm: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    for _, port in listen:
        require_bind_service(port)
    server = Serve(settings, reload_settings=load, resolv_conf=args.resolv_conf)
    try:
        status = asyncio.run(server.run())
    except StartupError as exc:
        print(f"olm: {exc}", file=sys.stderr)
        return exc.status
    if args.stats:
        _print_counters(server.counters.items())
    print("olm: stopped", flush=True)
    return status


class _StackTarget:
    """What ``olm stack`` shows through its control socket."""

    kind = "stack"

    def __init__(self, stack: Any, tracer: Any) -> None:
        self.service: Any = None  # no DNS here
        self.stack = stack
        self.counters = stack.counters
        self.tracer = tracer


async def _open_stack_views(args: argparse.Namespace, running: Any, views: Any) -> None:
    """Open the control socket (with tracing) and /metrics of ``olm stack``."""
    from olm.config import ConfigError, load_settings
    from olm.control import open_control
    from olm.trace import Tracer

    try:
        settings = load_settings({"control": args.control, "metrics": args.metrics})
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    stack = running.stack
    nic = stack.nics["tun"]
    tracer = Tracer(stack.counters, stack=stack, link=running.link, dispatcher=nic, nic=nic)
    await open_control(settings.control, _StackTarget(stack, tracer), views)
    if settings.metrics:
        from olm.metrics import open_metrics

        await open_metrics(settings.metrics, stack.counters, None, views)


async def run_stack(args: argparse.Namespace) -> int:
    """Serve a stack on a TUN until SIGINT or SIGTERM; return the exit status."""
    from netstack.adapters import create_datagram_endpoint, start_server
    from olm.runtime import TunStack, TunStackConfig
    from olm.services import EchoProtocol, tcp_discard, tcp_echo

    config = TunStackConfig(
        tun=args.tun,
        addresses=args.addresses or ["10.30.30.30", "fd30:30:30::30"],
        mtu=args.mtu,
        pcap=args.pcap,
        trace=(lambda line: print(line, flush=True)) if args.trace else None,
        offload=args.offload,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with TunStack(config) as running, contextlib.AsyncExitStack() as views:
        stack = running.stack
        assert stack is not None
        wildcards = [
            host
            for host, v6 in (("0.0.0.0", False), ("::", True))
            if v6 in {":" in a for a in config.addresses}
        ]
        closers: list[Any] = []
        extra = ""
        await _open_stack_views(args, running, views)
        for wildcard in wildcards:
            if args.udp_echo:
                transport, _ = await create_datagram_endpoint(
                    stack, EchoProtocol, local_addr=(wildcard, args.udp_echo)
                )
                closers.append(transport)
            for port, handler in ((args.tcp_echo, tcp_echo), (args.tcp_discard, tcp_discard)):
                if port:
                    closers.append(await start_server(stack, handler, wildcard, port))
        for name in ("udp_echo", "tcp_echo", "tcp_discard"):
            if getattr(args, name):
                extra += f" {name.replace('_', '-')}={getattr(args, name)}"
        print(
            f"olm stack: ready on {config.tun} ({', '.join(config.addresses)}){extra}",
            flush=True,
        )
        await stop.wait()
        for closer in closers:
            closer.close()
        if args.stats:
            for name, value in stack.counters.items():
                print(f"{name} {value}", file=sys.stderr)
    print("olm stack: stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``olm`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "up":
        return run_up(args)
    if args.command == "serve":
        return run_serve(args)
    if args.command in ("inspect", "cache", "trace"):
        from olm.controlclient import run

        return run(args)
    if args.command == "demo":
        from olm.demo import main as demo_main

        return demo_main(trace=not args.quiet)
    if args.command == "stack":
        require_net_admin(f"creating TUN device {args.tun}")
        from olm.serving import StartupError

        try:
            return asyncio.run(run_stack(args))
        except StartupError as exc:
            print(f"olm: {exc}", file=sys.stderr)
            return exc.status
        except DeviceError as exc:
            print(f"olm: {exc}", file=sys.stderr)
            return 2 if exc.is_permission_error else 1
        except ValueError as exc:
            print(f"olm: {exc}", file=sys.stderr)
            return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
