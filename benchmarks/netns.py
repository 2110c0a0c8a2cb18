"""A throwaway network namespace for benchmarks: created, used, always deleted."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    """This process's environment with the repository importable."""
    result = dict(os.environ)
    result["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), result.get("PYTHONPATH")]))
    result["PYTHONUNBUFFERED"] = "1"
    return result


@contextlib.contextmanager
def namespace(prefix: str = "olmbench") -> Iterator[str]:
    """Create a namespace with loopback up; delete it (and whatever runs in it) on exit."""
    name = f"{prefix}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", name], check=False)


class Server:
    """A server process started inside a namespace; waits for its ready line."""

    def __init__(self, ns: str, argv: Sequence[str], ready: str = "ready") -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if ready in line:
                return
        self.stop()
        raise RuntimeError(
            f"server did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
        )

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
