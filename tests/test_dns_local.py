"""Local answers: records files, wildcards, negative answers, CNAME chains, lines and views,
hosts files, split DNS, and reloads, as handlers of the engine (no network).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dns_cache import Zone, run

from netstack.clock import ManualClock
from netstack.counters import Counters
from olm.dns.engine import Engine
from olm.dns.handlers import Handler, link
from olm.dns.handlers.admission import Admission, Gate
from olm.dns.handlers.hosts import Hosts
from olm.dns.handlers.records import Records
from olm.dns.handlers.sanitise import Sanitise
from olm.dns.handlers.split import Split
from olm.dns.handlers.views import View, Views
from olm.dns.local import LocalData, Outcome
from olm.dns.localfiles import (
    DataError,
    Lines,
    RecordSpec,
    build_local_data,
    parse_records,
    read_hosts_files,
    read_lines_file,
    read_records_file,
)
from olm.dns.rdata import name_from_text
from olm.dns.request import UDP, Request

# The Pipy proxy's example, as its article describes it: one name, a record per line and one
# for everyone; line1 and line2 by client address.
PIPY_RECORDS = [
    {
        "name": "www.example.com",
        "type": "A",
        "ttl": 300,
        "rdata": "192.168.1.1",
        "labels": ["line1"],
    },
    {
        "name": "www.example.com",
        "type": "A",
        "ttl": 300,
        "rdata": "192.168.1.2",
        "labels": ["line2"],
    },
    {"name": "www.example.com", "type": "A", "ttl": 300, "rdata": "192.168.1.3"},
    {
        "name": "example.com",
        "type": "MX",
        "ttl": 300,
        "rdata": {"preference": 10, "exchange": "mail.example.com"},
    },
    {"name": "example.com", "type": "TXT", "ttl": 300, "rdata": "v=spf1 -all"},
    {"name": "example.com", "type": "NS", "ttl": 300, "rdata": "ns1.example.com"},
    {
        "name": "_sip._tcp.example.com",
        "type": "SRV",
        "ttl": 300,
        "rdata": {"priority": 10, "weight": 5, "port": 5060, "target": "sip.example.com"},
    },
    {"name": "blocked.example.com", "type": "A", "ttl": 300, "status": "deny"},
]
PIPY_LINES = {"line1": ["192.168.1.110/32"], "line2": ["127.0.0.1/32", "fd00::/8"]}


def specs(items: list[dict[str, Any]]) -> list[RecordSpec]:
    return parse_records(enumerate(items, 1), "test")


def data(items: list[dict[str, Any]], **options: Any) -> LocalData:
    return build_local_data(specs(items), **options)


def wire(name: str) -> bytes:
    return name_from_text(name)


def query(name: str, qtype: str = "A", *, edns: bool = False, qid: int = 7) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.header.id = qid
    if edns:
        record.add_ar(EDNS0(udp_len=1232))
    return bytes(record.pack())


class LocalRig:
    """An engine whose chain is [sanitise, admission, views?, records?, hosts?, split?, zone]."""

    def __init__(
        self,
        local: LocalData | None = None,
        *,
        lines: Lines | None = None,
        views: list[View] | None = None,
        hosts: Any = None,
        routes: dict[str, Any] | None = None,
    ) -> None:
        self.clock = ManualClock(100.0)
        self.counters = Counters("dns")
        self.gate = Gate(100)
        self.zone = Zone(self.counters)
        c = self.counters
        handlers: list[Handler] = [Sanitise(c), Admission(c, self.gate)]
        if lines is not None or views:
            handlers.append(Views(c, lines or Lines(), views or []))
        if local is not None:
            handlers.append(Records(c, local, self.clock))
        if hosts is not None:
            handlers.append(Hosts(c, hosts, 300, 60))
        if routes:
            handlers.append(Split(c, routes))
        handlers.append(self.zone)
        self.engine = Engine(link(handlers, c), self.clock, c, self.gate)

    async def ask(
        self, name: str, qtype: str = "A", client: str = "10.9.9.9", **kw: Any
    ) -> DNSRecord:
        packed = ipaddress.ip_address(client).packed
        request = Request(query(name, qtype, **kw), packed, 5353, b"\x0a\x1e\x1e\x1e", UDP)
        out = self.engine.handle(request)
        if out is not None and not isinstance(out, bytes):
            out = await out
        assert out is not None
        return DNSRecord.parse(out)


def addresses(reply: DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA))


# -- the records file ---------------------------------------------------------------------------


def test_pipy_json_records_file_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "records.json"
    text = json.dumps(PIPY_RECORDS, indent=2)
    path.write_text(text)
    starts = [n for n, line in enumerate(text.splitlines(), 1) if line == "  {"]
    loaded = read_records_file(path)
    assert [s.type for s in loaded] == ["A", "A", "A", "MX", "TXT", "NS", "SRV", "A"]
    assert loaded[0].labels == ("line1",) and loaded[7].deny
    assert loaded[3].origin == f"{path}:{starts[3]}"  # the line its object starts on
    local = build_local_data(loaded)
    assert len(local) == 7


def test_toml_records_file_and_soa_caa(tmp_path: Path) -> None:
    path = tmp_path / "records.toml"
    path.write_text(
        '[[records]]\nname = "corp.test"\ntype = "SOA"\nttl = 3600\n'
        'rdata = { mname = "ns.corp.test", rname = "admin.corp.test", serial = 7, '
        "refresh = 3600, retry = 600, expire = 86400, minimum = 30 }\n\n"
        '[[records]]\nname = "corp.test"\ntype = "CAA"\n'
        'rdata = { flags = 0, tag = "issue", value = "ca.example" }\n'
    )
    local = build_local_data(read_records_file(path))
    assert wire("corp.test") in local.zones  # a SOA makes a zone
    found = local.lookup(wire("corp.test"), 257)
    assert found.outcome is Outcome.ANSWER and found.records[0][1].rdata.endswith(b"ca.example")


@pytest.mark.parametrize(
    ("record", "field", "line"),
    [
        # Written with indent=1 after one good record: "{" on line 3, then a key a line.
        ({"name": "a.test", "type": "A", "rdata": "2001:db8::1"}, "rdata", 6),
        ({"name": "a.test", "type": "MX", "rdata": {"preference": 10}}, "rdata.exchange", 6),
        ({"name": "a.test", "type": "BOGUS", "rdata": "x"}, "type", 5),
        ({"name": "a.test", "type": "A", "ttl": -1, "rdata": "192.0.2.1"}, "ttl", 6),
        ({"name": "a.test", "type": "A", "rdata": "192.0.2.1", "colour": "red"}, "colour", 7),
    ],
)
def test_bad_record_names_file_line_and_field(
    tmp_path: Path, record: dict[str, Any], field: str, line: int
) -> None:
    path = tmp_path / "records.json"
    good = {"name": "ok.test", "type": "A", "rdata": "192.0.2.9"}
    path.write_text("[\n" + json.dumps(good) + ",\n" + json.dumps(record, indent=1) + "\n]\n")
    with pytest.raises(DataError) as err:
        read_records_file(path)
    assert str(err.value).startswith(f"{path}:{line}: field {field!r}"), str(err.value)


def test_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "records.json"
    path.write_text('[\n {"name": "a.test",\n  "type": "A" "rdata": "192.0.2.1"}\n]\n')
    with pytest.raises(DataError, match=rf"{path}:3: not valid JSON"):
        read_records_file(path)


def test_cname_beside_other_data_is_refused() -> None:
    with pytest.raises(DataError, match="has a CNAME and other data"):
        data(
            [
                {"name": "a.test", "type": "CNAME", "rdata": "b.test"},
                {"name": "a.test", "type": "A", "rdata": "192.0.2.1"},
            ]
        )


# -- wildcards, negative answers, CNAME chains ----------------------------------------------------


WILD = [
    {"name": "*.example.test", "type": "A", "rdata": "192.0.2.1"},
    {"name": "explicit.example.test", "type": "TXT", "rdata": "here"},
    {"name": "host.sub.example.test", "type": "A", "rdata": "192.0.2.2"},
    {"name": "*.deep.example.test", "type": "AAAA", "rdata": "2001:db8::1"},
]


@pytest.mark.parametrize(
    ("name", "qtype", "outcome", "owner_is_query"),
    [
        ("anything.example.test", 1, Outcome.ANSWER, True),  # synthesised (RFC 4592 3.3.1)
        ("a.b.example.test", 1, Outcome.ANSWER, True),  # closest encloser example.test
        ("explicit.example.test", 1, Outcome.NODATA, False),  # explicit name blocks the wildcard
        ("x.explicit.example.test", 1, Outcome.NXDOMAIN, False),  # its own wildcard: none
        ("sub.example.test", 1, Outcome.NODATA, False),  # an empty non-terminal exists
        ("x.sub.example.test", 1, Outcome.NXDOMAIN, False),  # closest encloser sub: no *.sub
        ("x.deep.example.test", 28, Outcome.ANSWER, True),
        ("x.deep.example.test", 1, Outcome.NODATA, False),  # the wildcard has no A
        ("elsewhere.test", 1, Outcome.NOT_OURS, False),
    ],
)
def test_wildcards_follow_the_closest_encloser(
    name: str, qtype: int, outcome: Outcome, owner_is_query: bool
) -> None:
    local = data(WILD, zones=["example.test"])
    found = local.lookup(wire(name), qtype)
    assert found.outcome is outcome
    if outcome is Outcome.ANSWER:
        assert [owner for owner, _ in found.records] == [wire(name)]
    if outcome in (Outcome.NODATA, Outcome.NXDOMAIN):
        assert found.soa.startswith(wire("example.test"))  # the zone's (synthesised) SOA


def test_negative_answers_carry_a_soa_and_aa() -> None:
    async def main() -> None:
        rig = LocalRig(data(WILD, zones=["example.test"], negative_ttl=45))
        nx = await rig.ask("x.sub.example.test")
        assert nx.header.rcode == RCODE.NXDOMAIN and nx.header.aa == 1
        (soa,) = nx.auth
        assert soa.rtype == QTYPE.SOA and soa.ttl == 45 and soa.rdata.times[-1] == 45
        nodata = await rig.ask("explicit.example.test")
        assert nodata.header.rcode == RCODE.NOERROR and nodata.rr == [] and len(nodata.auth) == 1
        # Outside any zone a local name without the type still gets a (synthesised) SOA.
        rig2 = LocalRig(data([{"name": "only.test", "type": "TXT", "rdata": "x"}]))
        other = await rig2.ask("only.test", "A")
        assert other.header.rcode == RCODE.NOERROR and other.auth[0].rtype == QTYPE.SOA
        assert rig.zone.asked == [] and rig2.zone.asked == []

    run(main())


def test_cname_chains_local_to_local_to_upstream_and_loops() -> None:
    records = [
        {"name": "a.test", "type": "CNAME", "rdata": "b.test"},
        {"name": "b.test", "type": "CNAME", "rdata": "c.test"},
        {"name": "c.test", "type": "A", "rdata": "192.0.2.3"},
        {"name": "out.test", "type": "CNAME", "rdata": "www.upstream.example"},
        {"name": "loop1.test", "type": "CNAME", "rdata": "loop2.test"},
        {"name": "loop2.test", "type": "CNAME", "rdata": "loop1.test"},
    ]

    async def main() -> None:
        rig = LocalRig(data(records))
        chain = await rig.ask("a.test")
        assert [QTYPE[rr.rtype] for rr in chain.rr] == ["CNAME", "CNAME", "A"]
        assert [str(rr.rname) for rr in chain.rr] == ["a.test.", "b.test.", "c.test."]
        assert chain.header.aa == 1 and rig.zone.asked == []
        out = await rig.ask("out.test", edns=True)
        assert rig.zone.asked == ["www.upstream.example."]  # the rest of the chain, once
        assert [QTYPE[rr.rtype] for rr in out.rr] == ["CNAME", "A"]
        assert str(out.rr[1].rname) == "www.upstream.example."
        assert addresses(out) == ["192.0.2.1"] and out.header.rcode == RCODE.NOERROR
        loop = await rig.ask("loop1.test")
        assert loop.header.rcode == RCODE.SERVFAIL  # refused, never followed forever
        assert rig.counters.get("records.loop") == 1 and rig.counters.get("records.chased") == 1

    run(main())


def test_cname_to_an_upstream_nxdomain_keeps_the_chain_and_the_rcode() -> None:
    async def main() -> None:
        rig = LocalRig(data([{"name": "gone.test", "type": "CNAME", "rdata": "x.missing.test"}]))
        rig.zone.nxdomain.add("x.missing.test.")
        reply = await rig.ask("gone.test")
        assert reply.header.rcode == RCODE.NXDOMAIN
        assert [QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME"]
        assert [QTYPE[rr.rtype] for rr in reply.auth] == ["SOA"]

    run(main())


def test_deny_status_and_deny_list_are_refused() -> None:
    async def main() -> None:
        rig = LocalRig(data(PIPY_RECORDS, deny=["*.ads.test", "evil.test"]))
        for name in ("blocked.example.com", "evil.test", "x.ads.test"):
            assert (await rig.ask(name)).header.rcode == RCODE.REFUSED
        assert (await rig.ask("ads.test")).header.rcode == RCODE.NOERROR  # from upstream
        assert rig.counters.get("records.denied") == 3

    run(main())


def test_auto_ptr() -> None:
    local = data(
        [
            {"name": "srv.test", "type": "A", "rdata": "192.0.2.7"},
            {"name": "srv6.test", "type": "AAAA", "rdata": "2001:db8::7"},
        ],
        auto_ptr=True,
    )
    found = local.lookup(wire("7.2.0.192.in-addr.arpa"), 12)
    assert found.outcome is Outcome.ANSWER and found.records[0][1].rdata == wire("srv.test")
    v6 = "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    assert local.lookup(wire(v6), 12).records[0][1].rdata == wire("srv6.test")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "*"]), min_size=1, max_size=4), st.data())
def test_wildcard_matches_a_reference(labels: list[str], draws: st.DataObject) -> None:
    """RFC 4592 against a slow reference: the closest encloser's wildcard, or nothing."""
    owner = st.lists(st.sampled_from(["a", "b", "c", "*"]), min_size=1, max_size=3).map(
        lambda parts: ".".join(parts) + ".zone.test"
    )
    owners = draws.draw(st.lists(owner, max_size=6, unique=True))
    records = [{"name": o, "type": "A", "rdata": f"192.0.2.{i}"} for i, o in enumerate(owners)]
    local = data(records, zones=["zone.test"])
    qname = ".".join(labels) + ".zone.test"
    found = local.lookup(wire(qname), 1)
    names = set(owners)
    exists = {n.split(".", k)[-1] for n in names for k in range(n.count("."))} | names
    exists |= {"zone.test"}
    if qname in names:
        expected = qname
    elif qname in exists:
        expected = None
    else:
        parts = qname.split(".")
        suffixes = (".".join(parts[i:]) for i in range(1, len(parts)))
        encloser = next(suffix for suffix in suffixes if suffix in exists)
        expected = "*." + encloser if "*." + encloser in names else None
    if expected is None:
        assert found.outcome in (Outcome.NODATA, Outcome.NXDOMAIN)
    else:
        assert found.outcome is Outcome.ANSWER
        index = owners.index(expected)
        assert found.records[0][1].rdata == bytes([192, 0, 2, index])


