"""The control socket: what ``olm inspect``, ``olm cache flush`` and ``olm trace`` ask a daemon.

A Unix stream socket (``/run/olm/olm.sock`` as root), mode 0600 and checked again with
SO_PEERCRED: only root and the daemon's own user get in. The protocol is JSON lines, version
1 (docs/control.md): a client writes one request per line and reads one response per line::

    -> {"v": 1, "cmd": "counters", "args": {"prefix": "dns.cache"}}
    <- {"v": 1, "ok": true, "result": [["dns.cache.hit", 12], ["dns.cache.miss", 3]]}
    <- {"v": 1, "ok": false, "error": "unknown command 'frobnicate'", "code": "unknown"}

``trace`` is the one streaming command: it answers ``{"v": 1, "ok": true, "tracing": true}`` once
the tracer is in place, then ``{"v": 1, "event": {...}}`` lines (and
``{"v": 1, "packet": ...}`` lines with ``pcap``) until its count is reached or the client
leaves, then a final ``{"v": 1, "ok": true, "end": true}``. A malformed request gets an error
response and the connection stays usable; nothing a client sends can stop the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from netstack.counters import Counters

if TYPE_CHECKING:
    from olm.serving import DnsService

__all__ = [
    "MAX_REQUEST",
    "VERSION",
    "ControlError",
    "ControlServer",
    "Inspectable",
    "default_path",
    "open_control",
]

log = logging.getLogger("olm.control")

VERSION: Final = 1
#: The longest request line taken; a longer one is an error and ends the connection.
MAX_REQUEST: Final = 64 * 1024
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid (socket(7))


class ControlError(Exception):
    """A request that cannot be answered; ``code`` says what kind (``bad_request``...)."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


def default_path() -> str:
    """Where the control socket lives unless told: /run/olm as root, else the user's runtime dir."""
    if os.geteuid() == 0:
        return "/run/olm/olm.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return str(Path(runtime) / "olm" / "olm.sock")
    return f"/tmp/olm-{os.geteuid()}/olm.sock"


class Inspectable(Protocol):
    """What a daemon shows through the control socket (the Supervisor, or ``olm stack``).

    ``counters`` is the root of its counter tree, ``stack`` the userspace stack (None for
    ``olm serve``), ``service`` the DNS service (None for ``olm stack``), ``tracer`` the
    packet and query tracer (None: tracing not offered), ``kind`` the command it runs.
    """

    counters: Counters
    stack: Any
    service: DnsService | None
    tracer: Any
    kind: str


Command = Callable[[dict[str, Any]], Any]


