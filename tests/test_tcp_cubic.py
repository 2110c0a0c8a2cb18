"""CUBIC (RFC 9438) against its equations: every expected number is computed here, in the test,
from the RFC's formulas, and compared with what :class:`Cubic` does with its window.

Windows in the RFC are in segments; the controller keeps ``cwnd`` in bytes, so with an MSS of
1000 bytes a window of 70 segments is ``cwnd == 70_000``. Time is a ManualClock.
"""

from __future__ import annotations

import pytest

from netstack.clock import ManualClock
from netstack.transport.tcp import TCPConfig
from netstack.transport.tcp.congestion import ALGORITHMS, Cubic, NewReno, new_congestion_control
from netstack.transport.tcp.congestion.cubic import cubic_k, cubic_target, w_cubic

MSS = 1000
# RFC 9438 section 4.1.2 and section 4.3, equation (3), written out independently.
C_RFC = 0.4
BETA_RFC = 0.7
ALPHA_RFC = 3 * (1 - BETA_RFC) / (1 + BETA_RFC)


def rfc_k(w_max: float, cwnd_epoch: float) -> float:
    """Equation (2): K = cubic_root((W_max - cwnd_epoch) / C)."""
    return float(((w_max - cwnd_epoch) / C_RFC) ** (1.0 / 3.0))


def rfc_w(t: float, k: float, w_max: float) -> float:
    """Equation (1): W_cubic(t) = C * (t - K)^3 + W_max."""
    return C_RFC * (t - k) ** 3 + w_max


class FakeRTT:
    """The smoothed RTT the controller reads (RFC 6298 SRTT), fixed by the test."""

    def __init__(self, srtt: float | None) -> None:
        self.srtt = srtt


def after_loss_at(segments: int, srtt: float = 0.1) -> tuple[Cubic, ManualClock, FakeRTT]:
    """A controller whose window was ``segments`` when fast retransmit found a loss."""
    clock = ManualClock()
    rtt = FakeRTT(srtt)
    cc = Cubic(MSS, 10, clock, rtt)
    cc.cwnd = segments * MSS
    cc.on_fast_retransmit(segments * MSS, MSS)
    return cc, clock, rtt


def ack(cc: Cubic, segments: int = 1) -> None:
    for _ in range(segments):
        cc.on_ack(MSS, MSS)


def test_window_function_matches_equations_1_and_2() -> None:
    w_max = 100.0
    cwnd_epoch = BETA_RFC * w_max
    k = (w_max * (1 - BETA_RFC) / C_RFC) ** (1 / 3)  # section 4.2 with cwnd_epoch = beta*W_max
    assert k == pytest.approx(4.2172, abs=1e-4)
    assert cubic_k(w_max, cwnd_epoch) == pytest.approx(k)
    assert w_cubic(0.0, k, w_max) == pytest.approx(cwnd_epoch)  # starts at the reduced window
    assert w_cubic(k, k, w_max) == pytest.approx(w_max)  # back at W_max after K seconds
    # Concave (t < K): below W_max, flattening toward it; convex (t > K): above, accelerating.
    concave, convex = w_cubic(2.0, k, w_max), w_cubic(6.0, k, w_max)
    assert concave == pytest.approx(0.4 * (2.0 - k) ** 3 + 100) and concave < w_max
    assert convex == pytest.approx(0.4 * (6.0 - k) ** 3 + 100) and convex > w_max
    assert cubic_k(50.0, 60.0) == 0.0  # no way back to a W_max already passed


def test_multiplicative_decrease_sets_beta_cwnd_and_w_max() -> None:
    """Section 4.6: ssthresh = cwnd = beta_cubic * cwnd; W_max remembers the old window."""
    cc, _, _ = after_loss_at(100)
    assert cc.cwnd == cc.ssthresh == 70 * MSS
    assert cc.w_max == pytest.approx(100.0) and cc.cwnd_prior == pytest.approx(100.0)
    small, _, _ = after_loss_at(2)
    assert small.cwnd == small.ssthresh == 2 * MSS  # never below 2 SMSS


def test_concave_region_grows_toward_w_cubic_t_plus_rtt() -> None:
    """Sections 4.2 and 4.4: cwnd += (target - cwnd) / cwnd per ACK, target W_cubic(t + RTT)."""
    cc, clock, rtt = after_loss_at(100, srtt=0.1)
    ack(cc)  # the first ACK in congestion avoidance starts the epoch (t = 0)
    k = rfc_k(100.0, 70.0)
    assert cc.epoch_start == 0.0 and cc.k == pytest.approx(k)
    clock.advance(1.0)
    before = cc.cwnd / MSS
    ack(cc)
    t = 1.0
    assert before < rfc_w(t, k, 100.0)  # the Reno estimate (about 70.0) is below W_cubic
    target = rfc_w(t + rtt.srtt, k, 100.0)  # type: ignore[operator]
    assert before < target < 100.0  # concave: below W_max, no clamp
    assert cc.cwnd / MSS == pytest.approx(before + (target - before) / before, abs=1e-3)


