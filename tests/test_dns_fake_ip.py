"""The fake-IP handler over the real chain, and its pool kept across reloads and restarts."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from dnslib import QTYPE, RCODE, DNSRecord
from test_dns_cache import Zone, run

from netstack.clock import ManualClock
from netstack.counters import Counters
from olm.config import FakeIpSettings, Settings
from olm.dns.engine import Engine
from olm.dns.fakeip import FakeIpPool
from olm.dns.handlers import link
from olm.dns.handlers.admission import Admission, Gate
from olm.dns.handlers.fake_ip import FakeIp
from olm.dns.handlers.sanitise import Sanitise
from olm.dns.pipeline import Pipeline
from olm.dns.request import Request


class FakeRig:
    def __init__(
        self, pool: FakeIpPool, suffixes: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
    ) -> None:
        c = self.counters = Counters("dns")
        self.zone = Zone(c)
        gate = Gate(10)
        fake = FakeIp(c, pool, suffixes, exclude)
        chain = link([Sanitise(c), Admission(c, gate), fake, self.zone], c)
        self.engine = Engine(chain, ManualClock(), c, gate)

    async def ask(self, name: str, qtype: str = "A") -> DNSRecord:
        out = self.engine.handle(Request(bytes(DNSRecord.question(name, qtype).pack())))
        if out is not None and not isinstance(out, bytes):
            out = await out
        assert out is not None
        return DNSRecord.parse(out)


def test_matching_names_get_stable_pool_addresses_with_ttl_1_and_ptr_back() -> None:
    async def main() -> None:
        pool = FakeIpPool("198.18.0.0/15", "fd00:198:18::/64")
        rig = FakeRig(pool, ("proxied.test",), ("direct.proxied.test",))
        first = await rig.ask("www.proxied.test")
        (rr,) = first.rr
        address = ipaddress.ip_address(str(rr.rdata))
        assert address in ipaddress.ip_network("198.18.0.0/15") and rr.ttl == 1
        assert first.header.aa == 0
        again = await rig.ask("WWW.Proxied.Test")
        assert str(again.rr[0].rdata) == str(address)  # the same name, the same address
        v6 = await rig.ask("www.proxied.test", "AAAA")
        assert ipaddress.ip_address(str(v6.rr[0].rdata)) in ipaddress.ip_network("fd00:198:18::/64")
        ptr = await rig.ask(address.reverse_pointer, "PTR")
        assert str(ptr.rr[0].rdata) == "www.proxied.test."
        unused = await rig.ask(ipaddress.ip_address("198.19.255.1").reverse_pointer, "PTR")
        assert unused.header.rcode == RCODE.NXDOMAIN
        # Excluded, outside the suffixes, and other types: the rest of the chain answers.
        await rig.ask("x.direct.proxied.test")
        await rig.ask("www.elsewhere.test")
        await rig.ask("www.proxied.test", "MX")
        await rig.ask(ipaddress.ip_address("192.0.2.1").reverse_pointer, "PTR")
        assert rig.zone.asked == [
            "x.direct.proxied.test.",
            "www.elsewhere.test.",
            "www.proxied.test.",
            "1.2.0.192.in-addr.arpa.",
        ]
        assert rig.counters.get("fake_ip.answer") == 3 and rig.counters.get("fake_ip.ptr") == 1

    run(main())


def test_without_an_ipv6_pool_aaaa_is_nodata_so_clients_use_ipv4() -> None:
    async def main() -> None:
        rig = FakeRig(FakeIpPool("198.18.0.0/24"))
        reply = await rig.ask("anything.test", "AAAA")
        assert reply.header.rcode == RCODE.NOERROR and reply.rr == []
        assert reply.auth[0].rtype == QTYPE.SOA
        assert rig.zone.asked == []

    run(main())


def test_the_table_survives_a_reload_and_a_restart(tmp_path: Path) -> None:
    settings = Settings(
        upstreams=["127.0.0.1:9"],
        state_dir=str(tmp_path),
        fake_ip=FakeIpSettings(enabled=True, ipv4_range="198.18.0.0/24"),
    )

    def address(pipeline: Pipeline) -> str:
        chain = pipeline.build(settings)
        engine = Engine(chain, ManualClock(), pipeline.counters, pipeline.gate)
        out = engine.handle(Request(bytes(DNSRecord.question("kept.test").pack())))
        assert isinstance(out, bytes)
        return str(DNSRecord.parse(out).rr[0].rdata)

    first = Pipeline(settings, ManualClock(), Counters("dns"))
    got = address(first)
    pool = first.fake_pool
    assert address(first) == got and first.fake_pool is pool  # a reload keeps the pool
    for i in range(5):
        assert pool is not None
        pool.address_for(f"other{i}.test", 4)
    first.close()  # saves the table
    assert (tmp_path / "fake-ip.json").exists()
    second = Pipeline(settings, ManualClock(), Counters("dns"))
    assert address(second) == got  # the same address after a restart
    assert second.fake_pool is not None and len(second.fake_pool) == 6
