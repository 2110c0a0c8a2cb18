"""The views handler: which client this is, and what it sees (lines, views).

Clients are grouped by source prefix, from the lines file (the Pipy proxy's "smart line") and
from ``[[views]]``. A client belongs to every group whose prefix holds its address; records with
labels are shown to the clients of those labels (:mod:`olm.dns.local`). A view may also choose
the upstream group and the blocklists of its clients: the most specific view (longest prefix)
that chooses one wins. The handler puts a :class:`ClientView` on ``request.view``, and the
view's upstream group on ``request.group``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from netstack.counters import Counters
from olm.dns.handlers import Handler, Result
from olm.dns.localfiles import Lines
from olm.dns.request import Request
from olm.dns.upstream import UpstreamGroup

__all__ = ["ClientView", "View", "Views"]

#: Client addresses whose view is remembered; beyond it the memory starts over.
_MEMO_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class View:
    """A named group of clients and what it chooses (None: no choice, the default applies)."""

    name: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    group: UpstreamGroup | None = None
    blocklists: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class ClientView:
    """What the handlers after ``views`` know of a client.

    ``lines``: the labels of every group the client is in, None when it is in none (it then
    sees every record); ``group`` and ``blocklists``: the choices of its most specific view.
    """

    lines: frozenset[str] | None
    group: UpstreamGroup | None = None
    blocklists: frozenset[str] | None = None
    view: str | None = None


_NOBODY: Final = ClientView(None)


class Views(Handler):
    """Sets ``request.view`` (and ``request.group``) from the client's address.

    Counters: ``matched`` (clients in at least one group), ``unmatched``.
    """

    name = "views"

    def __init__(self, counters: Counters, lines: Lines, views: list[View]) -> None:
        super().__init__(counters)
        self.views = list(views)
        prefixes = list(lines.prefixes)
        prefixes += [(net, view.name) for view in views for net in view.networks]
        self.lines = Lines(tuple(sorted(prefixes, key=lambda pair: -pair[0].prefixlen)))
        # The views that choose something, most specific first.
        ranked = [(net.prefixlen, net, view) for view in views for net in view.networks]
        ranked.sort(key=lambda item: -item[0])
        self._choosers = [(net, view) for _, net, view in ranked]
        self._memo: dict[bytes, ClientView] = {}

    def classify(self, client: bytes) -> ClientView:
        """Return the ClientView of a packed client address (remembered)."""
        view = self._memo.get(client)
        if view is not None:
            return view
        lines = self.lines.labels_of(client) if client else None
        if lines is None:
            view = _NOBODY
        else:
            ip = ipaddress.ip_address(client)
            group = blocklists = None
            chosen = None
            for net, candidate in self._choosers:
                if ip not in net:
                    continue
                if group is None and candidate.group is not None:
                    group, chosen = candidate.group, candidate.name
                if blocklists is None and candidate.blocklists is not None:
                    blocklists = candidate.blocklists
                    chosen = chosen or candidate.name
            view = ClientView(lines, group, blocklists, chosen)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[client] = view
        return view

    def handle(self, request: Request) -> Result:
        """Attach the client's view and pass the request on."""
        view = self.classify(request.client)
        request.view = view
        values = self.counters.values
        if view.lines is None:
            values["unmatched"] = values.get("unmatched", 0) + 1
        else:
            values["matched"] = values.get("matched", 0) + 1
            if view.group is not None:
                request.route(view.group)
        return self.next.handle(request)
