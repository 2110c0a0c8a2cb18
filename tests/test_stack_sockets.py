"""Socket introspection: ``Stack.sockets()``, the endpoints' ``info()`` and their text forms.

Two stacks joined by a wire under a ManualClock (tests/test_tcp_harness.py), or one stack on a
channel link (tests/stackutil.py). Every figure a row reports is checked against the endpoint
it describes or against what the test made happen on the wire.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from netstack.header.seqnum import SEQ_MASK
from netstack.transport.tcp import State, TCPConfig, TCPEndpoint
from netstack.transport.udp import UDPEndpoint
from olm.inspect_format import format_counters, format_sockets
from tests.stackutil import a, make_stack
from tests.test_tcp_harness import A4, B4, Pair

MSS4 = 1500 - 20 - 20 - 12  # IPv4 and TCP headers, and the timestamps option (RFC 7323)
MSS6 = 1500 - 40 - 20 - 12


def _state(ep: TCPEndpoint) -> State:
    """Read the state afresh (keeps mypy from narrowing across calls that change it)."""
    return ep.state


def _only(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of JSON's own types only."""
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


# -- TCP listeners and handshakes --------------------------------------------------------------


def test_listener_shows_listen_backlog_half_open_and_accept_queue() -> None:
    pair = Pair()
    listener = pair.listen(80, backlog=16)
    assert pair.b.sockets() == [
        {
            "proto": "tcp",
            "state": "LISTEN",
            "local": f"{B4}:80",
            "peer": "*:*",
            "recv_q": 0,
            "send_q": 16,
            "backlog": 16,
            "half_open": 0,
        }
    ]
    client = pair.connect(80)
    syn_sent = _only(pair.a.sockets())
    assert syn_sent["state"] == "SYN-SENT" and syn_sent["peer"] == f"{B4}:80"
    assert syn_sent["wscale"] is None  # nothing negotiated before the SYN-ACK
    assert syn_sent["timers"] == {"rto": pytest.approx(1000.0)}  # initial RTO, RFC 6298 2.1
    assert syn_sent["bytes_sent"] == syn_sent["bytes_acked"] == syn_sent["bytes_received"] == 0

    pair.wire.pump(max_packets=1)  # only the SYN crosses
    rows = pair.b.sockets()
    assert [r["state"] for r in rows] == ["LISTEN", "SYN-RECV"]  # peer *:* sorts first
    listen, half = rows
    assert listen["half_open"] == 1 and listen["recv_q"] == 0
    assert half["local"] == f"{B4}:80" and half["peer"] == syn_sent["local"]
    assert half["irs"] == client.iss and half["rcv_nxt"] == (client.iss + 1) & SEQ_MASK
    assert set(half["timers"]) == {"rto"}  # the SYN-ACK's retransmission timer

    assert pair.run(lambda: _state(client) is State.ESTABLISHED)
    rows = pair.b.sockets()
    listen = next(r for r in rows if r["state"] == "LISTEN")
    assert listen["recv_q"] == 1 and listen["half_open"] == 0
    assert listener.accept() is not None
    listen = next(r for r in pair.b.sockets() if r["state"] == "LISTEN")
    assert listen["recv_q"] == 0
    listener.close()
    assert [r["state"] for r in pair.b.sockets()] == ["ESTABLISHED"]


