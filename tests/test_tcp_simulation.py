"""Deterministic simulations: two stacks over a faulty wire, Hypothesis choosing the damage.

Payload sizes, loss, duplication, reordering, corruption, delay, initial sequence numbers (often
right below 2**32), buffer sizes and options vary; the byte streams must arrive exactly, both
sides must close, and nothing (connection, timer, buffer) may be left behind.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.transport.tcp import State, TCPConfig, TCPEndpoint
from netstack.transport.tcp.congestion import Cubic, NewReno
from netstack.transport.tcp.congestion.base import INITIAL_SSTHRESH
from tests.test_tcp_harness import Pair, Recorder

NEAR_WRAP = st.integers(min_value=2**32 - 70_000, max_value=2**32 - 1)
ISN = st.one_of(NEAR_WRAP, st.integers(min_value=0, max_value=2**32 - 1))


def _payload(n: int, salt: int) -> bytes:
    return bytes((i * 31 + salt) % 251 for i in range(n))


def _exchange(pair: Pair, iss_a: int, iss_b: int, size_a: int, size_b: int) -> None:
    pair.tcp_b.isn = lambda *_: iss_b
    client, server, rec_a, rec_b = pair.established_pair(iss=iss_a)
    assert client.iss == iss_a and server.iss == iss_b
    data_a, data_b = _payload(size_a, 1), _payload(size_b, 2)
    sent = {id(client): 0, id(server): 0}

    def feed(ep: TCPEndpoint, data: bytes) -> None:
        pos = sent[id(ep)]
        while pos < len(data) and ep.send_space:
            pos += ep.send(data[pos : pos + 50_000])
        sent[id(ep)] = pos
        if pos == len(data):
            ep.shutdown()

    client.on_send_space = lambda: feed(client, data_a)
    server.on_send_space = lambda: feed(server, data_b)
    feed(client, data_a)
    feed(server, data_b)
    assert pair.run(lambda: rec_a.eof and rec_b.eof)
    assert bytes(rec_b.data) == data_a
    assert bytes(rec_a.data) == data_b
    client.close()
    server.close()
    assert pair.run()
    for rec in (rec_a, rec_b):
        assert rec.closed and rec.error is None
    for ep in (client, server):
        assert ep.state is State.CLOSED
        assert len(ep.sndbuf) == 0 and ep.readable == 0
    assert pair.idle()  # no connection, listener or timer left (TIME-WAIT has passed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size_a=st.integers(min_value=0, max_value=120_000),
    size_b=st.integers(min_value=0, max_value=40_000),
    loss=st.sampled_from([0.0, 0.01, 0.05, 0.1]),
    duplicate=st.sampled_from([0.0, 0.05, 0.2]),
    reorder=st.sampled_from([0.0, 0.05, 0.2]),
    corrupt=st.sampled_from([0.0, 0.02, 0.05]),
    delay=st.sampled_from([0.0, 0.01]),
    jitter=st.sampled_from([0.0, 0.03]),
    iss_a=ISN,
    iss_b=ISN,
    sack=st.booleans(),
    timestamps=st.booleans(),
    window_scale=st.booleans(),
    nodelay=st.booleans(),
    receive_buffer=st.sampled_from([1500, 8192, 65535, 300_000]),
    send_buffer=st.sampled_from([2000, 32768, 262_144]),
    mtu=st.sampled_from([576, 1280, 1500, 9000]),
    congestion=st.sampled_from(["newreno", "cubic"]),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_streams_arrive_exactly_over_a_faulty_wire(
    size_a: int,
    size_b: int,
    loss: float,
    duplicate: float,
    reorder: float,
    corrupt: float,
    delay: float,
    jitter: float,
    iss_a: int,
    iss_b: int,
    sack: bool,
    timestamps: bool,
    window_scale: bool,
    nodelay: bool,
    receive_buffer: int,
    send_buffer: int,
    mtu: int,
    congestion: str,
    seed: int,
) -> None:
    config = TCPConfig(
        congestion=congestion,
        sack=sack,
        timestamps=timestamps,
        window_scale=window_scale,
        nodelay=nodelay,
        receive_buffer=receive_buffer,
        send_buffer=send_buffer,
        syn_retries=12,
        synack_retries=12,
        max_retries=20,
    )
    fault = {
        "loss": loss,
        "duplicate": duplicate,
        "reorder": reorder,
        "corrupt": corrupt,
        "delay": delay,
        "jitter": jitter,
    }
    pair = Pair(config_a=config, config_b=config, mtu=mtu, fault=fault, seed=seed)
    _exchange(pair, iss_a, iss_b, size_a, size_b)


@pytest.mark.parametrize("sack", [False, True], ids=["reno-recovery", "sack-recovery"])
@pytest.mark.parametrize("congestion", ["newreno", "cubic"])
@pytest.mark.parametrize("seed", [3, 11])
def test_newreno_and_cubic_deliver_exactly_under_loss_and_reordering(
    congestion: str, sack: bool, seed: int
) -> None:
    """Both congestion controls, under both recoveries, move 400 kB each way byte for byte over
    a wire that loses 3% and reorders 10% of the packets (both directions, 10 ms delay)."""
    config = TCPConfig(congestion=congestion, sack=sack, max_retries=20)
    fault = {"loss": 0.03, "reorder": 0.1, "delay": 0.01, "jitter": 0.002}
    pair = Pair(config_a=config, config_b=config, fault=fault, seed=seed)
    client, server, _, _ = pair.established_pair()
    for ep in (client, server):
        info = ep.info()
        assert info["congestion"] == congestion  # the module TCPConfig.congestion named
        assert info["loss_recovery"] == ("sack" if sack else "reno")
        assert isinstance(ep.cc, Cubic if congestion == "cubic" else NewReno)
    _exchange_started(pair, client, server, 400_000, 400_000, seed)
    assert pair.fault is not None
    faults = pair.fault.counters
    assert faults.get("outbound.lost") > 0 and faults.get("inbound.lost") > 0
    assert faults.get("outbound.reordered") > 0
    counters = pair.a.counters
    assert counters.get("tcp.retransmits") > 0  # the losses were repaired by resending
    assert counters.get("tcp.fast_retransmits") > 0 and counters.get("tcp.recoveries") > 0
    assert client.cc.ssthresh < INITIAL_SSTHRESH  # a loss reduced the window
    if isinstance(client.cc, Cubic):
        assert client.cc.w_max is not None  # RFC 9438 section 4.6 ran


def _exchange_started(
    pair: Pair, client: TCPEndpoint, server: TCPEndpoint, size_a: int, size_b: int, salt: int
) -> None:
    """Send ``size_a`` bytes from client to server and ``size_b`` back; check them and the close."""
    data = {id(client): _payload(size_a, salt), id(server): _payload(size_b, salt + 1)}
    got: dict[int, bytearray] = {id(client): bytearray(), id(server): bytearray()}
    eof: set[int] = set()
    sent = {id(client): 0, id(server): 0}

    def feed(ep: TCPEndpoint) -> None:
        mine = data[id(ep)]
        pos = sent[id(ep)]
        while pos < len(mine) and ep.send_space:
            pos += ep.send(mine[pos : pos + 50_000])
        sent[id(ep)] = pos
        if pos == len(mine):
            ep.shutdown()

    for ep in (client, server):
        ep.on_data = got[id(ep)].extend
        ep.on_eof = lambda ep=ep: eof.add(id(ep))  # type: ignore[misc]
        ep.on_send_space = lambda ep=ep: feed(ep)  # type: ignore[misc]
        feed(ep)
    assert pair.run(lambda: len(eof) == 2)
    assert bytes(got[id(server)]) == data[id(client)]
    assert bytes(got[id(client)]) == data[id(server)]
    client.close()
    server.close()
    assert pair.run() and pair.idle()


@settings(max_examples=10, deadline=None)
@given(iss_a=NEAR_WRAP, iss_b=NEAR_WRAP, size=st.integers(min_value=1, max_value=200_000))
def test_ipv6_transfer_across_the_sequence_wrap(iss_a: int, iss_b: int, size: int) -> None:
    """RFC 9293 section 3.4: sequence numbers wrap mod 2**32 mid-stream (IPv6 path)."""
    pair = Pair(fault={"loss": 0.02}, seed=size)
    pair.tcp_b.isn = lambda *_: iss_b
    listener = pair.listen(80, v6=True)
    rec_a, rec_b = Recorder(), Recorder()
    client = rec_a.attach(pair.connect(80, v6=True, iss=iss_a))
    got: list[TCPEndpoint] = []
    listener.on_connection = lambda: got.append(rec_b.attach(listener.accept()))  # type: ignore[arg-type]
    assert pair.run(lambda: bool(got))
    data = _payload(size, 7)
    pos = 0

    def feed() -> None:
        nonlocal pos
        while pos < size and client.send_space:
            pos += client.send(data[pos : pos + 65536])
        if pos == size:
            client.close()

    client.on_send_space = feed
    feed()
    assert pair.run(lambda: rec_b.eof)
    assert bytes(rec_b.data) == data
    got[0].close()
    listener.close()
    assert pair.run() and pair.idle()


def test_simultaneous_open_and_simultaneous_close() -> None:
    """RFC 9293 section 3.5 figure 8 and section 3.6 figure 13, with both ends active."""
    pair = Pair()
    rec_a, rec_b = Recorder(), Recorder()
    from netstack.stack import parse_address

    a = rec_a.attach(pair.tcp_a.connect(parse_address("10.0.0.2"), 5000, local_port=6000))
    b = rec_b.attach(pair.tcp_b.connect(parse_address("10.0.0.1"), 6000, local_port=5000))
    assert pair.run(lambda: a.state is State.ESTABLISHED and b.state is State.ESTABLISHED)
    assert pair.a.counters.get("tcp.simultaneous_opens") == 1
    a.send(b"ping")
    b.send(b"pong")
    assert pair.run(lambda: rec_a.data == b"pong" and rec_b.data == b"ping")
    a.close()
    b.close()
    assert a.state is State.FIN_WAIT_1 and b.state is State.FIN_WAIT_1
    pair.wire.pump()
    states = {a.state, b.state}
    assert states == {State.TIME_WAIT}  # via CLOSING
    assert pair.run() and pair.idle()
