"""The connection states of RFC 9293 section 3.3.2 and every transition between them.

:data:`TRANSITIONS` is the state diagram (RFC 9293 figure 5) as a table: the endpoint changes
state only through :func:`next_state`, so this file is the whole state machine's shape. Two
kinds of arcs are not in the table because they leave from (almost) every state: a reset, an
abort or a failure goes to CLOSED (RFC 9293 sections 3.10.5 and 3.10.7.4, "second"), and a
listener's child that is reset in SYN-RECEIVED goes back to the listener by being dropped.
"""

from __future__ import annotations

import enum
from typing import Final


class State(enum.Enum):
    """Connection states of RFC 9293 section 3.3.2."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


class Event(enum.Enum):
    """What moves a connection from one state to the next (the arcs of RFC 9293 figure 5)."""

    ACTIVE_OPEN = "active OPEN: send SYN"
    SYN_FROM_LISTENER = "a listener's SYN: send SYN,ACK"
    COOKIE_ACK = "a valid SYN cookie ACK to a listener"
    RCV_SYN = "receive SYN: send SYN,ACK (simultaneous open)"
    RCV_SYN_ACK = "receive SYN,ACK: send ACK"
    RCV_ACK_OF_SYN = "receive ACK of SYN"
    CLOSE = "CLOSE (shutdown): send FIN"
    RCV_FIN = "receive FIN: send ACK"
    RCV_ACK_OF_FIN = "receive ACK of FIN"
    TIMEOUT_2MSL = "2 MSL passed"


_S = State
_E = Event

TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    # Opening (RFC 9293 sections 3.5, 3.10.1, 3.10.7.2, 3.10.7.3; RFC 4987 section 3.6).
    (_S.CLOSED, _E.ACTIVE_OPEN): _S.SYN_SENT,
    (_S.CLOSED, _E.SYN_FROM_LISTENER): _S.SYN_RECEIVED,
    (_S.CLOSED, _E.COOKIE_ACK): _S.SYN_RECEIVED,
    (_S.SYN_SENT, _E.RCV_SYN_ACK): _S.ESTABLISHED,
    (_S.SYN_SENT, _E.RCV_SYN): _S.SYN_RECEIVED,
    (_S.SYN_RECEIVED, _E.RCV_ACK_OF_SYN): _S.ESTABLISHED,
    # Closing (RFC 9293 sections 3.6, 3.10.4, 3.10.7.4 "fifth" and "eighth").
    (_S.ESTABLISHED, _E.CLOSE): _S.FIN_WAIT_1,
    (_S.CLOSE_WAIT, _E.CLOSE): _S.LAST_ACK,
    (_S.SYN_RECEIVED, _E.RCV_FIN): _S.CLOSE_WAIT,
    (_S.ESTABLISHED, _E.RCV_FIN): _S.CLOSE_WAIT,
    (_S.FIN_WAIT_1, _E.RCV_ACK_OF_FIN): _S.FIN_WAIT_2,
    (_S.FIN_WAIT_1, _E.RCV_FIN): _S.CLOSING,  # simultaneous close (figure 13)
    (_S.FIN_WAIT_2, _E.RCV_FIN): _S.TIME_WAIT,
    (_S.CLOSING, _E.RCV_ACK_OF_FIN): _S.TIME_WAIT,
    (_S.LAST_ACK, _E.RCV_ACK_OF_FIN): _S.CLOSED,
    (_S.TIME_WAIT, _E.TIMEOUT_2MSL): _S.CLOSED,
}


def next_state(state: State, event: Event) -> State:
    """Return the state ``event`` leads to from ``state``; an arc not in the table is a bug."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise AssertionError(f"no TCP transition from {state.value} on {event.name}") from None


OUTPUT_STATES: Final = frozenset(
    (_S.ESTABLISHED, _S.CLOSE_WAIT, _S.FIN_WAIT_1, _S.CLOSING, _S.LAST_ACK)
)
"""States that may still send data or a FIN (RFC 9293 section 3.10.2)."""
RECEIVING_STATES: Final = frozenset((_S.ESTABLISHED, _S.FIN_WAIT_1, _S.FIN_WAIT_2))
"""States in which segment text is accepted (RFC 9293 section 3.10.7.4, "seventh")."""
WRITABLE_STATES: Final = frozenset((_S.SYN_SENT, _S.SYN_RECEIVED, _S.ESTABLISHED, _S.CLOSE_WAIT))
"""States in which the application may queue data (RFC 9293 section 3.10.2)."""