def test_convex_region_grows_beyond_w_max() -> None:
    """Section 4.5: after K seconds the target lies above W_max and the window probes past it."""
    cc, clock, _ = after_loss_at(100, srtt=0.05)
    ack(cc)
    k = rfc_k(100.0, 70.0)
    clock.advance(k + 1.0)
    before = cc.cwnd / MSS
    ack(cc)
    target = rfc_w(k + 1.0 + 0.05, k, 100.0)
    assert target > 100.0
    expected = before + (min(target, 1.5 * before) - before) / before
    assert cc.cwnd / MSS == pytest.approx(expected, abs=1e-3)
    # Keep acknowledging for a while: the window passes W_max.
    for _ in range(200):
        clock.advance(0.05)
        ack(cc, 5)
    assert cc.cwnd > 100 * MSS


def test_target_is_clamped_to_one_and_a_half_cwnd() -> None:
    """Section 4.2: a target above 1.5 * cwnd grows cwnd by only 0.5 segment per ACK."""
    assert cubic_target(500.0, 80.0) == 120.0
    assert cubic_target(60.0, 80.0) == 80.0  # never below cwnd
    assert cubic_target(90.0, 80.0) == 90.0
    cc, clock, _ = after_loss_at(100, srtt=0.1)
    ack(cc)
    clock.advance(20.0)  # far into the convex region: W_cubic is in the thousands
    before = cc.cwnd / MSS
    assert rfc_w(20.1, rfc_k(100.0, 70.0), 100.0) > 1.5 * before
    ack(cc)
    assert cc.cwnd / MSS == pytest.approx(before + 0.5, abs=1e-3)


def test_reno_friendly_region_wins_when_w_est_is_above_w_cubic() -> None:
    """Section 4.3: with ACKs arriving faster than W_cubic moves (a short RTT), cwnd = W_est,
    which grows alpha_cubic segments per window of ACKs (equation (4)), and 1 per window once
    it reaches the window before the loss."""
    cc, clock, _ = after_loss_at(10, srtt=0.001)
    w_est = 7.0
    k = rfc_k(10.0, 7.0)
    for i in range(20):
        cwnd = cc.cwnd / MSS
        ack(cc)
        clock.advance(0.0001)
        if i == 0:
            assert cc.w_est == pytest.approx(w_est + ALPHA_RFC / cwnd)
        w_est += ALPHA_RFC / cwnd
        assert rfc_w(i * 0.0001, k, 10.0) < w_est  # W_cubic has barely moved from 7
        assert cc.cwnd == int(w_est * MSS)
    # Alpha becomes 1 once W_est reaches cwnd_prior (10 segments).
    cc.w_est = 10.0
    cwnd = cc.cwnd / MSS
    ack(cc)
    assert cc.w_est == pytest.approx(10.0 + 1.0 / cwnd, abs=1e-4)


def test_fast_convergence_lowers_w_max_when_loss_comes_before_it_is_regained() -> None:
    """Section 4.7: a loss below the previous W_max sets W_max = cwnd * (1 + beta) / 2."""
    cc, _, _ = after_loss_at(100)
    cc.cwnd = 90 * MSS  # regrew to 90 segments, short of W_max = 100
    cc.on_fast_retransmit(90 * MSS, MSS)
    assert cc.w_max == pytest.approx(90 * (1 + BETA_RFC) / 2)  # 76.5, below the loss point
    assert cc.cwnd == cc.ssthresh == int(90 * MSS * BETA_RFC)
    # A loss above W_max keeps the plain rule: W_max = cwnd.
    cc.cwnd = 120 * MSS
    cc.on_fast_retransmit(120 * MSS, MSS)
    assert cc.w_max == pytest.approx(120.0)


def test_timeout_collapses_to_one_segment_and_restarts_with_k_zero() -> None:
    """Section 4.8: cwnd = 1 SMSS, ssthresh = beta_cubic * cwnd; the next congestion avoidance
    starts with K = 0 and W_max = the window it starts at."""
    clock = ManualClock()
    cc = Cubic(MSS, 10, clock, FakeRTT(0.1))
    cc.cwnd = 40 * MSS
    cc.on_timeout(40 * MSS, MSS, first=True)
    assert cc.cwnd == MSS and cc.ssthresh == 28 * MSS
    cc.on_timeout(MSS, MSS, first=False)  # a second timeout of the same episode
    assert cc.ssthresh == 28 * MSS
    while cc.cwnd < cc.ssthresh:
        ack(cc)  # slow start (section 4.10)
    assert cc.cwnd == 28 * MSS and cc.epoch_start is None
    clock.advance(1.0)
    ack(cc)
    assert cc.epoch_start == 1.0 and cc.k == 0.0 and cc.w_max == pytest.approx(28.0)


def test_congestion_control_is_chosen_in_the_tcp_options() -> None:
    assert TCPConfig().congestion == "newreno"  # behaviour unchanged by default
    assert set(ALGORITHMS) == {"newreno", "cubic"}
    clock = ManualClock()
    assert isinstance(new_congestion_control("cubic", MSS, 10, clock, FakeRTT(None)), Cubic)
    assert isinstance(new_congestion_control("newreno", MSS, 10, clock, FakeRTT(None)), NewReno)
    with pytest.raises(ValueError, match="unknown congestion control"):
        TCPConfig(congestion="vegas")
