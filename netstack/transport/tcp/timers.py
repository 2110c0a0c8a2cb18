"""Timers on the injected clock and the retransmission timeout estimator (RFC 6298).

Every TCP timer (retransmission, persist, delayed ACK, keep-alive, TIME-WAIT) is a
:class:`Timer`: a one-shot deadline that can be pushed later without touching the clock's queue
(the pending callback re-arms itself for the remaining time), which keeps the per-ACK restart
of the retransmission timer cheap.
"""

from __future__ import annotations

from collections.abc import Callable

from netstack.clock import Clock, TimerHandle


class Timer:
    """A restartable one-shot timer calling ``callback()`` when its deadline passes."""

    __slots__ = ("_callback", "_clock", "_deadline", "_handle", "_handle_at")

    def __init__(self, clock: Clock, callback: Callable[[], None]) -> None:
        self._clock = clock
        self._callback = callback
        self._deadline: float | None = None
        self._handle: TimerHandle | None = None
        self._handle_at = 0.0

    @property
    def armed(self) -> bool:
        """Whether the timer will fire."""
        return self._deadline is not None

    @property
    def deadline(self) -> float | None:
        """When the timer fires, or None when stopped."""
        return self._deadline

    def start(self, delay: float) -> None:
        """(Re)arm the timer to fire ``delay`` seconds from now."""
        deadline = self._clock.now() + delay
        self._deadline = deadline
        if self._handle is not None:
            if self._handle_at <= deadline:
                return  # the pending callback will re-arm itself for the rest
            self._handle.cancel()
        self._schedule(deadline)

    def start_if_stopped(self, delay: float) -> None:
        """Arm the timer unless it is already armed."""
        if self._deadline is None:
            self.start(delay)

    def stop(self) -> None:
        """Disarm the timer; harmless when it is not armed."""
        self._deadline = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, deadline: float) -> None:
        self._handle_at = deadline
        self._handle = self._clock.call_later(deadline - self._clock.now(), self._fire)

    def _fire(self) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None:
            return
        if self._clock.now() < deadline:
            self._schedule(deadline)
            return
        self._deadline = None
        self._callback()


class RTTEstimator:
    """SRTT, RTTVAR and RTO per RFC 6298 sections 2 and 5, with exponential back-off."""

    __slots__ = ("max_rto", "min_rto", "rto", "rttvar", "srtt")

    GRANULARITY = 0.001
    """Clock granularity G of RFC 6298 section 2 (the timestamps option ticks in ms)."""

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.rto = min(max(initial_rto, min_rto), max_rto)
        self.srtt: float | None = None
        self.rttvar = 0.0

    def sample(self, rtt: float) -> None:
        """Take one round-trip measurement (RFC 6298 sections 2.2 and 2.3)."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        rto = self.srtt + max(self.GRANULARITY, 4 * self.rttvar)
        self.rto = min(max(rto, self.min_rto), self.max_rto)  # RFC 6298 sections 2.4, 2.5

    def backoff(self) -> None:
        """Double the RTO after a timeout (RFC 6298 section 5.5), up to the maximum."""
        self.rto = min(self.rto * 2, self.max_rto)
