"""Test infrastructure for tests that need privileges: checks and throwaway network namespaces.

Policy: a test whose prerequisites are missing is skipped with a reason naming exactly what is
missing; when the environment variable CI is "true" it fails instead, so that CI cannot go
green by skipping the tests that matter.

Every namespace made here is called ``olmtest-<pid>-<n>`` (``pid`` is this pytest process),
so a session-level safety net can delete leftovers of this run and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NETNS_PREFIX = f"olmtest-{os.getpid()}-"
NETNS_DIR = Path("/run/netns")
CAP_NET_ADMIN = 12  # linux/capability.h
DEFAULT_TIMEOUT = 30.0
STOP_GRACE = 5.0

#: Debian packages that provide the tools the tests use, for skip messages.
TOOL_PACKAGES = {
    "ip": "iproute2",
    "ping": "iputils-ping",
    "tshark": "tshark",
    "dig": "bind9-dnsutils",
    "kdig": "knot-dnsutils",
    "dnsperf": "dnsperf",
    "setpriv": "util-linux",
    "capsh": "libcap2-bin",
    "unbound": "unbound",
    "unbound-control": "unbound",
    "microsocks": "microsocks",
    "systemd-analyze": "systemd",
    "promtool": "prometheus",
    "prometheus": "prometheus",
}

_counter = itertools.count()


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the current test for ``reason``, or fail it when CI=true."""
    message = f"{reason}; CI=true makes this a failure"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def has_cap_net_admin() -> bool:
    """Whether CAP_NET_ADMIN is in this process's effective set (CapEff in /proc/self/status)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split(":", 1)[1], 16) & (1 << CAP_NET_ADMIN))
    return False


@functools.cache
def privilege_problem() -> str | None:
    """Return what is missing for namespace tests, or None; probed once per session."""
    if os.geteuid() != 0 and not has_cap_net_admin():
        return "needs CAP_NET_ADMIN to create network namespaces and TUN devices (run as root)"
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        return f"needs /dev/net/tun to open read/write ({exc.strerror}; modprobe tun?)"
    os.close(fd)
    if shutil.which("ip") is None:
        return "needs the `ip` command (Debian package iproute2) to create network namespaces"
    probe = f"{NETNS_PREFIX}probe"
    added = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=DEFAULT_TIMEOUT
    )
    if added.returncode != 0:
        return f"needs `ip netns add` to work (it said: {added.stderr.strip()})"
    subprocess.run(
        ["ip", "netns", "del", probe], capture_output=True, text=True, timeout=DEFAULT_TIMEOUT
    )
    return None


def require_privilege() -> None:
    """Skip (or fail under CI=true) unless root/CAP_NET_ADMIN, /dev/net/tun and netns work."""
    problem = privilege_problem()
    if problem is not None:
        skip_or_fail(problem)


def require_tool(name: str) -> str:
    """Return the path of the command ``name``; skip (or fail under CI=true) if it is missing."""
    path = shutil.which(name)
    if path is None:
        package = TOOL_PACKAGES.get(name)
        hint = f" (Debian package {package})" if package else ""
        skip_or_fail(f"needs the `{name}` command{hint}")
    return path


def python_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Return ``env`` (default: this process's environment) with the repository importable."""
    result = dict(os.environ if env is None else env)
    paths = [str(REPO_ROOT), *filter(None, result.get("PYTHONPATH", "").split(os.pathsep))]
    result["PYTHONPATH"] = os.pathsep.join(paths)
    return result


