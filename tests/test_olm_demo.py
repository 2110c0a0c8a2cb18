"""`olm demo` (the README's first command) runs and shows what it claims."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys

from olm.demo import tour


def test_demo_answers_every_question_and_retries_the_truncated_one_over_tcp() -> None:
    out = io.StringIO()
    counters = asyncio.run(tour(out))
    text = out.getvalue()
    assert "example.test. 300 A 192.0.2.10" in text
    assert "example.test. 299 A 192.0.2.10" in text  # from the cache, a second later
    assert "example.test. 300 AAAA 2001:db8::10" in text
    assert "www.example.test. 300 CNAME example.test." in text
    assert "rcode 0 TC (0 answers)" in text  # the 1.5 kB TXT over UDP
    assert "rcode 0 (6 answers)" in text  # ... and over TCP
    assert "TCP [SYN]" in text and "ICMP echo reply" in text  # the packet walk
    assert counters["dns.rcode.NOERROR"] == 6
    assert counters["dns.truncated"] == 1
    assert counters["dns.queries.tcp"] == 2
    # example.test A asked twice, and big.example.test TXT over TCP after the UDP try: the
    # cache answers both; the upstream sees each question once.
    assert counters["dns.cache.hit"] == 2
    assert counters["dns.upstream.queries"] == 4
    assert counters["filter.unclaimed_dropped"] == 1
    assert counters.get("dns.rcode.SERVFAIL", 0) == 0


def test_olm_demo_command_exits_zero() -> None:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-m", "olm", "demo", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "6 answers" in done.stdout
    assert "tun in" not in done.stdout  # --quiet leaves out the packet walk
