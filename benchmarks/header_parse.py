"""Cost of parsing one header, before and after the one-parse-per-header change, in one run.

    python benchmarks/header_parse.py                    # baseline: the revision before it
    python benchmarks/header_parse.py --baseline REV --rounds 15 --number 20000 --json

The baseline parsers are loaded from ``git show REV:netstack/header/{ipv4,ipv6,udp,tcp}.py`` as
stand-alone modules (they import only ``netstack.errors`` and ``netstack.header.checksum``
and ``numbers``, which the change left alone), so "before" and "after" run in the same process
over the same packets: IPv4 + UDP (a DNS query's size), IPv6 + UDP, IPv4 + TCP carrying the
NOP/NOP/Timestamps options of every segment from a Linux peer, and a SYN's full option set.

For each header it times, interleaved round by round, and reports the median nanoseconds per
call and the ratios:

* ``tuple``: the baseline's positional ``parse_fields`` (IPv4 and UDP had one; IPv6 and TCP
  did not);
* ``record``: the baseline's record parse (``IPv4Header.parse`` and so on);
* ``new``: the current one parse.

Then the receive path's shape: parse plus the field reads that follow it (IPv4), and for UDP
and TCP also the checksum check over the pseudo-header that follows every parse, the tuple
unpacked positionally against the new record read by name; and field access alone, by index
on a tuple against by name on the record.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from netstack.header import ipv4, ipv6, tcp, udp  # noqa: E402
from netstack.header.tcp import ACK, PSH, SYN, TCPHeader, TCPOptions, build_tcp  # noqa: E402

# The last revision with a record parser and a positional parser side by side.
DEFAULT_BASELINE = "d84a24f"

SRC = bytes((10, 0, 0, 1))
DST = bytes((10, 30, 30, 30))


def load_baseline(rev: str) -> dict[str, ModuleType]:
    """Import the header modules of revision ``rev`` under private names."""
    modules: dict[str, ModuleType] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("ipv4", "ipv6", "udp", "tcp"):
            text = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{rev}:netstack/header/{name}.py"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            path = Path(tmp) / f"baseline_{name}.py"
            path.write_text(text)
            spec = importlib.util.spec_from_file_location(f"baseline_{name}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            modules[name] = module
    return modules


def packets() -> dict[str, bytes]:
    """The inputs: an IPv4 datagram carrying UDP, a TCP data segment, a TCP SYN."""
    query = bytes(40)  # a DNS query's size
    udp_dgram = udp.build_udp(SRC, DST, 40000, 53, query)
    ts = TCPOptions(timestamp=(123456789, 987654321))
    data_seg = build_tcp(SRC, DST, TCPHeader(40000, 80, 1, 2, ACK | PSH, 502, 0, ts), bytes(100))
    syn_opts = TCPOptions(mss=1460, window_scale=7, sack_permitted=True, timestamp=(1, 0))
    syn = build_tcp(SRC, DST, TCPHeader(40000, 80, 1, 0, SYN, 64240, 0, syn_opts))
    src6, dst6 = bytes(15) + b"\x01", bytes(15) + b"\x02"
    return {
        "ipv4": ipv4.build_datagram(SRC, DST, 17, udp_dgram, dont_fragment=True),
        "ipv6": ipv6.IPv6Header(src6, dst6, 17).pack(udp.build_udp(src6, dst6, 40000, 53, query)),
        "udp": udp_dgram,
        "tcp": data_seg,
        "tcp_syn": syn,
    }


def cases(base: dict[str, ModuleType], pkt: dict[str, bytes]) -> dict[str, dict[str, Callable]]:
    """Per header, the callables to time; each parses one packet, called as the stack calls it."""
    b4, bu, bt = base["ipv4"], base["udp"], base["tcp"]
    # Module attributes are looked up on every call, as a receive path looks up its globals.
    old4, oldu, oldt, old6 = b4.IPv4Header, bu.UDPHeader, bt.TCPHeader, base["ipv6"].IPv6Header
    t4, tu = b4.parse_fields, bu.parse_fields
    old_udp_ok, old_tcp_ok = bu.udp_checksum_ok, bt.tcp_checksum_ok
    new4, newu, newt, new6 = ipv4.IPv4Header, udp.UDPHeader, tcp.TCPHeader, ipv6.IPv6Header
    new_udp_ok, new_tcp_ok = udp.udp_checksum_ok, tcp.tcp_checksum_ok
    p4, pu, pt, psyn, p6 = pkt["ipv4"], pkt["udp"], pkt["tcp"], pkt["tcp_syn"], pkt["ipv6"]

    def recv4_tuple() -> object:
        # network/ipv4.py before: the tuple unpacked, the flags word tested
        hl, total, ident, flags, _ttl, proto, src, dst = t4(p4)
        return hl, total, ident, flags & 0x3FFF, proto, src, dst

    def recv4_new() -> object:
        h = new4.parse(p4)
        return (
            h.header_length,
            h.total_length,
            h.ident,
            h.more_fragments or h.fragment_offset,
            h.protocol,
            h.src,
            h.dst,
        )

    def recvu_tuple() -> object:
        # transport/udp.py before: parse, checksum over the datagram, demultiplex by ports
        sport, dport, length, csum = tu(pu)
        return old_udp_ok(SRC, DST, pu[:length]), csum, sport, dport

    def recvu_new() -> object:
        h = newu.parse(pu)
        return new_udp_ok(SRC, DST, pu[: h.length]), h.checksum, h.src_port, h.dst_port

    def recvt_record() -> object:
        # transport/tcp/protocol.py: parse, checksum, demultiplex, then the options
        h = oldt.parse(pt)
        ok = old_tcp_ok(SRC, DST, pt)
        return ok, h.header_length, h.dst_port, h.src_port, h.options.timestamp

    def recvt_new() -> object:
        h = newt.parse(pt)
        ok = new_tcp_ok(SRC, DST, pt)
        return ok, h.header_length, h.dst_port, h.src_port, h.options.timestamp

    return {
        "ipv4 parse": {
            "tuple": lambda: t4(p4),
            "record": lambda: old4.parse(p4),
            "new": lambda: new4.parse(p4),
        },
        "ipv6 parse": {"record": lambda: old6.parse(p6), "new": lambda: new6.parse(p6)},
        "udp parse": {
            "tuple": lambda: tu(pu),
            "record": lambda: oldu.parse(pu),
            "new": lambda: newu.parse(pu),
        },
        "tcp parse (NOP,NOP,TS)": {"record": lambda: oldt.parse(pt), "new": lambda: newt.parse(pt)},
        "tcp parse (SYN options)": {
            "record": lambda: oldt.parse(psyn),
            "new": lambda: newt.parse(psyn),
        },
        "ipv4 receive: parse+reads": {"tuple": recv4_tuple, "new": recv4_new},
        "udp receive: +checksum": {"tuple": recvu_tuple, "new": recvu_new},
        "tcp receive: +checksum": {"record": recvt_record, "new": recvt_new},
    }


def access_cases(base: dict[str, ModuleType], pkt: dict[str, bytes]) -> dict[str, Callable]:
    """Reading seven IPv4 fields: by index from the tuple, by name from the records."""
    t = base["ipv4"].parse_fields(pkt["ipv4"])
    old = base["ipv4"].IPv4Header.parse(pkt["ipv4"])
    new = ipv4.IPv4Header.parse(pkt["ipv4"])
    return {
        "tuple by index": lambda: (t[0], t[1], t[2], t[3], t[5], t[6], t[7]),
        "old record by name": lambda: (
            old.header_length,
            old.total_length,
            old.ident,
            old.more_fragments,
            old.protocol,
            old.src,
            old.dst,
        ),
        "new record by name": lambda: (
            new.header_length,
            new.total_length,
            new.ident,
            new.more_fragments,
            new.protocol,
            new.src,
            new.dst,
        ),
    }


def measure(fns: dict[str, Callable], rounds: int, number: int) -> dict[str, float]:
    """Median ns per call of each callable; the callables take turns within every round."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best = min(timeit.repeat(fn, number=number, repeat=3))
            samples[name].append(best / number * 1e9)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of 'before'")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--number", type=int, default=20000, help="calls per timing")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()

    base = load_baseline(args.baseline)
    pkt = packets()
    # Before and after must agree on what they read.
    assert base["ipv4"].parse_fields(pkt["ipv4"])[6:] == (SRC, DST)
    assert ipv4.IPv4Header.parse(pkt["ipv4"]).dst == DST
    assert tcp.TCPHeader.parse(pkt["tcp"]).options.timestamp == (123456789, 987654321)
    assert base["tcp"].TCPHeader.parse(pkt["tcp_syn"]).options.mss == 1460

    results: dict[str, Any] = {"baseline": args.baseline, "python": sys.version.split()[0]}
    print(f"baseline {args.baseline}, Python {results['python']}, medians of {args.rounds} rounds")
    print(f"{'':28} {'tuple':>8} {'record':>8} {'new':>8}   new/tuple  new/record")
    for label, fns in cases(base, pkt).items():
        got = measure(fns, args.rounds, args.number)
        results[label] = got
        cols = [f"{got[k]:8.0f}" if k in got else f"{'-':>8}" for k in ("tuple", "record", "new")]
        ratios = [
            f"{got['new'] / got[k]:9.2f}x" if k in got else f"{'-':>10}"
            for k in ("tuple", "record")
        ]
        print(f"{label:28} {' '.join(cols)}   {'  '.join(ratios)}")
    got = measure(access_cases(base, pkt), args.rounds, args.number * 2)
    results["access 7 ipv4 fields"] = got
    print("\nreading 7 IPv4 fields, ns:")
    for name, ns in got.items():
        print(f"  {name:22} {ns:6.0f}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