def test_established_sides_mirror_each_other() -> None:
    pair = Pair()
    client, server, _, _ = pair.established_pair()
    c = _only(pair.a.sockets())
    s = _only(pair.b.sockets())
    assert c["state"] == s["state"] == "ESTABLISHED"
    assert c["local"] == s["peer"] == f"{A4}:{client.local_port}"
    assert c["peer"] == s["local"] == f"{B4}:80"
    for row, ep in ((c, client), (s, server)):
        assert row["mss"] == ep.mss == MSS4
        assert row["advmss"] == 1460 and row["peer_mss"] == 1460
        assert row["sack"] is True and row["timestamps"] is True
        assert row["cwnd"] == 10 * MSS4 and row["cwnd_segments"] == 10  # RFC 6928
        assert row["ssthresh"] == ep.cc.ssthresh
        assert row["congestion"] == "newreno"
        assert row["in_recovery"] is False and row["retries"] == 0
        assert row["sack_blocks"] == 0 and row["sacked_bytes"] == 0
        assert row["recv_q"] == row["send_q"] == row["in_flight"] == 0
        assert row["snd_una"] == row["snd_nxt"] == (row["iss"] + 1) & SEQ_MASK
        assert row["timers"] == {}
    # RFC 7323 section 2: what one side shifts by is what the other announced.
    assert c["wscale"] == [s["wscale"][1], s["wscale"][0]] == [server.rcv_wscale, client.rcv_wscale]
    assert c["iss"] == s["irs"] and s["iss"] == c["irs"]
    assert c["snd_nxt"] == s["rcv_nxt"] and s["snd_nxt"] == c["rcv_nxt"]


def test_unacked_data_is_in_flight_with_a_retransmission_timer_until_acked() -> None:
    pair = Pair()
    # Sequence numbers wrap in the middle of the data: byte counts are modular.
    client, server, _, _ = pair.established_pair(iss=SEQ_MASK - 1000)
    client.send(b"x" * (2 * MSS4))  # two full segments: Nagle holds nothing back
    row = _only(pair.a.sockets())
    assert row["send_q"] == row["in_flight"] == 2 * MSS4
    assert (row["snd_nxt"] - row["snd_una"]) & SEQ_MASK == 2 * MSS4
    assert row["snd_nxt"] < row["snd_una"]  # wrapped
    assert row["bytes_sent"] == 2 * MSS4 and row["bytes_acked"] == 0 and row["unsent"] == 0
    assert set(row["timers"]) == {"rto"}
    assert 0 < row["timers"]["rto"] <= row["rto_ms"]

    pair.clock.advance(0.01)  # the data spends 10 ms on the wire
    pair.run(lambda: client.snd_una == client.snd_nxt)
    row = _only(pair.a.sockets())
    assert row["send_q"] == row["in_flight"] == 0 and row["snd_una"] == row["snd_nxt"]
    assert row["bytes_acked"] == row["bytes_sent"] == 2 * MSS4
    assert "rto" not in row["timers"]
    assert row["srtt_ms"] > 0 and row["srtt_ms"] == pytest.approx(client.rtt.srtt * 1000)
    assert row["rttvar_ms"] == pytest.approx(client.rtt.rttvar * 1000)
    assert row["rto_ms"] == pytest.approx(client.rtt.rto * 1000) and row["rto_ms"] >= 200
    srv = _only(pair.b.sockets())
    assert srv["bytes_received"] == 2 * MSS4 and srv["rcv_nxt"] == row["snd_nxt"]
    # The window the client uses is the one the server advertised last (RFC 7323 scaled).
    assert row["snd_wnd"] == srv["rcv_wnd"] == server.rcv_adv - server.rcv_nxt


def test_send_queue_counts_unsent_bytes_and_receive_queue_unread_ones() -> None:
    pair = Pair()
    client, server, _, _ = pair.established_pair()
    client.send(b"y" * (MSS4 + 100))  # Nagle keeps the 100-byte tail while the MSS flies
    row = _only(pair.a.sockets())
    assert row["in_flight"] == MSS4 and row["unsent"] == 100
    assert row["send_q"] == MSS4 + 100 and row["bytes_sent"] == MSS4
    server.pause_reading()
    pair.run(lambda: client.snd_una == client.snd_nxt and not client.unsent)
    srv = _only(pair.b.sockets())
    assert srv["recv_q"] == MSS4 + 100 == server.readable
    assert srv["bytes_received"] == MSS4 + 100


