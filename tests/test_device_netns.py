"""The namespace test infrastructure itself: isolation, process clean-up, deletion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from netns import NETNS_PREFIX, CommandError, NetNS, leftover_namespaces


def test_namespace_is_isolated_with_lo_up(netns: NetNS) -> None:
    assert netns.name.startswith(NETNS_PREFIX)
    links = json.loads(netns.run(["ip", "-j", "link", "show"]).stdout)
    assert [link["ifname"] for link in links] == ["lo"]
    assert "UP" in links[0]["flags"]
    ours = os.readlink("/proc/self/ns/net")
    theirs = netns.python("import os; print(os.readlink('/proc/self/ns/net'))").stdout.strip()
    assert theirs.startswith("net:[") and theirs != ours


def test_python_sees_the_repository(netns: NetNS) -> None:
    done = netns.python("import olm, sys; print(olm.__version__, sys.argv[1:])", "a", "b")
    assert done.stdout.strip() == "0.1.0 ['a', 'b']"
    assert netns.python("-c", "print(6 * 7)").stdout.strip() == "42"


def test_failed_command_reports_its_output(netns: NetNS) -> None:
    with pytest.raises(CommandError) as raised:
        netns.python("import sys; sys.stderr.write('boom'); sys.exit(3)")
    assert raised.value.returncode == 3
    assert "boom" in str(raised.value)
    assert netns.run(["false"], check=False).returncode == 1


def test_close_stops_processes_and_deletes_namespace(privileged: None) -> None:
    ns = NetNS.create()
    assert ns.name in leftover_namespaces()
    sleeper = ns.popen(["sleep", "60"])
    # A child that ignores SIGTERM must still be killed (SIGKILL after the grace period).
    stubborn = ns.popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
            "; print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    ns.close()
    assert sleeper.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert ns.name not in leftover_namespaces()
    ns.close()  # idempotent
    with pytest.raises(RuntimeError):
        ns.popen(["true"])


def test_factory_namespaces_are_distinct(netns_factory: Callable[[], NetNS]) -> None:
    first, second = netns_factory(), netns_factory()
    assert first.name != second.name
    assert {first.name, second.name} <= set(leftover_namespaces())