# -- lines and views ----------------------------------------------------------------------------


def test_pipy_lines_give_the_three_answers_of_the_article(tmp_path: Path) -> None:
    path = tmp_path / "smart-line.json"
    path.write_text(json.dumps(PIPY_LINES))
    lines = read_lines_file(path)

    async def main() -> None:
        rig = LocalRig(data(PIPY_RECORDS), lines=lines)
        line1 = await rig.ask("www.example.com", client="192.168.1.110")
        line2 = await rig.ask("www.example.com", client="127.0.0.1")
        v6 = await rig.ask("www.example.com", client="fd00::5")
        nobody = await rig.ask("www.example.com", client="10.1.1.1")
        assert addresses(line1) == ["192.168.1.1", "192.168.1.3"]
        assert addresses(line2) == ["192.168.1.2", "192.168.1.3"]
        assert addresses(v6) == ["192.168.1.2", "192.168.1.3"]
        assert addresses(nobody) == ["192.168.1.1", "192.168.1.2", "192.168.1.3"]
        mx = await rig.ask("example.com", "MX")
        assert str(mx.rr[0].rdata) == "10 mail.example.com." and mx.header.aa == 1
        srv = await rig.ask("_sip._tcp.example.com", "SRV")
        assert str(srv.rr[0].rdata) == "10 5 5060 sip.example.com."
        assert rig.zone.asked == []

    run(main())


