"""The query log (``[query_log]``, ``--query-log FILE``): one JSON line per answered query.

Off by default: query names say what the people behind the clients do, so they are written
only where the operator asks, never to the daemon's own log. A line holds::

    {"time":"2025-01-31T12:00:00.123Z","client":"192.0.2.0/24","transport":"udp",
     "name":"example.com.","type":"A","rcode":"NOERROR","answered_by":"forward",
     "upstream":"192.0.2.53:53","duration_ms":1.234,"reply_bytes":56}

(on one line). ``time`` is when the query arrived (RFC 3339, UTC, milliseconds); ``client`` is
the client's address, or its network when ``ipv4_prefix``/``ipv6_prefix`` are shorter than the
address (an IPv4-mapped IPv6 client counts as IPv4); ``answered_by`` is the handler that
answered (``cache``, ``records``, ``block``, ``forward``...), ``upstream`` the resolver that
answered (null: none did). A query dropped without a reply has ``rcode`` and ``reply_bytes``
null. The RCODE is the header's four bits (an extended RCODE in the OPT record is not read).

The file is written through :class:`logging.handlers.RotatingFileHandler`: the standard
library's size rotation (``queries.jsonl.1`` ... ``.N``), maintained with Python and used for
decades, so there is no rotation code of our own to get wrong, and no dependency. The handler
is attached to no logger, so the lines never reach the daemon's stderr, whatever logging
configuration is in force. Lines are gathered on the event loop and written together, at
most :data:`FLUSH_AFTER` seconds after their query or as soon as :data:`FLUSH_LINES` wait (a
logging call and a write per query cost three times the CPU of the cache hit it logged,
docs/performance.md); the file is still rotated line by line, and closing the log writes what
waits, so only a crash loses lines, at most that interval's. New files (the first one and
every file after a rotation) are created mode 0640 whatever the umask. A write that fails is
counted (``dns.query_log.write_failed``) and warned about once, without the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from logging.handlers import RotatingFileHandler
from typing import TYPE_CHECKING, Final

from dnslib import QTYPE, RCODE

from netstack.counters import Counters
from olm.config import QueryLogSettings

if TYPE_CHECKING:
    from olm.dns.engine import Engine
    from olm.dns.observe import QueryTrace
    from olm.dns.request import Request

__all__ = ["QueryLog", "open_query_log"]

log = logging.getLogger("olm.querylog")

#: Mode of the log files: the daemon's user writes, its group (adm, say) reads, others nothing.
FILE_MODE: Final = 0o640
#: Lines wait at most this long (seconds) before they are written ...
FLUSH_AFTER: Final = 0.5
#: ... or until this many wait.
FLUSH_LINES: Final = 256
_TYPES: Final[dict[int, str]] = dict(QTYPE.forward)
_RCODES: Final[dict[int, str]] = dict(RCODE.forward)


def _create(path: str) -> None:
    """Create ``path`` with :data:`FILE_MODE` unless it exists; check it can be appended to."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        fd = os.open(path, flags)  # an existing file keeps its mode
    else:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken group read away
    os.close(fd)


def _rotate(source: str, dest: str) -> None:
    """Rename the full file, and create its successor private before the handler opens it."""
    if os.path.exists(source):
        os.rename(source, dest)
    _create(source)


class _Handler(RotatingFileHandler):
    """A RotatingFileHandler that keeps files private and never echoes a line on failure.

    With ``backups`` 0 the full file is emptied (the stdlib handler would let it grow).
    """

    def __init__(self, settings: QueryLogSettings, counters: Counters) -> None:
        super().__init__(
            settings.path,
            maxBytes=settings.max_bytes,
            backupCount=settings.backups,
            encoding="utf-8",
        )
        self.rotator = _rotate
        if not os.path.isfile(self.baseFilename):  # /dev/stdout, a FIFO: never rotated
            self.maxBytes = 0
        self.setFormatter(logging.Formatter("%(message)s"))
        self.counters = counters
        self._warned = False

    def write_lines(self, lines: list[str]) -> None:
        """Write ``lines``, rotating before any that would fill the file, then flush once.

        The file is in append mode, so the stream's position is its size; the lines are ASCII
        (JSON escapes the rest), so their length is their size in bytes. A line never goes to
        a rotation of its own: an empty file takes it whatever its length.
        """
        self.acquire()
        try:
            stream = self.stream
            if stream is None:
                stream = self.stream = self._open()
            size = stream.tell()
            limit = self.maxBytes
            for line in lines:
                length = len(line) + 1
                if size > 0 and 0 < limit <= size + length:
                    self.doRollover()
                    stream = self.stream
                    if stream is None:
                        stream = self.stream = self._open()
                    size = stream.tell()
                stream.write(line + "\n")
                size += length
            stream.flush()
        except Exception:
            self._failed(len(lines))  # what was written before the error is unknown: all
        finally:
            self.release()

    def doRollover(self) -> None:
        """Rotate as the stdlib does; with no backups, empty the file instead."""
        if self.backupCount or self.stream is None:
            super().doRollover()
            return
        self.stream.seek(0)
        self.stream.truncate()

    def handleError(self, record: logging.LogRecord) -> None:
        """Count a failed write; warn once, naming the file and the error but not the line."""
        self._failed(1)

    def _failed(self, lines: int) -> None:
        self.counters.inc("write_failed", lines)
        if self._warned:
            return
        self._warned = True
        exc = sys.exc_info()[1]
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        log.warning(
            "query log %s: cannot write: %s (further failures are counted)",
            self.baseFilename,
            reason,
        )


