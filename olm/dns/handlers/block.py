"""The block handler: names on a blocklist get the configured answer, never the real one.

Lists come from :mod:`olm.dns.blocklist` (hosts, domain and adblock formats, files and URLs);
every listed name blocks itself and its subdomains, and the allowlist wins over every list. A
view may name the lists that apply to its clients. The answer for a blocked name (``[block]
answer``): NXDOMAIN (the default, with a SOA so that it is cached, RFC 2308), REFUSED, the null
address (0.0.0.0 for A, :: for AAAA, NODATA for other types) or given addresses; always with
Extended DNS Error 15, Blocked (RFC 8914), for clients that sent EDNS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

from netstack.counters import Counters
from olm.dns.answer import NXDOMAIN, REFUSED, Answer, ede_option, error_answer
from olm.dns.blocklist import Blocklists
from olm.dns.handlers import Handler, Result
from olm.dns.local import LocalData, LocalRecord, local_answer
from olm.dns.request import Request

__all__ = ["EDE_BLOCKED", "Block"]

EDE_BLOCKED: Final = 15  # RFC 8914 section 4.16
_A: Final = 1
_AAAA: Final = 28
_MEMO_LIMIT: Final = 50_000
_UNKNOWN: Final = "\x00unknown"  # not a list name: list names come from file names


class Block(Handler):
    """Answers blocked names; counters ``blocked``, ``list.<name>``, ``allowed``.

    ``lists`` may be replaced at any time (a refreshed list): one attribute, so a query sees
    one snapshot or the other.
    """

    name = "block"

    def __init__(
        self, counters: Counters, lists: Blocklists, answer: Sequence[str], ttl: int
    ) -> None:
        super().__init__(counters)
        self._lists = lists
        self.mode = answer[0] if answer[0] in ("nxdomain", "refused", "null") else "addresses"
        addresses = [ipaddress.ip_address(a) for a in answer] if self.mode == "addresses" else []
        if self.mode == "null":
            addresses = [ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")]
        self.v4 = [a.packed for a in addresses if a.version == 4]
        self.v6 = [a.packed for a in addresses if a.version == 6]
        self.ttl = ttl
        self._soa = LocalData(negative_ttl=ttl)
        self._verdicts: dict[object, str | None] = {}
        self._answers: dict[tuple[bytes, str], Answer] = {}

    @property
    def lists(self) -> Blocklists:
        """The lists in force."""
        return self._lists

    @lists.setter
    def lists(self, lists: Blocklists) -> None:
        self._lists = lists
        self._verdicts = {}  # what was decided on the old lists does not hold

    def verdict(self, name: bytes, only: frozenset[str] | None) -> str | None:
        """Return the list that blocks ``name`` (among ``only`` if given), None if none does."""
        lists = self._lists
        if only is None:
            return lists.match(name)
        if lists.allow.covers(name):
            return None
        for list_name, names in lists.lists:
            if list_name in only and names.covers(name):
                return list_name
        return None

    def handle(self, request: Request) -> Result:
        """Answer a blocked name, or pass the request on."""
        view = request.view
        only = view.blocklists if view is not None else None
        # Verdicts by the request's key (name, type, flags) when every list applies.
        memo_key: object = request.key if only is None else (request.key, only)
        verdicts = self._verdicts
        listed = verdicts.get(memo_key, _UNKNOWN)
        if listed is _UNKNOWN:
            name = request.key[: request.nend - 12]
            listed = self.verdict(name, only)
            if len(verdicts) >= _MEMO_LIMIT:
                verdicts.clear()
            verdicts[memo_key] = listed
        if listed is None:
            return self.next.handle(request)
        assert isinstance(listed, str)
        name = request.key[: request.nend - 12]
        counters = self.counters
        counters.inc("blocked")
        counters.inc("list." + listed)
        answer_key = (request.key, listed)
        answer = self._answers.get(answer_key)
        if answer is None:
            answer = self._blocked(request, name, listed)
            if len(self._answers) >= _MEMO_LIMIT:
                self._answers.clear()
            self._answers[answer_key] = answer
        return answer

    def _blocked(self, request: Request, name: bytes, listed: str) -> Answer:
        ede = ede_option(EDE_BLOCKED, f"blocked by list {listed}")
        question = request.wire[12 : request.qend]
        if self.mode == "refused":
            return error_answer(request, REFUSED, ede)
        soa = [self._soa.synthetic_soa(name)]
        # AA=0: the proxy is not the authority for a name it blocks.
        if self.mode == "nxdomain":
            answer = local_answer(
                question, name, [], rcode=NXDOMAIN, authority=soa, authoritative=False
            )
        else:
            qtype = request.qtype
            packed = self.v4 if qtype == _A else self.v6 if qtype == _AAAA else []
            records = [(name, LocalRecord(qtype, self.ttl, a)) for a in packed]
            answer = local_answer(
                question, name, records, authority=[] if records else soa, authoritative=False
            )
        answer.ede = ede
        return answer
