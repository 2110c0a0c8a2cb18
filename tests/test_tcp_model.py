"""A stateful model of the TCP socket API: connect, write, half close, close and abort in any
order on both ends, checked against what each side may observe.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from netstack.transport.tcp import State, TCPConfig, TCPEndpoint
from tests.test_tcp_harness import Pair, Recorder

SIDES = st.sampled_from([0, 1])


class SocketModel(RuleBasedStateMachine):
    """Two connected endpoints driven by the test; a reference model of what each may see."""

    @initialize(
        small_buffers=st.booleans(),
        reorder=st.sampled_from([0.0, 0.3]),
        seed=st.integers(0, 1000),
    )
    def connect(self, small_buffers: bool, reorder: float, seed: int) -> None:
        size = 3000 if small_buffers else 64 * 1024
        config = TCPConfig(send_buffer=size, receive_buffer=size)
        # Reordering (no loss) keeps every byte deliverable, so the model stays exact.
        fault = {"reorder": reorder} if reorder else None
        self.pair = Pair(config_a=config, config_b=config, fault=fault, seed=seed)
        client, server, rec_a, rec_b = self.pair.established_pair()
        self.eps: list[TCPEndpoint] = [client, server]
        self.recs: list[Recorder] = [rec_a, rec_b]
        self.written = [bytearray(), bytearray()]
        self.shut = [False, False]
        self.closed = [False, False]
        self.aborted = [False, False]

    def _may_be_reset(self, side: int) -> bool:
        """A side may see a reset only if its peer aborted, or closed and then got data."""
        peer = 1 - side
        return self.aborted[peer] or self.closed[peer]

    @rule(side=SIDES, data=st.binary(min_size=1, max_size=5000))
    def write(self, side: int, data: bytes) -> None:
        ep = self.eps[side]
        if self.shut[side] or self.aborted[side] or self.recs[side].error is not None:
            try:
                ep.send(data)
            except BrokenPipeError:
                return
            raise AssertionError("send after shutdown, abort or reset must fail")
        if ep.state is State.CLOSED:
            # Ended by the peer's orderly close of a connection we also finished? Not here:
            # our side has not shut down, so only a reset can have closed it.
            assert self._may_be_reset(side)
            return
        n = ep.send(data)
        assert 0 <= n <= len(data)
        self.written[side] += data[:n]

    @rule(side=SIDES)
    def shutdown(self, side: int) -> None:
        self.eps[side].shutdown()
        self.shut[side] = True

    @rule(side=SIDES)
    def close(self, side: int) -> None:
        self.eps[side].close()
        self.shut[side] = self.closed[side] = True

    @precondition(lambda self: not any(self.aborted))
    @rule(side=SIDES)
    def abort(self, side: int) -> None:
        self.eps[side].abort()
        self.aborted[side] = self.shut[side] = True

    @rule(seconds=st.sampled_from([0.0, 0.01, 0.3, 2.0]))
    def step(self, seconds: float) -> None:
        self.pair.wire.pump()
        self.pair.clock.advance(seconds)
        self.pair.wire.pump()

    @invariant()
    def observations_are_consistent(self) -> None:
        for side in (0, 1):
            rec = self.recs[side]
            peer = 1 - side
            sent = bytes(self.written[peer])
            assert bytes(rec.data) == sent[: len(rec.data)], "received bytes are not a prefix"
            if rec.eof:
                assert rec.data == sent and self.shut[peer], "EOF before the peer's FIN"
            if rec.error is not None:
                assert isinstance(rec.error, ConnectionResetError)
                assert self._may_be_reset(side), "reset nobody caused"

    def teardown(self) -> None:
        pair = getattr(self, "pair", None)
        if pair is None:
            return
        assert pair.run(limit=100_000)
        # Everything the peer wrote reaches a side that is still reading, unless a reset
        # cut the connection short.
        for side in (0, 1):
            peer = 1 - side
            rec = self.recs[side]
            interrupted = self.aborted[peer] or self.aborted[side] or rec.error is not None
            interrupted = interrupted or self.recs[peer].error is not None
            if not self.closed[side] and not interrupted:
                assert bytes(rec.data) == bytes(self.written[peer])
                assert rec.eof == self.shut[peer]
        for ep in self.eps:
            ep.close()
        assert pair.run(limit=100_000)
        assert all(rec.closed for rec in self.recs)
        assert pair.idle(), (self.eps, pair.clock.pending)


SocketModel.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
test_socket_api_model = SocketModel.TestCase
