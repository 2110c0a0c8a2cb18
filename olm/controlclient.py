"""The client side of the control socket: ``olm inspect``, ``olm cache flush``, ``olm trace``.

Each command sends one request (protocol in :mod:`olm.control`, docs/control.md) and prints the
answer as a readable table, or as JSON with ``--json``. Exit status: 0 done, 1 no daemon or
the daemon could not answer, 2 a bad request or a missing permission.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any, BinaryIO, TextIO

from olm.control import VERSION, default_path

__all__ = ["ClientError", "Connection", "add_parsers", "run"]


class ClientError(Exception):
    """The control request failed; ``status`` is the exit status to give."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Connection:
    """One connection to a daemon's control socket."""

    def __init__(self, path: str | None = None, timeout: float | None = 10.0) -> None:
        self.path = path or default_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except PermissionError:
            sock.close()
            owner = _owner(self.path)
            raise ClientError(
                f"{self.path}: permission denied: the control socket is for root and the "
                f"daemon's user{owner} only; run as one of them",
                2,
            ) from None
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise ClientError(
                f"no olm daemon at {self.path} ({exc.strerror}): is olm up or olm serve "
                "running, with this --control path?"
            ) from None
        except OSError as exc:
            sock.close()
            raise ClientError(f"{self.path}: {exc.strerror or exc}") from None
        self.sock = sock
        self.file = sock.makefile("rwb")

    def close(self) -> None:
        """Close the connection."""
        # A refused request is still in the write buffer: closing would flush it into the
        # closed socket, and that BrokenPipeError must not hide why the daemon refused.
        with contextlib.suppress(OSError):
            self.file.close()
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, cmd: str, args: dict[str, Any] | None = None) -> None:
        """Write one request."""
        line = json.dumps({"v": VERSION, "cmd": cmd, "args": args or {}}) + "\n"
        try:
            self.file.write(line.encode())
            self.file.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The daemon answered before we asked (a refusal) and closed: read why.
            self.receive()
            raise ClientError(f"{self.path}: the daemon closed the connection") from None

    def receive(self) -> dict[str, Any]:
        """Read one response line; a daemon gone is a ClientError."""
        try:
            line = self.file.readline()
        except TimeoutError:
            raise ClientError(f"{self.path}: no answer from the daemon") from None
        if not line:
            raise ClientError(f"{self.path}: the daemon closed the connection")
        message: dict[str, Any] = json.loads(line)
        if message.get("ok") is False:
            code = message.get("code")
            status = 2 if code in ("denied", "bad_request", "unknown", "version") else 1
            raise ClientError(str(message.get("error")), status)
        return message

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Send a request and return its result."""
        self.send(cmd, args)
        return self.receive().get("result")

    def stream(self, cmd: str, args: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Send a streaming request; yield each message until the end."""
        self.send(cmd, args)
        while True:
            message = self.receive()
            if message.get("end"):
                return
            yield message


def _owner(path: str) -> str:
    try:
        return f" (uid {os.stat(path).st_uid})"
    except OSError:
        return ""


# -- the command line ----------------------------------------------------------------------

_WHAT = ("sockets", "counters", "cache", "upstreams", "lists", "fakeip", "views", "hello")


def _control_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--control",
        metavar="PATH",
        help=f"the daemon's control socket (default {default_path()})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")


