"""Debian's unbound as a test's DoT and DoH server: a small local zone, certificates from a test CA.

Only the ports asked for are opened, so a query that reaches it over TLS or HTTPS reached it
encrypted: there is no plaintext port to fall back to. Its own counters (``unbound-control
stats``: ``num.query.tls``, ``num.query.https``, ``num.query.tcp``, ``num.query.tls.resume``)
show how queries arrived.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from netns import NetNS, require_tool, skip_or_fail
from tlsutil import ServerFiles

__all__ = ["SERVER_NAME", "ZONE", "Unbound"]

#: The records unbound answers by default (``local-zone: "test." static``: any other name under
#: test. is NXDOMAIN).
#: ``pair.test`` has two addresses, in this order (``rrset-roundrobin: no``): one routed into a
#: black hole and one a test may listen on.
ZONE = [
    ("www.test.", "A", "192.0.2.7"),
    ("mail.test.", "A", "192.0.2.25"),
    ("v6.test.", "AAAA", "2001:db8::7"),
    ("pair.test.", "A", "203.0.113.1"),
    ("pair.test.", "A", "198.51.100.2"),
]
#: The name in the server's certificate (with its address, 127.0.0.1).
SERVER_NAME = "dns.test"


class Unbound:
    """An unbound process answering ``zone`` on 127.0.0.1: plain, DoT and DoH ports as asked.

    ``cert`` is the server's certificate (needed for ``tls`` and ``https``); ``zone`` holds
    (name, type, value) records. DoH is served at ``/dns-query``.
    """

    def __init__(
        self,
        runner: NetNS,
        directory: Path,
        cert: ServerFiles | None = None,
        *,
        plain: int | None = None,
        tls: int | None = None,
        https: int | None = None,
        zone: Sequence[tuple[str, str, str]] = ZONE,
    ) -> None:
        binary = require_tool("unbound")
        self.control = require_tool("unbound-control")
        if https:
            version = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10)
            if "nghttp2" not in version.stdout + version.stderr:
                skip_or_fail("unbound is built without libnghttp2, so it cannot serve DoH")
        self.zone = zone
        self.runner = runner
        self.directory = directory
        self.ports = {"plain": plain, "tls": tls, "https": https}
        self.config = directory / "unbound.conf"
        self.log = directory / "unbound.log"
        self.config.write_text(self._config(cert))
        with self.log.open("w") as log:
            self.proc = runner.popen(
                [binary, "-d", "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready()

    def _config(self, cert: ServerFiles | None) -> str:
        lines = [
            "server:",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.directory}"',
            '  pidfile: ""',
            "  do-daemonize: no",
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 1",
            "  do-ip6: no",
            "  extended-statistics: yes",
            "  rrset-roundrobin: no",
            "  statistics-cumulative: yes",
            '  local-zone: "test." static',
        ]
        if cert is not None:
            lines += [f'  tls-service-key: "{cert.key}"', f'  tls-service-pem: "{cert.cert}"']
        for name, rtype, value in self.zone:
            lines.append(f'  local-data: "{name} 300 IN {rtype} {value}"')
        for port in filter(None, self.ports.values()):
            lines.append(f"  interface: 127.0.0.1@{port}")
        if self.ports["tls"]:
            lines.append(f"  tls-port: {self.ports['tls']}")
        if self.ports["https"]:
            lines.append(f"  https-port: {self.ports['https']}")
        lines += [
            "remote-control:",
            "  control-enable: yes",
            f'  control-interface: "{self.directory / "control.sock"}"',
            "  control-use-cert: no",
        ]
        return "\n".join(lines) + "\n"

    def _wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until every port accepts a TCP connection (unbound is serving)."""
        deadline = time.monotonic() + timeout
        for port in filter(None, self.ports.values()):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"unbound exited: {self.log.read_text()}")
                probe = self.runner.run(
                    ["python3", "-c", _CONNECT, str(port)], check=False, timeout=5
                )
                if probe.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"unbound not listening on {port}: {self.log.read_text()}")
                time.sleep(0.1)

    def stats(self) -> dict[str, int]:
        """unbound's counters (``unbound-control stats_noreset``) as integers."""
        done = self.runner.run([self.control, "-c", str(self.config), "stats_noreset"])
        result: dict[str, int] = {}
        for line in done.stdout.splitlines():
            name, _, value = line.partition("=")
            if value.isdigit():
                result[name] = int(value)
        return result

    def stop(self) -> None:
        """Stop unbound now (a restart test starts a new one on the same ports)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


#: Exit 0 when 127.0.0.1:argv[1] accepts a TCP connection (run where unbound runs).
_CONNECT = (
    "import socket,sys\n"
    "s=socket.socket(); s.settimeout(1)\n"
    "sys.exit(s.connect_ex(('127.0.0.1', int(sys.argv[1]))) != 0)\n"
)