def test_retransmission_timeout_shows_backoff_retries_and_recovery() -> None:
    pair = Pair()
    client, _, _, _ = pair.established_pair()
    client.send(b"z" * 1000)
    before = _only(pair.a.sockets())
    assert len(pair.link_a.drain()) == 1  # the segment is lost
    pair.clock.advance(before["rto_ms"] / 1000)
    row = _only(pair.a.sockets())
    assert row["retries"] == 1
    assert row["in_recovery"] is True and row["recovery"] == "timeout"
    assert row["cwnd"] == MSS4 and row["cwnd_segments"] == 1  # RFC 5681 3.1: LW = 1 SMSS
    assert row["ssthresh"] == 2 * MSS4  # max(FlightSize / 2, 2 SMSS)
    assert row["rto_ms"] == pytest.approx(2 * before["rto_ms"])  # RFC 6298 section 5.5
    assert row["timers"]["rto"] == pytest.approx(row["rto_ms"])
    assert pair.a.counters.get("tcp.retransmits") == 1
    pair.run(lambda: client.snd_una == client.snd_nxt)
    row = _only(pair.a.sockets())
    assert row["retries"] == 0 and row["in_recovery"] is False and row["recovery"] == "none"
    assert "rto" not in row["timers"]


def test_sack_scoreboard_and_out_of_order_queue() -> None:
    pair = Pair()
    client, _, _, _ = pair.established_pair(nodelay=True)
    client.send(b"s" * (4 * MSS4))
    segments = pair.link_a.drain()
    assert len(segments) == 4
    pair.link_b.inject_many(segments[1:])  # the first segment is lost
    srv = _only(pair.b.sockets())
    assert srv["ooo_ranges"] == 1 and srv["ooo_bytes"] == 3 * MSS4  # merged into one range
    assert srv["recv_q"] == 0 and srv["bytes_received"] == 0
    pair.link_a.inject_many(pair.link_b.drain())  # the server's SACKs reach the client
    row = _only(pair.a.sockets())
    assert row["sack_blocks"] == 1 and row["sacked_bytes"] == 3 * MSS4
    assert row["in_recovery"] is True and row["recovery"] == "fast"  # RFC 6675
    assert row["in_flight"] == 4 * MSS4
    pair.run(lambda: client.snd_una == client.snd_nxt)
    row = _only(pair.a.sockets())
    assert row["sack_blocks"] == 0 and row["sacked_bytes"] == 0 and row["in_recovery"] is False
    srv = _only(pair.b.sockets())
    assert srv["ooo_ranges"] == 0 and srv["ooo_bytes"] == 0
    assert srv["bytes_received"] == 4 * MSS4


def test_sack_fields_are_null_when_sack_is_not_negotiated() -> None:
    pair = Pair(config_a=TCPConfig(sack=False, timestamps=False, window_scale=False))
    pair.established_pair()
    for row in (_only(pair.a.sockets()), _only(pair.b.sockets())):
        assert row["sack"] is False and row["timestamps"] is False
        assert row["sack_blocks"] is None and row["sacked_bytes"] is None
        assert row["wscale"] is None
        assert row["mss"] == 1460  # no timestamps option to make room for


def test_active_close_passes_fin_wait_2_then_time_wait_with_its_timer() -> None:
    pair = Pair()
    client, server, _, rec_b = pair.established_pair()
    client.send(b"bye")
    client.close()
    assert pair.run(lambda: rec_b.eof)
    row = _only(pair.a.sockets())
    assert row["state"] == "FIN-WAIT-2"
    assert set(row["timers"]) == {"fin_wait_2"}  # orphaned: the application closed
    assert 0 < row["timers"]["fin_wait_2"] <= 60_000
    assert _only(pair.b.sockets())["state"] == "CLOSE-WAIT"

    server.close()
    assert _only(pair.b.sockets())["state"] == "LAST-ACK"
    assert pair.run(lambda: _state(client) is State.TIME_WAIT)
    row = _only(pair.a.sockets())
    assert row["state"] == "TIME-WAIT"
    assert set(row["timers"]) == {"time_wait"}
    assert 0 < row["timers"]["time_wait"] <= 2 * 30 * 1000  # 2 MSL, RFC 9293 section 3.6.1
    assert row["bytes_sent"] == row["bytes_acked"] == 3  # the FIN is not a byte
    assert row["send_q"] == row["in_flight"] == 0
    assert pair.b.sockets() == []  # LAST-ACK ended in CLOSED
    pair.clock.advance(60)
    assert pair.a.sockets() == []


