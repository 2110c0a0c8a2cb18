"""The control socket and the tracer in one process: no root, no TUN.

The daemon side is a Service on 10.30.30.30 behind an in-memory channel (as in
tests/test_olm_service.py), its control socket in a temporary folder; the client side is the
`olm` command's own client (olm.controlclient) or a raw socket for malformed requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from dnslib import DNSRecord
from test_dns_proxy import answers_with, client_query, start_fake
from test_olm_service import _service

import olm.trace as trace_module
from netstack.adapters import UDPSocket
from netstack.counters import Counters
from netstack.header.ipv4 import build_datagram
from netstack.header.ipv6 import IPv6Header
from netstack.header.udp import build_udp
from olm.control import ControlServer
from olm.controlclient import ClientError, Connection
from olm.dns.engine import Engine
from olm.trace import Tracer


class Target:
    """What a daemon shows (olm.control.Inspectable), around a Service."""

    kind = "up"

    def __init__(self, service: Any, tracer: Any = None) -> None:
        self.service = service
        self.stack = getattr(service, "stack", None)
        self.counters = self.stack.counters if self.stack is not None else Counters()
        self.tracer = tracer


async def ask(path: str, *lines: bytes) -> list[dict[str, Any]]:
    """Send raw request lines on one connection; return one parsed response per line."""
    reader, writer = await asyncio.open_unix_connection(path)
    answers = []
    for line in lines:
        writer.write(line)
        await writer.drain()
        answers.append(json.loads(await asyncio.wait_for(reader.readline(), 5)))
    writer.close()
    return answers


def test_requests_answers_and_errors(tmp_path: Path) -> None:
    async def main() -> None:
        _, up = await start_fake(answers_with("192.0.2.7"))
        service, client = await _service(f"{up.host}:{up.port}")
        server = ControlServer(Target(service), str(tmp_path / "run" / "olm.sock"))
        await server.start()
        try:
            path = server.path
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            sock = UDPSocket(client)
            sock.connect(("10.30.30.30", 53))
            for _ in range(2):
                sock.send(client_query("www.example.com"))
                await asyncio.wait_for(sock.recv(), 2)
            answers = await ask(
                path,
                b'{"v": 1, "cmd": "counters", "args": {"prefix": "dns.cache"}}\n',
                b'{"cmd": "cache", "args": {"limit": 5}}\n',
                b'{"cmd": "upstreams"}\n',
                b'{"cmd": "sockets"}\n',
                b'{"cmd": "cache.flush", "args": {"name": "www.example.com"}}\n',
                b'{"cmd": "cache"}\n',
                b"{broken\n",
                b'{"cmd": "cache", "args": {"limit": "all"}}\n',
                b'{"cmd": "hello"}\n',
            )
            counters = dict(answers[0]["result"])
            assert counters == {"dns.cache.hit": 1, "dns.cache.miss": 1, "dns.cache.insert": 1}
            cache = answers[1]["result"]
            assert cache["entries"] == 1
            assert cache["recent"][0]["name"] == "www.example.com."
            assert cache["recent"][0]["type"] == 1 and 0 < cache["recent"][0]["ttl"] <= 60
            group = answers[2]["result"][0]
            assert group["upstreams"][0]["answers"] == 1 and group["upstreams"][0]["down"] is False
            sockets = answers[3]["result"]
            assert {(r["proto"], r["local"]) for r in sockets} >= {
                ("udp", "10.30.30.30:53"),
                ("tcp", "10.30.30.30:53"),
            }
            assert answers[4]["result"] == {"flushed": 1}
            assert answers[5]["result"]["entries"] == 0
            assert answers[6]["ok"] is False and answers[6]["code"] == "bad_request"
            assert answers[7]["code"] == "bad_request" and "limit" in answers[7]["error"]
            assert answers[8]["result"]["pid"] == os.getpid()
        finally:
            await server.close()
            await service.stop()
        assert not os.path.exists(server.path)

    asyncio.run(main())


def test_a_socket_in_use_is_refused_and_a_stale_one_replaced(tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "olm.sock")
        first = ControlServer(Target(None), path)
        await first.start()
        try:
            second = ControlServer(Target(None), path)
            with pytest.raises(OSError, match="in use by a running olm"):
                await second.start()
        finally:
            await first.close()
        # A socket file left by a daemon that died (nobody listening) is taken over.
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        third = ControlServer(Target(None), path)
        await third.start()
        answers = await ask(path, b'{"cmd": "sockets"}\n', b'{"cmd": "cache"}\n')
        assert answers[0]["code"] == "unsupported" and "ss -tuanp" in answers[0]["error"]
        assert answers[1]["code"] == "unsupported"
        await third.close()
        (tmp_path / "plain").write_text("not a socket")
        with pytest.raises(OSError, match="not a socket"):
            await ControlServer(Target(None), str(tmp_path / "plain")).start()

    asyncio.run(main())


def traced_service_query(
    names: list[str], trace_args: dict[str, Any]
) -> tuple[list[dict[str, Any]], Engine, Any]:
    """Trace ``names`` asked in turn over the in-memory TUN; return the events and the engine."""

    async def main() -> tuple[list[dict[str, Any]], Engine, Any]:
        _, up = await start_fake(answers_with("192.0.2.7"))
        service, client = await _service(f"{up.host}:{up.port}")
        stack = service.stack
        nic = stack.nics["tun"]
        link = nic.link
        tracer = Tracer(stack.counters, engines=[service.engine], stack=stack, link=link)
        tracer.dispatcher = nic
        tracer.nic = nic
        session = tracer.subscribe(trace_args)
        assert "handle" in vars(service.engine) and nic.link is not link
        sock = UDPSocket(client)
        sock.connect(("10.30.30.30", 53))
        for name in names:
            sock.send(client_query(name))
            DNSRecord.parse(await asyncio.wait_for(sock.recv(), 2))
        events = []
        while not session.queue.empty():
            item = session.queue.get_nowait()
            if item is None:
                break
            events.append(item)
        tracer.unsubscribe(session)
        plain = ("handle" not in vars(service.engine), nic.link is link)
        await service.stop()
        return events, service.engine, plain

    return asyncio.run(main())


def test_trace_follows_one_query_through_every_layer_in_order() -> None:
    events, engine, plain = traced_service_query(
        ["other.example.com", "www.example.com", "www.example.com"],
        {"name": "www.example.com", "count": 2},
    )
    lines = [(e["event"]["trace"], e["event"]["layer"], e["event"]["text"]) for e in events]
    traces = sorted({t for t, _, _ in lines})
    assert len(traces) == 2  # the other name is not shown
    first = [(layer, text) for t, layer, text in lines if t == traces[0]]
    second = [(layer, text) for t, layer, text in lines if t == traces[1]]
    order = [layer for layer, _ in first]
    # In through the link, the stack, the handlers, an upstream try, and back out.
    for a, b in [
        ("tun", "ipv4"),
        ("ipv4", "udp"),
        ("udp", "stack"),
        ("stack", "dns"),
        ("dns", "sanitise"),
        ("cache", "forward"),
        ("forward", "upstream"),
    ]:
        assert order.index(a) < order.index(b), (a, b, order)
    assert first[-1] == ("trace", "end")
    assert ("cache", "waits miss+1") in first
    assert any(layer == "upstream" and "answered NOERROR" in t for layer, t in first)
    assert any(t.startswith("reply NOERROR") and "answered by forward" in t for _, t in first)
    # The repeat is a cache hit: no upstream, answered by the cache.
    assert ("cache", "answer rcode 0 hit+1") in second
    assert not any(layer == "upstream" for layer, _ in second)
    assert all(e["event"]["us"] >= 0 for e in events)
    # Microseconds grow within a trace.
    stamps = [e["event"]["us"] for e in events if e["event"]["trace"] == traces[1]]
    assert stamps == sorted(stamps)
    # The last session gone, the plain paths are back.
    assert plain == (True, True)
    assert engine.observers == []


def test_a_session_filters_by_client_and_proto() -> None:
    events, _, _ = traced_service_query(["www.example.com"], {"client": "192.0.2.0/24"})
    assert events == []
    events, _, _ = traced_service_query(["www.example.com"], {"proto": "tcp"})
    assert events == []
    events, _, _ = traced_service_query(["www.example.com"], {"client": "10.30.30.0/24"})
    assert events and events[-1]["event"]["text"] == "end"


def test_a_refusal_read_after_a_broken_pipe_is_reported_not_swallowed(tmp_path: Path) -> None:
    """The daemon refuses at once and closes; the client's request then meets a closed socket.

    The client must still read and report the refusal (exit 2), and closing the connection
    must not trade it for the BrokenPipeError of its unsent request.
    """
    path = str(tmp_path / "olm.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        conn = Connection(path)
        peer, _ = listener.accept()
        peer.sendall(b'{"ok": false, "error": "permission denied: root only", "code": "denied"}\n')
        peer.close()  # the request is not read: writing it now fails with EPIPE
        with pytest.raises(ClientError) as refused, conn:
            conn.call("counters")
    assert refused.value.status == 2 and "permission denied" in str(refused.value)


def test_a_query_no_session_wants_is_only_peeked_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forgotten ``olm trace --name X`` reads each query's name and nothing more."""
    decoded: list[bytes] = []
    full = trace_module._decode

    def counting(packet: bytes, outbound: bool = False) -> Any:
        decoded.append(packet)
        return full(packet, outbound)

    monkeypatch.setattr(trace_module, "_decode", counting)
    events, _, _ = traced_service_query(["www.example.com"], {"name": "other.test"})
    assert events == [] and decoded == []
    # The name the session wants still gets the whole trace, in and out.
    events, _, _ = traced_service_query(["a.other.test"], {"name": "other.test"})
    assert events and events[-1]["event"]["text"] == "end" and len(decoded) == 2


