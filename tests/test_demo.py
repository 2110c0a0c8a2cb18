"""The stack demo (the README's first command) runs and shows what it claims."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

from netstack.demo import tour


def test_tour_round_trips_and_reports_refusal() -> None:
    out = io.StringIO()
    counters = asyncio.run(tour(out))
    text = out.getvalue()
    assert text.count("identical") == 3
    assert "DIFFERENT" not in text
    assert "Connection refused" in text
    assert "ICMP echo reply" in text
    assert "frag" in text
    assert counters["ipv4.reassembly.reassembled"] == 1
    assert counters["icmpv4.out.echo_reply"] == 1
    assert counters["udp.no_port"] == 1


def test_demo_runs_as_a_module_with_the_system_python() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "netstack.demo"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("identical") == 3
