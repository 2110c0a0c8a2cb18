"""Time for the stack: the only place it learns what time it is or schedules work.

Nothing in the sans-I/O core reads the wall clock; it is given a :class:`Clock`. Tests use
:class:`ManualClock` and move time by hand; the daemon uses :class:`AsyncioClock`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol


class TimerHandle(Protocol):
    """A scheduled callback that can be cancelled before it runs."""

    def cancel(self) -> None:
        """Stop the callback from running; cancelling twice or after it ran is harmless."""


class Clock(Protocol):
    """Monotonic time in seconds and one-shot timers."""

    def now(self) -> float:
        """Return the current monotonic time in seconds."""

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` once, ``delay`` seconds from now."""


class _ManualTimer:
    __slots__ = ("args", "callback", "cancelled", "clock", "when")

    def __init__(
        self, clock: ManualClock, when: float, callback: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        self.clock = clock
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.clock._live -= 1


class ManualClock:
    """A clock that only moves when told to; timers run in deadline order during :meth:`advance`."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()
        self._live = 0

    def now(self) -> float:
        """Return the current (manual) time."""
        return self._now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> _ManualTimer:
        """Schedule ``callback(*args)`` at now + ``delay`` (a negative delay means now)."""
        timer = _ManualTimer(self, self._now + max(0.0, delay), callback, args)
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        self._live += 1
        return timer

    @property
    def pending(self) -> int:
        """Number of timers scheduled and not yet run or cancelled."""
        return self._live

    def next_deadline(self) -> float | None:
        """Return the time of the earliest live timer, or None when none is pending."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def advance(self, seconds: float) -> int:
        """Move time forward by ``seconds``, running the timers that fall due; return how many."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        return self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> int:
        """Move time forward to ``when``, running due timers in order; return how many ran."""
        ran = 0
        while self._heap and self._heap[0][0] <= when:
            deadline, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self._now = max(self._now, deadline)
            timer.cancelled = True
            self._live -= 1
            timer.callback(*timer.args)
            ran += 1
        self._now = max(self._now, when)
        return ran

    def run_until_idle(self, limit: float = 3600.0) -> int:
        """Run timers until none is pending or ``limit`` seconds passed; return how many ran."""
        end = self._now + limit
        ran = 0
        while (deadline := self.next_deadline()) is not None and deadline <= end:
            ran += self.advance_to(deadline)
        return ran


class AsyncioClock:
    """A clock bound to an asyncio event loop (``loop.time()`` and ``loop.call_later``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()

    def now(self) -> float:
        """Return the loop's monotonic time."""
        return self._loop.time()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Schedule ``callback(*args)`` on the loop after ``delay`` seconds."""
        return self._loop.call_later(max(0.0, delay), callback, *args)