def _json(value: str | int | None) -> str:
    """Return ``value`` as JSON: a string escaped (ASCII only), a number, or null."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    return str(value)


def _client_text(ipv4_prefix: int, ipv6_prefix: int) -> Callable[[bytes], str | None]:
    """Return a function writing a packed client address as the configured address or network."""

    @functools.lru_cache(maxsize=4096)
    def text(packed: bytes) -> str | None:
        if len(packed) not in (4, 16):
            return None
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(packed)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
        if prefix == address.max_prefixlen:
            return str(address)
        return str(ipaddress.ip_network((address, prefix), strict=False))

    return text


class QueryLog:
    """The observer writing the lines (see the module's docstring); :meth:`close` detaches it."""

    def __init__(self, settings: QueryLogSettings, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters
        self.handler = _Handler(settings, counters)
        self._client = _client_text(settings.ipv4_prefix, settings.ipv6_prefix)
        self._engine: Engine | None = None
        self._pending: list[str] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._second = -1  # the whole second _stamp was made for, and its text
        self._stamp = ""

    def begin(self, request: Request) -> bool:
        """Ask for a trace: it says which handler and which upstream answered."""
        return True

    def finished(
        self, request: Request, reply: bytes | None, elapsed: float, trace: QueryTrace | None
    ) -> None:
        """Write the query's line."""
        arrived = time.time() - elapsed
        second = int(arrived)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self._stamp}.{int(arrived * 1000) % 1000:03d}Z"
        walked = request.nend != 0
        qtype = request.qtype
        rcode = reply[3] & 0x0F if reply is not None and len(reply) >= 4 else None
        # The line is put together by hand (json.dumps of a dict cost as much as the rest of
        # the line); every string goes through JSON's own escaping.
        pending = self._pending
        pending.append(
            f'{{"time":"{stamp}","client":{_json(self._client(request.client))},'
            f'"transport":"{request.transport}",'
            f'"name":{_json(request.name if walked else None)},'
            f'"type":{_json(_TYPES.get(qtype, qtype) if walked else None)},'
            f'"rcode":{_json(None if rcode is None else _RCODES.get(rcode, rcode))},'
            f'"answered_by":{_json((trace.answered_by or None) if trace is not None else None)},'
            f'"upstream":{_json(trace.upstream if trace is not None else None)},'
            f'"duration_ms":{round(elapsed * 1000, 3)!r},'
            f'"reply_bytes":{_json(None if reply is None else len(reply))}}}'
        )
        self.counters.inc("lines")
        if len(pending) >= FLUSH_LINES:
            self.flush()
        elif self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): write now
                self.flush()
                return
            self._flush_timer = loop.call_later(FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        """Write the lines that wait."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._pending:
            lines, self._pending = self._pending, []
            self.handler.write_lines(lines)

    def attach(self, engine: Engine) -> None:
        """Start logging the queries of ``engine``."""
        self._engine = engine
        engine.add_observer(self)

    def close(self) -> None:
        """Stop logging and close the file."""
        if self._engine is not None:
            self._engine.remove_observer(self)
            self._engine = None
        self.flush()
        try:
            self.handler.close()
        except OSError:  # the last lines could not be written either (already warned)
            self.counters.inc("write_failed")


def open_query_log(
    settings: QueryLogSettings, engine: Engine, views: contextlib.AsyncExitStack
) -> QueryLog:
    """Open the query log at ``settings.path`` and attach it to ``engine`` until ``views`` closes.

    The folder is created if missing. A path that cannot be written is a StartupError (exit
    status 2) naming it.
    """
    from olm.serving import StartupError

    path = settings.path
    try:
        folder = os.path.dirname(path)
        if folder:
            with contextlib.suppress(FileExistsError):  # a file there: _create says so
                os.makedirs(folder, mode=0o750, exist_ok=True)
        _create(path)
        querylog = QueryLog(settings, engine.counters.child("query_log"))
    except OSError as exc:
        raise StartupError(f"query log {path}: {exc.strerror or exc}", status=2) from exc
    querylog.attach(engine)
    views.callback(querylog.close)
    log.info("query log: %s", path)
    return querylog