# -- UDP, ordering, IPv6 ---------------------------------------------------------------------


def test_udp_bound_and_connected_endpoints_in_numeric_order() -> None:
    stack, _, _ = make_stack()
    eps = []
    for local, port, peer, peer_port in (
        ("10.0.0.2", 53, None, 0),
        ("0.0.0.0", 8080, None, 0),
        ("10.0.0.2", 9, None, 0),
        ("::", 53, None, 0),
        ("0.0.0.0", 5353, "10.0.0.1", 53),
        ("fd00::2", 40000, "fd00::1", 853),
    ):
        ep = UDPEndpoint(stack)
        ep.bind(a(local), port)
        if peer is not None:
            ep.connect(a(peer), peer_port)
        eps.append(ep)
    stack.tcp.listen(a("10.0.0.2"), 80, backlog=4)
    rows = stack.sockets()
    assert [(r["proto"], r["state"], r["local"], r["peer"]) for r in rows] == [
        ("tcp", "LISTEN", "10.0.0.2:80", "*:*"),
        ("udp", "UNCONN", "0.0.0.0:8080", "*:*"),
        ("udp", "UNCONN", "10.0.0.2:9", "*:*"),  # 9 before 53: ports compare as numbers
        ("udp", "UNCONN", "10.0.0.2:53", "*:*"),
        ("udp", "ESTAB", "10.0.0.2:5353", "10.0.0.1:53"),  # connect() fixed the source
        ("udp", "UNCONN", "[::]:53", "*:*"),
        ("udp", "ESTAB", "[fd00::2]:40000", "[fd00::1]:853"),
    ]
    assert all(r["recv_q"] == 0 and r["send_q"] == 0 for r in rows if r["proto"] == "udp")
    eps[1].close()
    assert "0.0.0.0:8080" not in [r["local"] for r in stack.sockets()]
    assert eps[1].info()["state"] == "CLOSED"


def test_ipv6_connection_rows() -> None:
    pair = Pair()
    client, _, _, _ = pair.established_pair(v6=True)
    c = _only(pair.a.sockets())
    s = _only(pair.b.sockets())
    assert c["local"] == f"[fd00::1]:{client.local_port}" and c["peer"] == "[fd00::2]:80"
    assert s["local"] == "[fd00::2]:80" and s["peer"] == c["local"]
    assert c["mss"] == s["mss"] == MSS6 and c["advmss"] == 1440


def test_rows_are_plain_json() -> None:
    pair = Pair()
    client, _, _, _ = pair.established_pair()
    pair.listen(443)
    other = pair.connect(443)
    pair.wire.pump(max_packets=1)  # only the SYN crosses
    client.send(b"q" * 5000)
    udp = UDPEndpoint(pair.a)
    udp.bind(a("fd00::1"), 53)
    rows = pair.a.sockets() + pair.b.sockets()
    assert {r["state"] for r in rows} >= {"ESTABLISHED", "LISTEN", "SYN-SENT", "SYN-RECV"}
    assert _state(other) is State.SYN_SENT
    assert all(_plain(r) for r in rows)
    assert json.loads(json.dumps(rows, allow_nan=False)) == rows


# -- text ------------------------------------------------------------------------------------


