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
decades, so there is no rotation code of our own to get wrong, and no dependency. It sits on a
logger of its own that belongs to no hierarchy and does not propagate, so the lines never reach
the daemon's stderr, whatever logging configuration is in force. Each line is written and
flushed from the event loop: a line is ~250 bytes and a write to the page cache costs
microseconds, so no queue or writer thread is needed. New files (the first one and every file
after a rotation) are created mode 0640 whatever the umask. A write that fails is counted
(``dns.query_log.write_failed``) and warned about once, without the line.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import os
import sys
import time
from collections.abc import Callable
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

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """Whether the line would fill the file (the stdlib's test, for less).

        The stdlib stats the file twice and seeks for every line; this file is in append
        mode, so the stream's position is its size already.
        """
        stream = self.stream
        if stream is None:
            stream = self.stream = self._open()
        size = stream.tell()
        return size > 0 and 0 < self.maxBytes <= size + len(record.msg) + 1  # never one empty

    def doRollover(self) -> None:
        """Rotate as the stdlib does; with no backups, empty the file instead."""
        if self.backupCount or self.stream is None:
            super().doRollover()
            return
        self.stream.seek(0)
        self.stream.truncate()

    def handleError(self, record: logging.LogRecord) -> None:
        """Count a failed write; warn once, naming the file and the error but not the line."""
        self.counters.inc("write_failed")
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
        # A logger of no hierarchy: getLogger() cannot reach it, nor a logging config change.
        self.logger = logging.Logger("olm.querylog.lines", logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self.handler)
        self._client = _client_text(settings.ipv4_prefix, settings.ipv6_prefix)
        self._engine: Engine | None = None

    def begin(self, request: Request) -> bool:
        """Ask for a trace: it says which handler and which upstream answered."""
        return True

    def finished(
        self, request: Request, reply: bytes | None, elapsed: float, trace: QueryTrace | None
    ) -> None:
        """Write the query's line."""
        arrived = time.time() - elapsed
        millis = int(arrived * 1000) % 1000
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(arrived)) + f".{millis:03d}Z"
        walked = request.nend != 0
        qtype = request.qtype
        rcode = reply[3] & 0x0F if reply is not None and len(reply) >= 4 else None
        line = {
            "time": stamp,
            "client": self._client(request.client),
            "transport": request.transport,
            "name": request.name if walked else None,
            "type": _TYPES.get(qtype, qtype) if walked else None,
            "rcode": None if rcode is None else _RCODES.get(rcode, rcode),
            "answered_by": (trace.answered_by or None) if trace is not None else None,
            "upstream": trace.upstream if trace is not None else None,
            "duration_ms": round(elapsed * 1000, 3),
            "reply_bytes": None if reply is None else len(reply),
        }
        self.logger.info(json.dumps(line, separators=(",", ":")))
        self.counters.inc("lines")

    def attach(self, engine: Engine) -> None:
        """Start logging the queries of ``engine``."""
        self._engine = engine
        engine.add_observer(self)

    def close(self) -> None:
        """Stop logging and close the file."""
        if self._engine is not None:
            self._engine.remove_observer(self)
            self._engine = None
        self.logger.removeHandler(self.handler)
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