def test_overlapping_lines_give_every_label() -> None:
    lines = Lines.from_mapping({"wide": ["10.0.0.0/8"], "narrow": ["10.1.0.0/16"]}, "test")
    assert lines.labels_of(bytes([10, 1, 2, 3])) == frozenset({"wide", "narrow"})
    assert lines.labels_of(bytes([10, 2, 2, 3])) == frozenset({"wide"})
    assert lines.labels_of(bytes([11, 0, 0, 1])) is None
    with pytest.raises(DataError, match="'wide': 'nope' is not an IP prefix"):
        Lines.from_mapping({"wide": ["nope"]}, "test")


def test_a_view_chooses_the_upstream_group_most_specific_first() -> None:
    class Named:
        def __init__(self, name: str) -> None:
            self.name = name
            self.tag = b"@" + name.encode()

    wide, narrow = Named("wide"), Named("narrow")
    views = [
        View("office", (ipaddress.ip_network("10.0.0.0/8"),), wide),  # type: ignore[arg-type]
        View("lab", (ipaddress.ip_network("10.1.0.0/16"),), narrow),  # type: ignore[arg-type]
    ]
    handler = Views(Counters(), Lines(), views)
    assert handler.classify(bytes([10, 1, 0, 1])).group is narrow
    assert handler.classify(bytes([10, 2, 0, 1])).group is wide
    assert handler.classify(bytes([10, 2, 0, 1])).lines == frozenset({"office"})
    assert handler.classify(bytes([192, 0, 2, 1])).group is None


