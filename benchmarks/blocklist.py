"""Blocklists at the scale of the big public lists: parsing, memory and lookups.

    .venv/bin/python benchmarks/blocklist.py [--count 1000000] [--rounds 5] [--lookups 100000]

Builds a synthetic list of ``count`` distinct names in hosts format (``0.0.0.0 name``, under a
comment header, as the big hosts-format lists are: 2 to 4 labels of 3 to 14 letters and digits
under common top-level domains), then reports:

* the time to read it (``parse_list``) and to build the set (``DomainSet.build``);
* the set's bytes per name (its arrays) and the process's RSS: before the list is made, with
  the names, the list text, the parsed list and the set alive, and once only the set is left
  (after ``gc.collect()`` and glibc's ``malloc_trim``);
* ``Blocklists.match`` in microseconds per lookup (median of ``rounds`` rounds of ``lookups``
  names each), for names on the list, names not on it, and subdomains of names on it (one or
  two labels more), beside an allow set of 100 names as a configuration would have (a name
  on the list is then looked up in the allow set too), and for names on the list without one.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from olm.dns.blocklist import Blocklists, DomainSet, parse_list, wire_name

TLDS = ["com", "net", "org", "io", "info", "co.uk", "de", "ru", "xyz", "top", "online", "cn"]
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _malloc_trim() -> None:
    """Give freed heap memory back to the system (glibc), so that RSS shows what is kept."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _label(rng: random.Random) -> str:
    return "".join(rng.choices(ALPHABET, k=rng.randint(3, 14)))


def _name(rng: random.Random) -> str:
    """A name of 2 to 4 labels, the last one or two a top-level domain."""
    tld = rng.choice(TLDS)
    labels = [_label(rng) for _ in range(rng.randint(1, 4 - tld.count(".") - 1))]
    return ".".join([*labels, tld])


def synthetic_names(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < count:
        names.add(_name(rng))
    return sorted(names, key=lambda _: rng.random())


def hosts_text(names: list[str]) -> str:
    header = f"# Title: synthetic benchmark list\n# Entries: {len(names)}\n127.0.0.1 localhost\n"
    return header + "".join(f"0.0.0.0 {name}\n" for name in names)


def per_lookup(lists: Blocklists, queries: list[bytes], rounds: int) -> tuple[float, int]:
    """Median microseconds per ``match`` over ``rounds`` rounds, and how many matched."""
    match = lists.match
    times = []
    hits = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        hits = sum(1 for query in queries if match(query) is not None)
        times.append((time.perf_counter() - t0) / len(queries) * 1e6)
    return statistics.median(times), hits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000, help="names on the list")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=100_000, help="names per round and kind")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rss_start = _rss_kib()
    names = synthetic_names(args.count, args.seed)
    text = hosts_text(names)
    print(f"list: {args.count:,} names, {len(text) / 2**20:.1f} MiB of hosts-format text")

    gc.collect()
    t0 = time.perf_counter()
    parsed = parse_list(text, "synthetic")
    t1 = time.perf_counter()
    domains = DomainSet.build(parsed.block)
    t2 = time.perf_counter()
    parse_s, build_s = t1 - t0, t2 - t1
    assert len(domains) == args.count, len(domains)
    rss_all = _rss_kib()
    del text, parsed, names
    gc.collect()
    _malloc_trim()
    rss_set = _rss_kib()

    # The same names again (same seed), for the queries: made after the set was measured.
    names = synthetic_names(args.count, args.seed)
    listed = set(names)
    rng = random.Random(args.seed + 1)
    sample = rng.sample(names, min(args.lookups, len(names)))
    allow = DomainSet.build(wire_name(f"allowed{i}.example") for i in range(100))
    lists = Blocklists([("big", domains)], allow)
    no_allow = Blocklists([("big", domains)])
    hit_queries = [wire_name(name) for name in sample]
    sub_queries = [
        wire_name(".".join([_label(rng) for _ in range(rng.randint(1, 2))] + [name]))
        for name in sample
    ]
    miss_queries: list[bytes] = []
    while len(miss_queries) < len(sample):
        name = _name(rng)
        labels = name.split(".")
        if not any(".".join(labels[i:]) in listed for i in range(len(labels))):
            miss_queries.append(wire_name(name))
    del names, listed, sample
    gc.collect()

    rows = []
    for kind, blocklists, queries in (
        ("listed name", lists, hit_queries),
        ("name not listed", lists, miss_queries),
        ("subdomain of a listed name", lists, sub_queries),
        ("listed name, no allow set", no_allow, hit_queries),
    ):
        micros, matched = per_lookup(blocklists, queries, args.rounds)
        rows.append((kind, micros, matched, len(queries)))

    print()
    print(f"{'step':<34}{'seconds':>10}{'us/name':>10}")
    print(f"{'parse_list':<34}{parse_s:>10.2f}{parse_s / args.count * 1e6:>10.2f}")
    print(f"{'DomainSet.build':<34}{build_s:>10.2f}{build_s / args.count * 1e6:>10.2f}")
    total = parse_s + build_s
    print(f"{'parse + build':<34}{total:>10.2f}{total / args.count * 1e6:>10.2f}")
    print()
    print(
        f"DomainSet: {domains.nbytes:,} bytes, {domains.nbytes / len(domains):.1f} bytes per name"
    )
    print(
        f"RSS: {rss_start / 1024:.1f} MiB at start, {rss_all / 1024:.1f} MiB with the names, "
        f"list text, parsed list and set, {rss_set / 1024:.1f} MiB with the set only "
        f"(+{(rss_set - rss_start) / 1024:.1f} MiB)"
    )
    print()
    print(f"{'Blocklists.match':<34}{'us/lookup':>10}{'matched':>16}")
    for kind, micros, matched, asked in rows:
        print(f"{kind:<34}{micros:>10.2f}{f'{matched}/{asked}':>16}")
    print(f"(median of {args.rounds} rounds of {len(hit_queries):,} lookups)")


if __name__ == "__main__":
    main()
