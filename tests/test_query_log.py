"""The query log (``[query_log]``, ``--query-log``): its lines, prefixes, rotation, file mode.

In process: a DnsService with a fake upstream on 127.0.0.1 answers requests handed to its
engine with any client address, and the test reads the file. One test runs ``olm serve`` in a
network namespace and asks it with dig.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from dnslib import DNSLabel, DNSRecord

from netstack.clock import AsyncioClock
from netstack.counters import Counters
from olm.cli import _load, build_parser
from olm.config import load_settings
from olm.dns.observe import QueryTrace
from olm.dns.request import Request
from olm.querylog import FLUSH_AFTER, FLUSH_LINES, open_query_log
from olm.serving import DnsService, StartupError, Supervisor

from fakedns import answers_with, run, start_fake
from netns import NetNS, require_tool
from olmproc import OlmProcess
from test_kernel_dns import start_upstream

V4 = socket.inet_pton(socket.AF_INET, "192.0.2.77")


def query(name: str, qr: bool = False) -> bytes:
    record = DNSRecord.question(name)
    record.header.id = 0x4242
    if qr:
        record.header.qr = 1
    return bytes(record.pack())


def settings_file(tmp_path: Path, upstream: str, query_log: str) -> Path:
    """A TOML settings file: one upstream, one local record, and ``[query_log]``."""
    path = tmp_path / "olm.toml"
    path.write_text(
        f'upstreams = ["{upstream}"]\ntimeout = 2\ndeadline = 3\ncontrol = "none"\n'
        '[[records]]\nname = "local.test"\ntype = "A"\nrdata = "192.0.2.9"\n'
        f"[query_log]\n{query_log}\n"
    )
    return path


@contextlib.asynccontextmanager
async def logging_service(tmp_path: Path, query_log: str = "") -> AsyncIterator[DnsService]:
    """A DnsService (fake upstream answering 192.0.2.7) whose engine logs to tmp/q.jsonl."""
    _, up = await start_fake(answers_with("192.0.2.7"))
    config = settings_file(
        tmp_path, f"{up.host}:{up.port}", f'enabled = true\npath = "q.jsonl"\n{query_log}'
    )
    settings = load_settings(config_file=config)
    service = DnsService(settings, AsyncioClock(), Counters("dns"))
    async with contextlib.AsyncExitStack() as views:
        open_query_log(settings.query_log, service.engine, views)
        try:
            yield service
        finally:
            await service.stop()


async def ask(
    service: DnsService, name: str, client: bytes = V4, transport: str = "udp", qr: bool = False
) -> bytes | None:
    reply: Any = service.engine.handle(Request(query(name, qr), client, 5353, b"", transport))
    if reply is None or isinstance(reply, bytes):
        return reply
    result: bytes | None = await reply
    return result


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_forwarded_cached_local_and_dropped_queries_each_get_a_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with logging_service(tmp_path) as service:
            await ask(service, "www.example.com")
            await ask(service, "www.example.com", transport="tcp")
            await ask(service, "local.test")
            assert await ask(service, "dropped.example", qr=True) is None  # a response: dropped
            upstream = service.upstreams[0]
        forward, cached, local, dropped = lines(tmp_path / "q.jsonl")
        assert list(forward) == [
            "time",
            "client",
            "transport",
            "name",
            "type",
            "rcode",
            "answered_by",
            "upstream",
            "duration_ms",
            "reply_bytes",
        ]
        assert forward["time"].endswith("Z") and len(forward["time"]) == 24  # ...:SS.mmmZ
        assert forward["client"] == "192.0.2.77"  # the default prefixes keep the address
        assert forward["transport"] == "udp" and cached["transport"] == "tcp"
        assert forward["name"] == "www.example.com." and forward["type"] == "A"
        assert forward["rcode"] == "NOERROR"
        assert forward["answered_by"] == "forward" and forward["upstream"] == upstream
        assert isinstance(forward["duration_ms"], float) and forward["reply_bytes"] > 12
        assert cached["answered_by"] == "cache" and cached["upstream"] is None
        assert local["name"] == "local.test." and local["answered_by"] == "records"
        assert local["upstream"] is None and local["rcode"] == "NOERROR"
        assert dropped["name"] == "dropped.example."
        assert dropped["rcode"] is None and dropped["reply_bytes"] is None
        assert service.counters.get("query_log.lines") == 4

    with caplog.at_level(logging.INFO):
        run(main())
    # The daemon's log (INFO) never names a query: the names are in the query log only.
    assert "example" not in caplog.text and "local.test" not in caplog.text


def test_the_logs_traces_carry_no_events_unless_someone_traces(tmp_path: Path) -> None:
    """The query log asks only which handler and upstream answered: no per-handler events."""
    seen: list[QueryTrace | None] = []

    class Watcher:
        def __init__(self, detailed: bool) -> None:
            self.detailed = detailed

        def begin(self, request: Request) -> QueryTrace | bool:
            return QueryTrace() if self.detailed else False

        def finished(
            self, request: Request, reply: bytes | None, elapsed: float, trace: QueryTrace | None
        ) -> None:
            seen.append(trace)

    async def main() -> None:
        async with logging_service(tmp_path) as service:
            engine = service.engine
            plain = Watcher(detailed=False)
            engine.add_observer(plain)
            await ask(service, "www.example.com")
            engine.remove_observer(plain)
            detailed = Watcher(detailed=True)
            engine.add_observer(detailed)
            await ask(service, "www.example.org")
            engine.remove_observer(detailed)

    run(main())
    light, full = seen
    assert light is not None and not light.detail and light.events == []
    assert light.answered_by == "forward" and light.upstream is not None
    # With a tracer's trace (olm trace) the same query records each handler and try.
    assert full is not None and full.detail and full.answered_by == "forward"
    layers = [layer for _, layer, _ in full.events]
    assert "cache" in layers and "forward" in layers and "upstream" in layers
    assert [line["answered_by"] for line in lines(tmp_path / "q.jsonl")] == ["forward"] * 2


def test_clients_are_written_as_their_configured_networks(tmp_path: Path) -> None:
    clients = {
        "192.0.2.77": "192.0.2.0/24",
        "2001:db8:1:2:3::1": "2001:db8:1::/56",
        "::ffff:198.51.100.7": "198.51.100.0/24",  # a v4 client on a dual-stack socket
    }

    async def main() -> None:
        async with logging_service(tmp_path, "ipv4_prefix = 24\nipv6_prefix = 56") as service:
            for address in clients:
                packed = socket.inet_pton(
                    socket.AF_INET6 if ":" in address else socket.AF_INET, address
                )
                await ask(service, "local.test", packed)

    run(main())
    assert [line["client"] for line in lines(tmp_path / "q.jsonl")] == list(clients.values())


def test_rotates_at_max_bytes_keeping_backups_files_mode_0640(tmp_path: Path) -> None:
    async def main() -> None:
        async with logging_service(tmp_path, "max_bytes = 1000\nbackups = 2") as service:
            for _ in range(40):  # ~230 bytes a line: 4 lines a file, ~10 rotations
                await ask(service, "local.test")

    with umask(0o077):  # the files are 0640 whatever the umask
        run(main())
    files = sorted(p.name for p in tmp_path.glob("q.jsonl*"))
    assert files == ["q.jsonl", "q.jsonl.1", "q.jsonl.2"]
    for name in files:
        path = tmp_path / name
        assert 0 < path.stat().st_size < 1000
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, name
        assert all(line["name"] == "local.test." for line in lines(path))


def test_no_backups_empties_the_full_file(tmp_path: Path) -> None:
    async def main() -> None:
        async with logging_service(tmp_path, "max_bytes = 1000\nbackups = 0") as service:
            for _ in range(20):
                await ask(service, "local.test")

    run(main())
    assert [p.name for p in tmp_path.glob("q.jsonl*")] == ["q.jsonl"]
    assert 0 < (tmp_path / "q.jsonl").stat().st_size < 1000


def test_a_failing_write_is_counted_and_warned_once_without_the_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> DnsService:
        _, up = await start_fake(answers_with("192.0.2.7"))
        config = settings_file(tmp_path, f"{up.host}:{up.port}", 'enabled = true\npath = "x"')
        settings = load_settings(config_file=config)
        settings = replace(settings, query_log=replace(settings.query_log, path="/dev/full"))
        service = DnsService(settings, AsyncioClock(), Counters("dns"))
        async with contextlib.AsyncExitStack() as views:
            open_query_log(settings.query_log, service.engine, views)
            for _ in range(3):
                assert await ask(service, "local.test") is not None  # the client is answered
        await service.stop()
        return service

    with caplog.at_level(logging.INFO):
        service = run(main())
    assert service.counters.get("query_log.write_failed") >= 3
    assert service.counters.get("dns.observer_error") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "query log /dev/full: cannot write: No space left on device (further failures are counted)"
    ]
    assert "local.test" not in caplog.text


def test_the_supervisor_opens_the_log_only_when_enabled(tmp_path: Path) -> None:
    async def main(enabled: bool) -> list[Any]:
        _, up = await start_fake(answers_with("192.0.2.7"))
        path = tmp_path / "logs" / "q.jsonl"  # the folder is made when missing
        on = "true" if enabled else "false"
        config = settings_file(tmp_path, f"{up.host}:{up.port}", f'enabled = {on}\npath = "{path}"')
        service = DnsService(load_settings(config_file=config), AsyncioClock(), Counters("dns"))
        async with contextlib.AsyncExitStack() as views:
            await Supervisor()._open_views(service, views)
            observers = list(service.engine.observers)
            await ask(service, "local.test")
        assert service.engine.observers == []  # closing the views detaches it
        await service.stop()
        return observers

    assert run(main(enabled=False)) == []
    assert not (tmp_path / "logs").exists()
    assert len(run(main(enabled=True))) == 1
    path = tmp_path / "logs" / "q.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [line["name"] for line in lines(path)] == ["local.test."]


@pytest.mark.parametrize("where", ["file/q.jsonl", "folder"])
def test_an_unwritable_path_is_a_startup_error_naming_it(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("a file, not a folder\n")
    (tmp_path / "folder").mkdir()
    path = tmp_path / where

    async def main() -> None:
        _, up = await start_fake(answers_with("192.0.2.7"))
        config = settings_file(tmp_path, f"{up.host}:{up.port}", f'enabled = true\npath = "{path}"')
        settings = load_settings(config_file=config)
        service = DnsService(settings, AsyncioClock(), Counters("dns"))
        try:
            async with contextlib.AsyncExitStack() as views:
                open_query_log(settings.query_log, service.engine, views)
        finally:
            await service.stop()
        assert service.engine.observers == []

    with pytest.raises(StartupError) as caught:
        run(main())
    assert caught.value.status == 2
    assert str(caught.value).startswith(f"query log {path}: ")
    assert "directory" in str(caught.value)  # "Not a directory", "Is a directory"


def test_settings_from_toml_environment_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings_file(
        tmp_path, "127.0.0.1:5300", 'enabled = true\npath = "q.jsonl"\nipv6_prefix = 48'
    )
    from_file = load_settings(config_file=config).query_log
    assert from_file.enabled and from_file.path == str(tmp_path / "q.jsonl")
    assert from_file.ipv6_prefix == 48 and from_file.backups == 5
    environ = {"OLM_QUERY_LOG_ENABLED": "true", "OLM_QUERY_LOG_BACKUPS": "3"}
    from_env = load_settings(environ=environ).query_log
    assert from_env.enabled and from_env.backups == 3

    for name in [n for n in os.environ if n.startswith(("OLM_", "DOTPROXY_"))]:
        monkeypatch.delenv(name)
    parser = build_parser()
    default, _ = _load(parser.parse_args(["serve"]), serve=True)
    assert not default.query_log.enabled
    args = parser.parse_args(
        [
            "serve",
            "--query-log",
            "/tmp/olm-q.jsonl",
            "--query-log-max-bytes",
            "5000",
            "--query-log-backups",
            "2",
            "--query-log-ipv4-prefix",
            "24",
            "--query-log-ipv6-prefix",
            "64",
        ]
    )
    flags, _ = _load(args, serve=True)
    q = flags.query_log
    assert (q.enabled, q.path, q.max_bytes, q.backups) == (True, "/tmp/olm-q.jsonl", 5000, 2)
    assert (q.ipv4_prefix, q.ipv6_prefix) == (24, 64)
    # The flags of the table alone leave the log off.
    only, _ = _load(parser.parse_args(["up", "--query-log-backups", "1"]), serve=False)
    assert not only.query_log.enabled and only.query_log.backups == 1


def test_olm_serve_logs_a_dig_in_a_namespace(
    netns: NetNS, olm: list[OlmProcess], tmp_path: Path
) -> None:
    require_tool("dig")
    start_upstream(netns, 5300)
    path = tmp_path / "q.jsonl"
    proc = OlmProcess(
        netns,
        [
            "serve",
            "--listen",
            "127.0.0.1:5353",
            "--upstream",
            "127.0.0.1:5300",
            "--query-log",
            str(path),
            "--control",
            "none",
        ],
    )
    olm.append(proc)
    done = netns.run(
        ["dig", "+time=3", "+tries=1", "+short", "-p", "5353", "@127.0.0.1", "host.example.test"],
        timeout=30,
    )
    assert done.stdout.strip()
    code, _, err = proc.stop()
    assert code == 0
    (line,) = lines(path)
    assert line["name"] == "host.example.test." and line["type"] == "A"
    assert line["client"] == "127.0.0.1" and line["transport"] == "udp"
    assert line["rcode"] == "NOERROR" and line["answered_by"] == "forward"
    assert "5300" in line["upstream"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert "host.example.test" not in err  # the daemon's own log (INFO) holds no names


def test_lines_wait_at_most_the_flush_interval_and_a_full_batch_is_written_at_once(
    tmp_path: Path,
) -> None:
    """Lines are written together, but never later than FLUSH_AFTER after their query."""
    path = tmp_path / "q.jsonl"

    def written() -> int:
        return len(path.read_text().splitlines())

    async def main() -> None:
        async with logging_service(tmp_path) as service:
            await ask(service, "local.test")
            assert written() == 0  # waiting for its batch
            await asyncio.sleep(FLUSH_AFTER + 0.3)
            assert written() == 1  # the timer wrote it, the daemon still running
            for _ in range(FLUSH_LINES):
                await ask(service, "local.test")
            assert written() == 1 + FLUSH_LINES  # a full batch does not wait for the timer
            await ask(service, "local.test")
        assert written() == 2 + FLUSH_LINES  # closing writes what waits

    run(main())


def test_any_name_makes_a_line_of_valid_json(tmp_path: Path) -> None:
    """Quotes, backslashes, control and non-ASCII bytes in labels are escaped, not written raw."""
    labels = [b'say"hi', b"back\\slash", b"tab\there", b"\xc3\xa9t\xc3\xa9", b"\xff\x00", b"test"]
    record = DNSRecord.question("x.test")
    record.q.qname = DNSLabel(labels)
    wire = bytes(record.pack())

    async def main() -> str:
        async with logging_service(tmp_path) as service:
            request = Request(wire, V4, 5353, b"", "udp")
            reply: Any = service.engine.handle(request)
            if reply is not None and not isinstance(reply, bytes):
                await reply
            return request.name

    name = run(main())
    (line,) = lines(tmp_path / "q.jsonl")  # json.loads of each line: all are valid JSON
    assert line["name"] == name and '"' in name and "\\" in name
    assert (tmp_path / "q.jsonl").read_bytes().isascii()