# -- hosts files --------------------------------------------------------------------------------


def test_hosts_files_answer_a_aaaa_ptr_and_nodata(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text(
        "# comment\n127.0.0.1 localhost\n192.0.2.5  printer.lan printer  # office\n"
        "2001:db8::5 printer.lan\n192.0.2.6 nas.lan\n"
    )
    hosts = read_hosts_files([path])

    async def main() -> None:
        rig = LocalRig(hosts=hosts)
        assert addresses(await rig.ask("printer.lan")) == ["192.0.2.5"]
        assert addresses(await rig.ask("PRINTER", "A")) == ["192.0.2.5"]
        assert addresses(await rig.ask("printer.lan", "AAAA")) == ["2001:db8::5"]
        nodata = await rig.ask("nas.lan", "AAAA")
        assert nodata.rr == [] and nodata.auth[0].rtype == QTYPE.SOA
        ptr = await rig.ask("5.2.0.192.in-addr.arpa", "PTR")
        assert str(ptr.rr[0].rdata) == "printer.lan."
        await rig.ask("printer.lan", "MX")  # not for hosts: passed on
        assert rig.zone.asked == ["printer.lan."]

    run(main())


def test_bad_hosts_line_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("192.0.2.1 ok\n999.1.1.1 bad\n")
    with pytest.raises(DataError, match=rf"{path}:2: field 'address'"):
        read_hosts_files([path])


# -- split DNS ----------------------------------------------------------------------------------


def test_split_routes_by_the_longest_suffix_and_keys_the_cache_by_group() -> None:
    class Group:
        def __init__(self, name: str) -> None:
            self.name = name
            self.tag = b"@" + name.encode()

    corp, lab = Group("corp"), Group("lab")
    seen: list[tuple[str, object]] = []

    class Record(Handler):
        name = "record"

        def handle(self, request: Request) -> Any:
            seen.append((request.name, request.group))
            return self.next.handle(request)

    split = Split(Counters(), {"corp.test": corp, "lab.corp.test": lab})  # type: ignore[dict-item]
    record = Record(Counters())
    link([split, record], Counters())
    keys = []
    for name in ("x.corp.test", "y.lab.corp.test", "corp.test", "public.test", "notcorp.test"):
        request = Request(query(name))
        split.handle(request)
        keys.append(request.key)
    assert [g for _, g in seen] == [corp, lab, corp, None, None]
    assert keys[0].endswith(b"@corp") and keys[1].endswith(b"@lab") and b"@" not in keys[3]


# -- reloads ------------------------------------------------------------------------------------


def test_a_reload_during_a_burst_gives_old_or_new_data_never_a_mix() -> None:
    old = data(
        [
            {"name": "svc.test", "type": "A", "rdata": "192.0.2.1"},
            {"name": "svc.test", "type": "A", "rdata": "192.0.2.2"},
        ]
    )
    new = data(
        [
            {"name": "svc.test", "type": "A", "rdata": "192.0.2.3"},
            {"name": "svc.test", "type": "A", "rdata": "192.0.2.4"},
        ]
    )

    async def main() -> None:
        rig = LocalRig(old)
        c = rig.counters
        replies = []
        for i in range(400):
            if i == 200:
                rig.engine.chain = link(
                    [Sanitise(c), Admission(c, rig.gate), Records(c, new, rig.clock), rig.zone], c
                )
            replies.append(addresses(await rig.ask("svc.test", qid=i)))
        assert replies[:200] == [["192.0.2.1", "192.0.2.2"]] * 200
        assert replies[200:] == [["192.0.2.3", "192.0.2.4"]] * 200

    run(main())


def test_local_answers_are_rendered_like_cache_hits() -> None:
    """A local answer is bytes at once (no coroutine), with the client's ID and spelling."""
    local = data(PIPY_RECORDS)
    rig = LocalRig(local)
    request = Request(query("WWW.Example.COM", qid=0xABCD), b"\x0a\x00\x00\x01", 1, b"", UDP)
    out = rig.engine.handle(request)
    assert isinstance(out, bytes)
    reply = DNSRecord.parse(out)
    assert reply.header.id == 0xABCD and reply.q.qname.label == (b"WWW", b"Example", b"COM")
    assert reply.header.aa == 1 and reply.header.ra == 1
    again = rig.engine.handle(Request(query("www.example.com", qid=1)))
    assert isinstance(again, bytes) and rig.counters.get("records.answer") == 1  # built once
