"""Processes and DNS probes inside a benchmark namespace, for ``benchmarks/dns_qps.py``.

:class:`Proc` starts one command inside a namespace with its output in a file (never a pipe
nobody drains), tells its CPU time (children included) and resident memory, and stops it by its
PID. :func:`probe` asks one question with dig from inside the namespace and returns what came
back; :meth:`Proc.wait_ready` polls with it until the server answers.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netns import env

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    """The live (or not yet reaped) children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


def _tree_ticks(pid: int) -> int:
    """User + system ticks of ``pid``, its reaped children and its live descendants."""
    for _ in range(5):
        before = _stat(pid)
        live = 0
        for child in _children(pid):
            with contextlib.suppress(OSError):
                live += _tree_ticks(child)
        after = _stat(pid)
        # A child reaped between the two reads would be counted twice or not at all: retry.
        if before[13:15] == after[13:15]:
            return sum(int(f) for f in after[11:15]) + live
    return sum(int(f) for f in _stat(pid)[11:15]) + live


@dataclass(frozen=True)
class Answer:
    """What one dig query got back."""

    status: str
    flags: str
    answers: int
    ttl: int | None
    address: str | None

    def __str__(self) -> str:
        return f"{self.status}, flags '{self.flags}', {self.answers} answer(s)" + (
            f", A {self.address} TTL {self.ttl}" if self.address else ""
        )


def probe(ns: str, host: str, port: int, name: str, tcp: bool = False) -> Answer | None:
    """Ask ``name`` A from inside ``ns`` (one try, one second); None if nothing came back."""
    argv = ["ip", "netns", "exec", ns, "dig", "+time=1", "+tries=1", "-p", str(port)]
    argv += ["+tcp"] if tcp else []
    try:
        out = subprocess.run(
            [*argv, f"@{host}", name, "A"], capture_output=True, text=True, timeout=10
        ).stdout
    except subprocess.TimeoutExpired:
        return None
    header = re.search(r"status: (\w+)", out)
    flags = re.search(r"flags: ([a-z ]*);", out)
    count = re.search(r"ANSWER: (\d+)", out)
    if not (header and flags and count):
        return None
    record = re.search(r"^\S+\s+(\d+)\s+IN\s+A\s+(\S+)$", out, re.MULTILINE)
    return Answer(
        status=header.group(1),
        flags=flags.group(1).strip(),
        answers=int(count.group(1)),
        ttl=int(record.group(1)) if record else None,
        address=record.group(2) if record else None,
    )


class Proc:
    """One command run inside a namespace, output to ``log``; stopped by PID."""

    def __init__(self, ns: str, argv: Sequence[str], log: Path) -> None:
        self.argv = list(argv)
        self.log = log
        with log.open("wb") as out:
            # `ip netns exec` execs the command itself: the PID is the server's.
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env(),
            )
        self.pid = self.proc.pid

    def output(self, tail: int = 2000) -> str:
        """The last ``tail`` characters the process printed."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-tail:]
        return ""

    def wait_ready(
        self,
        ns: str,
        host: str,
        port: int,
        name: str,
        ready_line: str | None = None,
        tcp: bool = False,
        timeout: float = 20.0,
    ) -> Answer:
        """Wait for ``ready_line`` (if any), then until a probe gets NOERROR with an A record."""
        deadline = time.monotonic() + timeout
        last: Answer | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.output()}")
            if ready_line is None or ready_line in self.output(100_000):
                last = probe(ns, host, port, name, tcp)
                if last is not None and last.status == "NOERROR" and last.address:
                    return last
            time.sleep(0.1)
        raise RuntimeError(f"not ready after {timeout:.0f} s (last probe: {last}): {self.output()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, children (reaped or still running) included."""
        return _tree_ticks(self.pid) / _TICKS

    def rss_kib(self) -> int:
        """Resident memory of the process itself (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; reap."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