class CommandError(subprocess.CalledProcessError):
    """A command run in a namespace failed; the message includes its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


class NetNS:
    """A network namespace owned by one test, with its loopback up.

    Commands run inside it through ``ip netns exec``. Processes started with :meth:`popen` are
    tracked, each in its own session, and :meth:`close` stops them (SIGTERM, then SIGKILL to
    their process group) before deleting the namespace.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._procs: list[tuple[subprocess.Popen[Any], bool]] = []
        self._closed = False

    @classmethod
    def create(cls) -> NetNS:
        """Create a uniquely named namespace and bring its loopback interface up."""
        name = f"{NETNS_PREFIX}{next(_counter)}"
        _ip("netns", "add", name)
        ns = cls(name)
        try:
            _ip("-n", name, "link", "set", "lo", "up")
        except BaseException:
            ns.close()
            raise
        return ns

    def argv(self, args: Sequence[str]) -> list[str]:
        """Return the command line that runs ``args`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        capture_output: bool = True,
        text: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``args`` inside the namespace and wait for it; raise CommandError if it fails."""
        done = subprocess.run(
            self.argv(args), capture_output=capture_output, text=text, timeout=timeout, **kwargs
        )
        if check and done.returncode != 0:
            raise CommandError(done.returncode, done.args, done.stdout, done.stderr)
        return done

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``args`` inside the namespace; it is stopped when the namespace is closed."""
        if self._closed:
            raise RuntimeError(f"namespace {self.name} is closed")
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(args), **kwargs)
        self._procs.append((proc, bool(kwargs["start_new_session"])))
        return proc

    def python(self, code: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run this interpreter inside the namespace with the repository importable.

        ``code`` is source passed with ``-c``, unless it starts with ``-`` (as in ``"-m"``),
        in which case it is the first interpreter argument.
        """
        head = [code] if code.startswith("-") else ["-c", code]
        argv = [sys.executable, *head, *args]
        kwargs["env"] = python_env(kwargs.get("env"))
        return self.run(argv, **kwargs)

    def close(self) -> None:
        """Stop every tracked process, then delete the namespace; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            for proc, own_group in reversed(self._procs):
                _stop(proc, own_group)
        finally:
            self._procs.clear()
            self._delete()

    def _delete(self) -> None:
        subprocess.run(
            ["ip", "netns", "del", self.name],
            capture_output=True,
            text=True,
            timeout=DEFAULT_TIMEOUT,
        )

    def __enter__(self) -> NetNS:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NetNS {self.name}{' closed' if self._closed else ''}>"


class Host(NetNS):
    """This machine's own network, with the same process tracking as a namespace.

    For tests that need no privilege: the processes they start listen on this machine's
    loopback, and :meth:`close` stops them (nothing else is deleted).
    """

    def __init__(self) -> None:
        super().__init__("host")

    def argv(self, args: Sequence[str]) -> list[str]:
        """Return ``args`` unchanged: they run here."""
        return list(args)

    def _delete(self) -> None:
        """Nothing to delete: this is the machine's own network."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port free for both UDP and TCP on ``host`` at the time of the call."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError("no free port found")


def leftover_namespaces() -> list[str]:
    """Return the namespaces of this pytest process that still exist."""
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(NETNS_PREFIX))


def delete_leftover_namespaces() -> list[str]:
    """Delete every namespace this pytest process created and left behind; return their names."""
    leftovers = leftover_namespaces()
    for name in leftovers:
        subprocess.run(
            ["ip", "netns", "del", name], capture_output=True, text=True, timeout=DEFAULT_TIMEOUT
        )
    return leftovers


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=DEFAULT_TIMEOUT)
    if done.returncode != 0:
        raise CommandError(done.returncode, done.args, done.stdout, done.stderr)


def _signal(proc: subprocess.Popen[Any], own_group: bool, sig: signal.Signals) -> None:
    """Send ``sig`` to a process we started (to its own process group if it has one)."""
    with contextlib.suppress(ProcessLookupError):
        if own_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def _stop(proc: subprocess.Popen[Any], own_group: bool) -> None:
    """Terminate ``proc`` (and its process group), killing it if it does not exit in time."""
    # Signal only while the leader is unreaped: until then its pid (and so its process group
    # id) cannot have been reused by a process we did not start.
    if proc.returncode is None:
        _signal(proc, own_group, signal.SIGTERM)
    try:
        proc.communicate(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        _signal(proc, own_group, signal.SIGKILL)
        proc.communicate(timeout=STOP_GRACE)