def test_the_peek_reads_the_question_name_and_client_or_declines() -> None:
    v4, v6 = bytes([192, 0, 2, 1]), bytes.fromhex("20010db8" + "00" * 11 + "01")
    service4, service6 = bytes([10, 30, 30, 30]), bytes.fromhex("fd300030003000" + "00" * 8 + "30")
    query = client_query("WWW.Example.com")

    def udp4(port: int, payload: bytes) -> bytes:
        return build_datagram(v4, service4, 17, build_udp(v4, service4, 5353, port, payload))

    def udp6(payload: bytes) -> bytes:
        datagram = build_udp(v6, service6, 5353, 53, payload)
        return IPv6Header(v6, service6, 17, payload_length=len(datagram)).pack(datagram)

    assert trace_module._peek_udp_query(udp4(53, query)) == ("WWW.Example.com.", v4)
    assert trace_module._peek_udp_query(udp6(query)) == ("WWW.Example.com.", v6)
    assert trace_module._peek_udp_query(udp4(5300, query)) is None  # not to port 53
    odd = bytes(DNSRecord.question("we\\.ird.example").pack())  # a backslash or dot in a label
    assert trace_module._peek_udp_query(udp4(53, odd)) is None
    assert trace_module._peek_udp_query(udp4(53, query[:20])) is None  # cut short
    tcp = build_datagram(v4, service4, 6, bytes(20))
    assert trace_module._peek_udp_query(tcp) is None