def test_format_sockets_table_and_tcp_details() -> None:
    pair = Pair()
    client, _, _, _ = pair.established_pair(nodelay=True)
    client.send(b"d" * 2000)
    udp = UDPEndpoint(pair.a)
    udp.bind(a("0.0.0.0"), 53)
    pair.tcp_a.listen(a("::"), 8080, backlog=7)
    rows = pair.a.sockets()
    text = format_sockets(rows)
    lines = text.splitlines()
    header = lines[0]
    assert header.split()[:4] == ["Netid", "State", "Recv-Q", "Send-Q"]
    assert "Local Address:Port" in header and "Peer Address:Port" in header
    conn = next(i for i, line in enumerate(lines) if "ESTABLISHED" in line)
    cells = lines[conn].split()
    assert cells == ["tcp", "ESTABLISHED", "0", "2000", rows[0]["local"], f"{B4}:80"]
    # Columns line up under their headings.
    assert lines[conn].index(rows[0]["local"]) == header.index("Local Address:Port")
    assert lines[conn].index("2000") + 4 == header.index("Send-Q") + len("Send-Q")
    details = lines[conn + 1]
    assert details.startswith("\t")
    row = rows[0]
    for field in (
        "ts",
        "sack",
        "newreno",
        f"wscale:{row['wscale'][0]},{row['wscale'][1]}",
        f"mss:{MSS4}",
        "advmss:1460",
        "cwnd:10",
        "rto:200",
        "rtt:0/0",
        "bytes_sent:2000",
        "bytes_acked:0",
        f"snd_wnd:{row['snd_wnd']}",
        f"rcv_wnd:{row['rcv_wnd']}",
        "unacked:2000B",
        "timers:(rto,200ms)",
    ):
        assert field in details.split(), field
    assert "ssthresh:" not in details  # still "arbitrarily high", as ss leaves it out
    listen = next(line for line in lines if "LISTEN" in line)
    assert listen.split() == ["tcp", "LISTEN", "0", "7", "[::]:8080", "*:*"]
    after = lines[lines.index(listen) + 1]
    assert not after.startswith("\t")
    assert lines[-1].split() == ["udp", "UNCONN", "0", "0", "0.0.0.0:53", "*:*"]


def test_format_sockets_shows_ssthresh_retrans_and_recovery_after_a_timeout() -> None:
    pair = Pair()
    client, _, _, _ = pair.established_pair()
    client.send(b"z" * 1000)
    pair.link_a.drain()
    pair.clock.advance(0.2)
    details = format_sockets(pair.a.sockets()).splitlines()[2].split()
    assert "ssthresh:2" in details and "cwnd:1" in details
    assert "retrans:1" in details and "recovery:timeout" in details
    assert "timers:(rto,400ms)" in details


def test_format_counters_groups_aligns_and_shows_deltas() -> None:
    items = [
        ("ipv4.malformed.bad_checksum", 1),
        ("tcp.active_opens", 3),
        ("tcp.segments.in", 12045),
        ("udp.no_port", 7),
    ]
    text = format_counters(items, {"tcp.segments.in": 4, "udp.no_port": 0})
    lines = text.splitlines()
    assert [line for line in lines if not line.startswith(" ")] == ["ipv4:", "tcp:", "udp:"]
    body = [line for line in lines if line.startswith("    ")]
    assert [line.split()[:2] for line in body] == [
        ["malformed.bad_checksum", "1"],
        ["active_opens", "3"],
        ["segments.in", "12045"],
        ["no_port", "7"],
    ]
    ends = {line.index(line.split()[1]) + len(line.split()[1]) for line in body}
    assert len(ends) == 1  # values right-aligned in one column
    assert lines[lines.index("tcp:") + 2].split()[2] == "+4/s"
    assert lines[-1].split()[2] == "+0/s"
    assert len(lines[lines.index("tcp:") + 1].split()) == 2  # no delta given, none shown
    assert format_counters(items).count("/s") == 0
    assert format_counters([]) == ""


def test_format_counters_on_live_stack_counters() -> None:
    pair = Pair()
    pair.established_pair()
    items = list(pair.a.counters.items())
    parsed: dict[str, int] = {}
    group = ""
    for line in format_counters(items).splitlines():
        if line.startswith("    "):
            name, value = line.split()
            parsed[f"{group}.{name}"] = int(value)
        else:
            group = line.removesuffix(":")
    assert parsed == dict(items)
    assert parsed["tcp.active_opens"] == 1