class ControlServer:
    """Answers control requests about ``target`` on a Unix socket at ``path``."""

    def __init__(self, target: Inspectable, path: str) -> None:
        self.target = target
        self.path = path
        self.started = time.time()
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.counters = target.counters.child("control")
        self.commands: dict[str, Command] = {
            "hello": self._hello,
            "sockets": self._sockets,
            "counters": self._counters,
            "cache": self._cache,
            "cache.flush": self._cache_flush,
            "upstreams": self._upstreams,
            "lists": self._lists,
            "fakeip": self._fakeip,
            "views": self._views,
        }

    # -- the socket ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; a socket another live daemon holds, or an unusable path, is an OSError."""
        path = Path(self.path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_stale(path)
        # The socket is made with mode 0600 from the start: no moment where others may connect.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._connection, path=str(path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        """Stop listening, end the open connections and remove the socket file."""
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            if self._clients:
                await asyncio.wait(self._clients, timeout=2.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _allowed(self, writer: asyncio.StreamWriter) -> bool:
        """Whether the peer is root or the daemon's user (SO_PEERCRED, socket(7))."""
        sock = writer.get_extra_info("socket")
        if sock is None:
            return False
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        except OSError:
            return False
        _, uid, _ = _PEERCRED.unpack(creds)
        return uid in (0, os.geteuid())

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if not self._allowed(writer):
                self.counters.inc("refused")
                await _send(
                    writer, _error("permission denied: root or the daemon's user only", "denied")
                )
                return
            self.counters.inc("connections")
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than MAX_REQUEST
                self.counters.inc("bad_request")
                await _send(
                    writer, _error(f"request longer than {MAX_REQUEST} bytes", "bad_request")
                )
                return
            if not line:
                return
            if not line.strip():
                continue
            try:
                cmd, args = _parse(line)
            except ControlError as exc:
                self.counters.inc(exc.code)
                await _send(writer, _error(str(exc), exc.code))
                continue
            self.counters.inc("requests")
            if cmd == "trace":
                if not await self._trace(args, reader, writer):
                    return
                continue
            await _send(writer, self.answer(cmd, args))

    def answer(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """Return the response to one (non-streaming) request."""
        command = self.commands.get(cmd)
        if command is None:
            self.counters.inc("unknown")
            known = ", ".join(sorted([*self.commands, "trace"]))
            return _error(f"unknown command {cmd!r} (known: {known})", "unknown")
        try:
            return {"v": VERSION, "ok": True, "result": command(args)}
        except ControlError as exc:
            self.counters.inc(exc.code)
            return _error(str(exc), exc.code)
        except Exception as exc:  # a bug answering must not end the daemon
            self.counters.inc("internal_error")
            log.exception("control command %s failed", cmd)
            return _error(f"{cmd} failed: {exc.__class__.__name__}: {exc}", "failed")

    # -- trace ---------------------------------------------------------------------------

    async def _trace(
        self, args: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Stream one trace session; return whether the client is still there."""
        tracer = self.target.tracer
        if tracer is None:
            await _send(writer, _error("this daemon offers no tracing", "unsupported"))
            return True
        try:
            session = tracer.subscribe(args)
        except (ValueError, TypeError) as exc:
            self.counters.inc("bad_request")
            await _send(writer, _error(f"trace: {exc}", "bad_request"))
            return True
        self.counters.inc("traces")
        await _send(writer, {"v": VERSION, "ok": True, "tracing": True})
        # Whatever the client sends while tracing (or its leaving) ends the trace.
        left = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                get = asyncio.ensure_future(session.queue.get())
                done, _ = await asyncio.wait({get, left}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    return False
                item = get.result()
                if item is None:  # the session's count is reached
                    await _send(writer, {"v": VERSION, "ok": True, "end": True})
                    return True
                await _send(writer, {"v": VERSION, **item})
        finally:
            tracer.unsubscribe(session)
            left.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await left

    # -- commands ------------------------------------------------------------------------

    def _service(self) -> DnsService:
        service = self.target.service
        if service is None:
            raise ControlError("no DNS service here (olm stack)", "unsupported")
        return service

    def _hello(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": VERSION,
            "pid": os.getpid(),
            "daemon": self.target.kind,
            "uptime": round(time.time() - self.started, 3),
            "tracing": self.target.tracer is not None,
        }

    def _sockets(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        stack = self.target.stack
        if stack is None:
            raise ControlError(
                "olm serve answers on kernel sockets: see them with ss -tuanp", "unsupported"
            )
        rows: list[dict[str, Any]] = stack.sockets()
        return rows

    def _counters(self, args: dict[str, Any]) -> list[list[Any]]:
        prefix = args.get("prefix") or ""
        if not isinstance(prefix, str):
            raise ControlError("prefix must be a string", "bad_request")
        return [
            [name, value]
            for name, value in self.target.counters.items()
            if not prefix or name == prefix or name.startswith(prefix.rstrip(".") + ".")
        ]

    def _cache(self, args: dict[str, Any]) -> dict[str, Any]:
        service = self._service()
        cache = service.pipeline.cache
        limit = _limit(args, 20)
        now = service.pipeline.clock.now()
        settings = cache.settings
        entries = cache.entries()
        shown = (
            [
                {
                    "name": _key_name(entry.key),
                    "type": int.from_bytes(
                        entry.key[_name_end(entry.key) : _name_end(entry.key) + 2]
                    ),
                    "kind": entry.kind,
                    "ttl": round(entry.expires - now, 3),
                    "bytes": entry.size,
                }
                for entry in reversed(entries[-limit:])  # most recently used first
            ]
            if limit
            else []
        )
        return {
            "enabled": settings.enabled,
            "entries": len(cache),
            "bytes": cache.bytes,
            "max_entries": settings.size,
            "max_bytes": settings.max_bytes,
            "serve_stale": settings.serve_stale,
            "prefetch": settings.prefetch,
            "counters": service.counters.child("cache").snapshot(),
            "recent": shown,
        }

    def _cache_flush(self, args: dict[str, Any]) -> dict[str, Any]:
        from olm.dns.blocklist import wire_name

        service = self._service()
        name = args.get("name")
        if name is not None and not isinstance(name, str):
            raise ControlError("name must be a string", "bad_request")
        try:
            wire = wire_name(name) if name else None
        except ValueError as exc:
            raise ControlError(f"name {name!r}: {exc}", "bad_request") from None
        flushed = service.pipeline.cache.flush(wire)
        service.counters.child("cache").inc("flushed", flushed)
        log.info("cache flushed by the control socket: %d entries", flushed)
        return {"flushed": flushed}

    def _upstreams(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        service = self._service()
        groups = []
        for group in service.pipeline.groups:
            rows = []
            for transport, health in zip(group.transports, group.health, strict=True):
                snap: dict[str, Any] = dict(health.snapshot())
                snap["scheme"] = transport.upstream.scheme
                snap["failure_kinds"] = dict(health.failure_kinds)
                rows.append(snap)
            groups.append(
                {
                    "group": group.name,
                    "policy": str(group.policy),
                    "timeout": group.timeout,
                    "deadline": group.deadline,
                    "probing": group.probing,
                    "upstreams": rows,
                }
            )
        return groups

    def _lists(self, args: dict[str, Any]) -> dict[str, Any]:
        service = self._service()
        block = service.pipeline.block
        counters = service.counters.child("block")
        if block is None:
            return {"answer": None, "lists": [], "allow": 0, "blocked": 0}
        lists = block.lists
        return {
            "answer": block.mode,
            "lists": [
                {
                    "name": name,
                    "names": len(names),
                    "bytes": names.nbytes,
                    "blocked": counters.get(f"list.{name}"),
                }
                for name, names in lists.lists
            ],
            "allow": len(lists.allow),
            "blocked": counters.get("blocked"),
        }

    def _fakeip(self, args: dict[str, Any]) -> dict[str, Any]:
        service = self._service()
        pool = service.pipeline.fake_pool
        if pool is None:
            return {"enabled": False}
        limit = _limit(args, 20)
        mappings = pool.mappings()
        return {
            "enabled": True,
            "ipv4_range": str(pool.ipv4_network),
            "ipv6_range": str(pool.ipv6_network) if pool.ipv6_network else None,
            "size": pool.size,
            "used": len(pool),
            "state_file": str(pool.state_file) if pool.state_file else None,
            "recent": [
                {"name": name, "ipv4": v4, "ipv6": v6}
                for name, v4, v6 in reversed(mappings[-limit:] if limit else [])
            ],
        }

    def _views(self, args: dict[str, Any]) -> dict[str, Any]:
        from olm.dns.handlers.views import Views

        service = self._service()
        handler = _find(service.engine.chain, Views)
        counters = service.counters.child("views").snapshot()
        if handler is None:
            return {"views": [], "lines": [], "counters": counters}
        lines: dict[str, list[str]] = {}
        for network, label in handler.lines.prefixes:
            lines.setdefault(label, []).append(str(network))
        views = [
            {
                "name": view.name,
                "clients": [str(n) for n in view.networks],
                "group": view.group.name if view.group is not None else None,
                "upstreams": view.group.upstreams if view.group is not None else None,
                "blocklists": sorted(view.blocklists) if view.blocklists is not None else None,
            }
            for view in handler.views
        ]
        return {
            "views": views,
            "lines": [{"label": k, "prefixes": v} for k, v in sorted(lines.items())],
            "counters": counters,
        }


async def open_control(path: str, target: Inspectable, views: contextlib.AsyncExitStack) -> None:
    """Open the control socket at ``path`` ("auto": :func:`default_path`; "": none).

    A path held by another running daemon, or one that cannot be made, is a StartupError.
    """
    from olm.serving import StartupError

    if not path:
        return
    if path == "auto":
        path = default_path()
    server = ControlServer(target, path)
    try:
        await server.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(
            f"control socket {path}: {reason} (set --control PATH, or none)"
        ) from exc
    views.push_async_callback(server.close)
    log.info("control socket on %s", path)


def _remove_stale(path: Path) -> None:
    """Remove a socket left by a daemon that is gone; refuse one a live daemon holds."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise OSError(errno.EEXIST, "exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()
        return
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "in use by a running olm")


def _parse(line: bytes) -> tuple[str, dict[str, Any]]:
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(f"not JSON: {exc}", "bad_request") from None
    if not isinstance(request, dict):
        raise ControlError("a request is a JSON object", "bad_request")
    version = request.get("v", VERSION)
    if version != VERSION:
        raise ControlError(
            f"protocol version {version!r} not spoken (this is {VERSION})", "version"
        )
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        raise ControlError("'cmd' must be a string", "bad_request")
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise ControlError("'args' must be an object", "bad_request")
    return cmd, args


def _error(message: str, code: str) -> dict[str, Any]:
    return {"v": VERSION, "ok": False, "error": message, "code": code}


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n")
    await writer.drain()


def _limit(args: dict[str, Any], default: int) -> int:
    limit = args.get("limit", default)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ControlError("limit must be a non-negative integer", "bad_request")
    return limit


def _name_end(key: bytes) -> int:
    """Return the offset after the wire name that starts a cache key."""
    off = 0
    while off < len(key) and key[off]:
        off += key[off] + 1
    return off + 1


def _key_name(key: bytes) -> str:
    from olm.dns.blocklist import text_name

    return text_name(key[: _name_end(key)])


def _find(handler: Any, kind: type) -> Any:
    while handler is not None:
        if isinstance(handler, kind):
            return handler
        handler = getattr(handler, "next", None)
    return None