def add_parsers(sub: Any) -> None:
    """Add ``inspect``, ``cache`` and ``trace`` to the ``olm`` subcommands."""
    inspect = sub.add_parser("inspect", help="show what a running daemon holds (ss, netstat -s)")
    _control_flag(inspect)
    inspect.add_argument("what", choices=_WHAT, help="what to show")
    inspect.add_argument("prefix", nargs="?", help="counters: only those under PREFIX")
    inspect.add_argument("--watch", action="store_true", help="counters: per-second deltas")
    inspect.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="--watch: how often"
    )
    inspect.add_argument(
        "--count", type=int, default=0, metavar="N", help="--watch: stop after N updates"
    )
    inspect.add_argument(
        "--limit", type=int, default=20, metavar="N", help="cache, fakeip: entries to list"
    )
    cache = sub.add_parser("cache", help="act on a running daemon's cache")
    cache_sub = cache.add_subparsers(dest="action", required=True)
    flush = cache_sub.add_parser("flush", help="drop every entry, or those of NAME")
    _control_flag(flush)
    flush.add_argument("name", nargs="?", help="only this name's entries")
    trace = sub.add_parser("trace", help="follow queries through every layer, live")
    _control_flag(trace)
    trace.add_argument("--name", help="only queries for NAME or names under it")
    trace.add_argument("--client", metavar="ADDR[/LEN]", help="only queries from these clients")
    trace.add_argument("--proto", choices=["udp", "tcp"], help="only queries over this transport")
    trace.add_argument("--count", type=int, default=0, metavar="N", help="stop after N traces")
    trace.add_argument(
        "--pcap", metavar="FILE", help="write the traced packets as pcap to FILE (- for stdout)"
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``inspect``, ``cache`` or ``trace``; return the exit status."""
    out = out or sys.stdout
    try:
        with Connection(args.control) as conn:
            if args.command == "inspect":
                return _inspect(conn, args, out)
            if args.command == "cache":
                result = conn.call("cache.flush", {"name": args.name} if args.name else {})
                _print(out, args, result, lambda r: f"flushed {r['flushed']} entries")
                return 0
            return _trace(conn, args, out)
    except ClientError as exc:
        print(f"olm: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _print(out: TextIO, args: argparse.Namespace, result: Any, text: Any) -> None:
    if args.json:
        print(json.dumps(result, indent=2), file=out)
    else:
        print(text(result), file=out)
    out.flush()


def _inspect(conn: Connection, args: argparse.Namespace, out: TextIO) -> int:
    from olm.inspect_format import format_counters, format_sockets

    what = args.what
    if what == "counters":
        request = {"prefix": args.prefix} if args.prefix else {}
        if args.watch:
            return _watch(conn, request, args, out)
        items = conn.call("counters", request)
        _print(out, args, items, lambda r: format_counters([(n, v) for n, v in r]))
        return 0
    if what in ("cache", "fakeip"):
        result = conn.call(what, {"limit": args.limit})
    else:
        result = conn.call(what)
    formatters = {
        "sockets": format_sockets,
        "cache": _format_cache,
        "upstreams": _format_upstreams,
        "lists": _format_lists,
        "fakeip": _format_fakeip,
        "views": _format_views,
        "hello": lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()),
    }
    _print(out, args, result, formatters[what])
    return 0


def _watch(conn: Connection, request: dict[str, Any], args: argparse.Namespace, out: TextIO) -> int:
    """Print the counters, then their per-second deltas every interval."""
    from olm.inspect_format import format_counters

    before = dict(conn.call("counters", request))
    then = time.monotonic()
    shown = 0
    while not args.count or shown < args.count:
        time.sleep(args.interval)
        now_items = conn.call("counters", request)
        now = time.monotonic()
        seconds = max(now - then, 1e-9)
        deltas = {n: round((v - before.get(n, 0)) / seconds) for n, v in now_items}
        if args.json:
            print(json.dumps({"time": time.time(), "per_second": deltas}), file=out)
        else:
            print(f"--- {time.strftime('%H:%M:%S')} (per second)", file=out)
            print(format_counters([(n, v) for n, v in now_items], deltas), file=out)
        out.flush()
        before, then = dict(now_items), now
        shown += 1
    return 0


def _trace(conn: Connection, args: argparse.Namespace, out: TextIO) -> int:
    from netstack.link.pcap import PcapWriter

    request: dict[str, Any] = {"count": args.count}
    for name in ("name", "client", "proto"):
        if getattr(args, name):
            request[name] = getattr(args, name)
    pcap: PcapWriter | None = None
    stream: BinaryIO | None = None
    if args.pcap:
        request["pcap"] = True
        stream = sys.stdout.buffer if args.pcap == "-" else open(args.pcap, "wb")  # noqa: SIM115
        pcap = PcapWriter(stream)
    # With the pcap on stdout, the trace lines go to stderr.
    text = sys.stderr if args.pcap == "-" else out
    conn.sock.settimeout(None)
    try:
        for message in conn.stream("trace", request):
            if "packet" in message and pcap is not None:
                packet = message["packet"]
                pcap.write(base64.b64decode(packet["data"]), packet["time"])
                pcap.flush()
                continue
            if message.get("tracing"):
                print("olm: tracing (Ctrl-C stops)", file=sys.stderr, flush=True)
                continue
            event = message.get("event")
            if event is None:
                continue
            if args.json:
                print(json.dumps(event), file=text)
            else:
                print(
                    f"#{event['trace']:<4} {event['us']:>10.1f} us  {event['layer']:<9} "
                    f"{event['text']}",
                    file=text,
                )
            text.flush()
    finally:
        if stream is not None and stream is not sys.stdout.buffer:
            stream.close()
    return 0


# -- tables --------------------------------------------------------------------------------


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header, *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _format_cache(r: dict[str, Any]) -> str:
    head = (
        f"cache {'on' if r['enabled'] else 'off'}: {r['entries']} of {r['max_entries']} entries, "
        f"{r['bytes']} of {r['max_bytes']} bytes, serve-stale "
        f"{'on' if r['serve_stale'] else 'off'}, prefetch {'on' if r['prefetch'] else 'off'}"
    )
    counters = "  ".join(f"{k} {v}" for k, v in sorted(r["counters"].items()))
    rows = [[e["name"], e["type"], e["kind"], e["ttl"], e["bytes"]] for e in r["recent"]]
    table = _table(rows, ["NAME", "TYPE", "KIND", "TTL", "BYTES"]) if rows else "(empty)"
    return f"{head}\n{counters}\n\nmost recently used:\n{table}"


def _format_upstreams(groups: list[dict[str, Any]]) -> str:
    parts = []
    for g in groups:
        parts.append(
            f"group {g['group']}: policy {g['policy']}, timeout {g['timeout']} s, "
            f"deadline {g['deadline']} s{', probing' if g['probing'] else ''}"
        )
        rows = [
            [
                u["url"],
                "down" if u["down"] else "up",
                u["latency_ms"],
                u["answers"],
                u["failures"],
                " ".join(f"{k}:{v}" for k, v in sorted(u["failure_kinds"].items())) or None,
                u["failures_in_row"],
            ]
            for u in g["upstreams"]
        ]
        header = ["UPSTREAM", "STATE", "LATENCY_MS", "ANSWERS", "FAILURES", "KINDS", "IN_ROW"]
        parts[-1] += "\n" + _table(rows, header)
    return "\n\n".join(parts)


def _format_lists(r: dict[str, Any]) -> str:
    if not r["lists"]:
        return "no blocklists"
    rows = [[x["name"], x["names"], x["bytes"], x["blocked"]] for x in r["lists"]]
    table = _table(rows, ["LIST", "NAMES", "BYTES", "BLOCKED"])
    return f"answer {r['answer']}, {r['allow']} allowed names, {r['blocked']} blocked\n{table}"


def _format_fakeip(r: dict[str, Any]) -> str:
    if not r["enabled"]:
        return "fake-IP off"
    rows = [[m["name"], m["ipv4"], m["ipv6"]] for m in r["recent"]]
    head = (
        f"fake-IP {r['ipv4_range']}{' ' + r['ipv6_range'] if r['ipv6_range'] else ''}: "
        f"{r['used']} of {r['size']} used, state file {r['state_file'] or '-'}"
    )
    return f"{head}\n{_table(rows, ['NAME', 'IPV4', 'IPV6'])}" if rows else head


def _format_views(r: dict[str, Any]) -> str:
    rows = [
        [
            v["name"],
            ",".join(v["clients"]),
            v["group"],
            ",".join(v["blocklists"]) if v["blocklists"] is not None else None,
        ]
        for v in r["views"]
    ]
    parts = [_table(rows, ["VIEW", "CLIENTS", "GROUP", "BLOCKLISTS"]) if rows else "no views"]
    if r["lines"]:
        lines = [[x["label"], ",".join(x["prefixes"])] for x in r["lines"]]
        parts.append(_table(lines, ["LINE", "PREFIXES"]))
    counters = "  ".join(f"{k} {v}" for k, v in sorted(r["counters"].items()))
    if counters:
        parts.append(counters)
    return "\n\n".join(parts)
