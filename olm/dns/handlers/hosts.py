"""The hosts handler: names from hosts files (hosts(5)), answered for A, AAAA and PTR.

As CoreDNS's ``hosts`` plugin: a name in a hosts file gets its addresses of the asked family
(AA=1, TTL ``hosts_ttl``); a name there with only addresses of the other family gets NODATA
with a synthesised SOA (RFC 2308); the reverse name of an address gets its first canonical name
as PTR. Other types, and names not in the files, go on down the chain.
"""

from __future__ import annotations

from typing import Final

from netstack.counters import Counters
from olm.dns.handlers import Handler, Result
from olm.dns.local import LocalData, LocalRecord, local_answer
from olm.dns.localfiles import HostsData
from olm.dns.request import Request

__all__ = ["Hosts"]

_A: Final = 1
_PTR: Final = 12
_AAAA: Final = 28
_MEMO_LIMIT: Final = 20_000
_NOT_OURS: Final = object()
_CLASS_IN: Final = b"\x00\x01"


class Hosts(Handler):
    """Answers from hosts files; counters ``answer``, ``nodata``, ``ptr``."""

    name = "hosts"

    def __init__(self, counters: Counters, data: HostsData, ttl: int, negative_ttl: int) -> None:
        super().__init__(counters)
        self.data = data
        self.ttl = ttl
        self._soa = LocalData(negative_ttl=negative_ttl)  # synthesises SOAs for NODATA
        self._memo: dict[bytes, object] = {}

    def handle(self, request: Request) -> Result:
        """Answer a hosts name or address, or pass the request on."""
        found = self._memo.get(request.key)
        if found is None:
            found = self._answer(request)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[request.key] = found
        if found is _NOT_OURS:
            return self.next.handle(request)
        return found  # type: ignore[return-value]

    def _answer(self, request: Request) -> object:
        qtype = request.qtype
        wire = request.wire
        if qtype not in (_A, _AAAA, _PTR) or wire[request.qend - 2 : request.qend] != _CLASS_IN:
            return _NOT_OURS
        name = request.key[: request.nend - 12]
        question = wire[12 : request.qend]
        if qtype == _PTR:
            target = self.data.names.get(name)
            if target is None:
                return _NOT_OURS
            self.counters.inc("ptr")
            return local_answer(question, name, [(name, LocalRecord(_PTR, self.ttl, target))])
        addresses = self.data.addresses.get(name)
        if addresses is None:
            return _NOT_OURS
        size = 4 if qtype == _A else 16
        records = [(name, LocalRecord(qtype, self.ttl, a)) for a in addresses if len(a) == size]
        if records:
            self.counters.inc("answer")
            return local_answer(question, name, records)
        self.counters.inc("nodata")
        return local_answer(question, name, [], authority=[self._soa.synthetic_soa(name)])
