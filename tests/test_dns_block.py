"""The block handler over the real chain: answers for blocked names, allow rules, views."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord
from test_dns_cache import Zone, run

from netstack.clock import ManualClock
from netstack.counters import Counters
from olm.config import BlockSettings, Settings, ViewSettings
from olm.dns.blocklist import Blocklists, DomainSet, parse_list, wire_name
from olm.dns.engine import Engine
from olm.dns.handlers import Handler, link
from olm.dns.handlers.admission import Admission, Gate
from olm.dns.handlers.block import Block
from olm.dns.handlers.sanitise import Sanitise
from olm.dns.handlers.views import View, Views
from olm.dns.localfiles import Lines
from olm.dns.pipeline import DataError, Pipeline
from olm.dns.request import UDP, Request

ADS = parse_list("0.0.0.0 ads.example\n||tracker.example^\n@@||ok.tracker.example^\n", "ads")
MALWARE = parse_list("bad.example\n", "malware")


def lists(allow: list[str] | None = None) -> Blocklists:
    return Blocklists(
        [("ads", DomainSet.build(ADS.block)), ("malware", DomainSet.build(MALWARE.block))],
        DomainSet.build([wire_name(a) for a in (allow or [])] + ADS.allow),
    )


class BlockRig:
    def __init__(self, block: Block, views: list[View] | None = None) -> None:
        self.counters = Counters("dns")
        self.clock = ManualClock(0.0)
        self.zone = Zone(self.counters)
        c = self.counters
        handlers: list[Handler] = [Sanitise(c), Admission(c, Gate(10))]
        if views:
            handlers.append(Views(c, Lines(), views))
        block.counters = c.child("block")
        handlers += [block, self.zone]
        self.engine = Engine(link(handlers, c), self.clock, c, Gate(10))

    async def ask(self, name: str, qtype: str = "A", client: str = "10.0.0.9") -> DNSRecord:
        record = DNSRecord.question(name, qtype)
        record.add_ar(EDNS0(udp_len=1232))
        packed = ipaddress.ip_address(client).packed
        out = self.engine.handle(Request(bytes(record.pack()), packed, 1, b"", UDP))
        if out is not None and not isinstance(out, bytes):
            out = await out
        assert out is not None
        return DNSRecord.parse(out)


def ede(reply: DNSRecord) -> list[tuple[int, bytes]]:
    (opt,) = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    return [(int.from_bytes(o.data[:2], "big"), o.data[2:]) for o in opt.rdata if o.code == 15]


def test_nxdomain_by_default_with_soa_and_ede_15_and_counters_per_list() -> None:
    async def main() -> None:
        rig = BlockRig(Block(Counters(), lists(), ["nxdomain"], 120))
        reply = await rig.ask("www.ads.example")
        assert reply.header.rcode == RCODE.NXDOMAIN and reply.header.aa == 0
        assert reply.auth[0].rtype == QTYPE.SOA and reply.auth[0].ttl == 120
        assert ede(reply) == [(15, b"blocked by list ads")]
        assert (await rig.ask("bad.example", "MX")).header.rcode == RCODE.NXDOMAIN
        assert (await rig.ask("x.tracker.example")).header.rcode == RCODE.NXDOMAIN
        assert (await rig.ask("ok.tracker.example")).header.rcode == RCODE.NOERROR  # @@ rule
        assert (await rig.ask("notads.example")).header.rcode == RCODE.NOERROR
        assert rig.zone.asked == ["ok.tracker.example.", "notads.example."]
        assert rig.counters.get("block.list.ads") == 2
        assert rig.counters.get("block.list.malware") == 1

    run(main())


@pytest.mark.parametrize(
    ("answer", "qtype", "rcode", "data"),
    [
        (["refused"], "A", RCODE.REFUSED, []),
        (["null"], "A", RCODE.NOERROR, ["0.0.0.0"]),
        (["null"], "AAAA", RCODE.NOERROR, ["::"]),
        (["null"], "TXT", RCODE.NOERROR, []),
        (["192.0.2.66", "2001:db8::66"], "A", RCODE.NOERROR, ["192.0.2.66"]),
        (["192.0.2.66", "2001:db8::66"], "AAAA", RCODE.NOERROR, ["2001:db8::66"]),
    ],
)
def test_answer_modes(answer: list[str], qtype: str, rcode: int, data: list[str]) -> None:
    async def main() -> None:
        rig = BlockRig(Block(Counters(), lists(), answer, 60))
        reply = await rig.ask("ads.example", qtype)
        assert reply.header.rcode == rcode
        assert [str(rr.rdata) for rr in reply.rr] == data
        assert ede(reply)[0][0] == 15

    run(main())


def test_allowlist_wins_over_every_list_and_lists_can_be_replaced() -> None:
    async def main() -> None:
        block = Block(Counters(), lists(allow=["bad.example"]), ["nxdomain"], 60)
        rig = BlockRig(block)
        assert (await rig.ask("bad.example")).header.rcode == RCODE.NOERROR
        assert (await rig.ask("ads.example")).header.rcode == RCODE.NXDOMAIN
        block.lists = Blocklists([("ads", DomainSet.build([]))])  # a refreshed, empty list
        assert (await rig.ask("ads.example")).header.rcode == RCODE.NOERROR

    run(main())


def test_a_view_applies_only_its_lists() -> None:
    async def main() -> None:
        kids = View("kids", (ipaddress.ip_network("10.1.0.0/16"),), None, frozenset({"ads"}))
        rig = BlockRig(Block(Counters(), lists(), ["nxdomain"], 60), [kids])
        assert (await rig.ask("bad.example", client="10.1.0.5")).header.rcode == RCODE.NOERROR
        assert (await rig.ask("ads.example", client="10.1.0.5")).header.rcode == RCODE.NXDOMAIN
        assert (await rig.ask("bad.example", client="10.9.0.5")).header.rcode == RCODE.NXDOMAIN

    run(main())


def build_pipeline(tmp_path: Path, **block: Any) -> Pipeline:
    settings = Settings(
        upstreams=["127.0.0.1:9"],
        state_dir=str(tmp_path / "state"),
        block=BlockSettings(**block),
        views=[ViewSettings("kids", ("10.1.0.0/16",), blocklists=("ads",))],
    )
    pipeline = Pipeline(settings, ManualClock(), Counters("dns"))
    pipeline.build(settings)
    return pipeline


def test_pipeline_reads_lists_and_reuses_unchanged_files(tmp_path: Path) -> None:
    ads = tmp_path / "ads.txt"
    ads.write_text("||ads.example^\n")
    allow = tmp_path / "allow.txt"
    allow.write_text("keep.ads.example\n")
    pipeline = build_pipeline(tmp_path, lists=(str(ads),), allow=(str(allow), "x.ads.example"))
    block = pipeline.block
    assert block is not None
    assert block.verdict(wire_name("www.ads.example"), None) == "ads"
    assert block.verdict(wire_name("keep.ads.example"), None) is None
    assert block.verdict(wire_name("x.ads.example"), None) is None
    first = block.lists.lists[0][1]
    settings = pipeline.settings
    pipeline.build(settings)
    assert pipeline.block is not None and pipeline.block.lists.lists[0][1] is first  # not re-read
    ads.write_text("||ads.example^\n||more.example^\n")
    pipeline.build(settings)
    assert pipeline.block.verdict(wire_name("more.example"), None) == "ads"


def test_a_bad_list_is_a_data_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ads.example\n\x00\x01garbage\n")
    with pytest.raises(DataError, match=r"bad\.txt"):
        build_pipeline(tmp_path, lists=(str(bad),))
    with pytest.raises(DataError, match=r"missing\.txt"):
        build_pipeline(tmp_path, lists=(str(tmp_path / "missing.txt"),))
