"""The project's exception types.

Every wire-format parser raises :class:`ParseError` and nothing else on bad input. Its
``reason`` is a short dotted name that doubles as the counter a receive path bumps when it
drops the packet (``malformed.<reason>`` under the protocol's counter node).
"""

from __future__ import annotations


class ParseError(ValueError):
    """A packet or header could not be parsed; ``reason`` names the counter for the drop."""

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class StackError(Exception):
    """A request to the stack that cannot be carried out (bad address, no route, port in use)."""


class MessageTooLongError(StackError):
    """A datagram is larger than its protocol can carry (EMSGSIZE)."""


class NoRouteError(StackError):
    """No route leads to the destination (ENETUNREACH)."""


class AddressError(StackError):
    """An address is malformed or not assigned to the stack (EADDRNOTAVAIL)."""
