"""Run ``olm`` commands inside a test's network namespace and talk to them."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from netns import NetNS, python_env


class OlmProcess:
    """A running ``python -m olm ...`` (in a namespace or here), started and stopped by the test."""

    def __init__(
        self,
        ns: NetNS,
        args: Sequence[str],
        ready: str = "ready",
        *,
        prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start ``olm args`` (after ``prefix``, e.g. setpriv) with ``env`` added.

        A daemon gets a control socket of its own in a temporary folder (``self.control``),
        never the machine's /run/olm, unless ``args`` name one; one started under ``prefix``
        (another user) gets none.
        """
        self.ns = ns
        self.control: str | None = None
        self._control_dir: str | None = None
        args = list(args)
        if args and args[0] in ("up", "serve", "stack") and "--control" not in args:
            if prefix:
                args[1:1] = ["--control", "none"]
            else:
                self._control_dir = tempfile.mkdtemp(prefix="olm-control-")
                self.control = os.path.join(self._control_dir, "olm.sock")
                args[1:1] = ["--control", self.control]
        self.proc: subprocess.Popen[str] = ns.popen(
            [*prefix, sys.executable, "-m", "olm", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env({**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}),
        )
        self.lines: list[str] = []
        self.wait_for(ready)

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        """Read stdout until a line contains ``needle``; fail with the output if it does not."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.lines.append(line.rstrip("\n"))
                if needle in line:
                    return line
        finally:
            sel.close()
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(
            f"olm never printed {needle!r}; exit={self.proc.poll()} stdout={self.lines} "
            f"stderr={err}"
        )

    def stop(
        self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0
    ) -> tuple[int, str, str]:
        """Signal the process, wait for it, and return (exit code, rest of stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
        return self.proc.returncode, out, err

    def inspect(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``olm ARGS --control <this daemon's socket>`` (inspect, trace, cache flush)."""
        assert self.control is not None, "this daemon has no control socket"
        return subprocess.run(
            [sys.executable, "-m", "olm", *args, "--control", self.control],
            capture_output=True,
            text=True,
            timeout=60,
            env=python_env(dict(os.environ)),
        )


def start_up(ns: NetNS, started: list[OlmProcess], tun: str, *args: str) -> OlmProcess:
    """Start ``olm up --tun TUN --stats ARGS`` in ``ns`` and add it to ``started``."""
    proc = OlmProcess(ns, ["up", "--tun", tun, "--stats", *args])
    started.append(proc)
    return proc


def counters_from(stderr: str) -> dict[str, int]:
    """Parse the ``name value`` lines that ``--stats`` prints on exit."""
    result: dict[str, int] = {}
    for line in stderr.splitlines():
        name, _, value = line.rpartition(" ")
        if name and value.isdigit():
            result[name] = int(value)
    return result


def ns_python(ns: NetNS, code: str, **kwargs: Any) -> str:
    """Run Python source inside the namespace and return its stdout."""
    return str(ns.python(code, **kwargs).stdout)
