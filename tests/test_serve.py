"""``olm serve`` as a process on this machine's loopback: reload, bad input, busy addresses.

The upstreams are tests/dnsserver.py processes on 127.0.0.1 ports the test picks; nothing
needs a privilege (all ports are above 1023).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from netns import Host, free_port, python_env, require_tool
from olmproc import OlmProcess, counters_from

DNSSERVER = str(Path(__file__).with_name("dnsserver.py"))


def upstream(host: Host, address: str) -> int:
    """Start tests/dnsserver.py answering every A query with ``address``; return its port."""
    port = free_port()
    proc = host.popen(
        [sys.executable, DNSSERVER, "--port", str(port), "--a", address],
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    assert proc.stdout is not None and "ready" in proc.stdout.readline()
    return port


def short(host: Host, port: int, name: str, *flags: str) -> list[str]:
    dig = require_tool("dig")
    argv = [dig, "+time=3", "+tries=1", "+short", *flags, "-p", str(port), "@127.0.0.1", name]
    return str(host.run(argv).stdout).split()


def serve(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``olm serve ARGS`` to its end (a start-up failure); return what it said."""
    return subprocess.run(
        [sys.executable, "-m", "olm", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(),
    )


def test_sighup_applies_new_upstreams_and_keeps_the_old_on_a_bad_file(
    host: Host, tmp_path: Path
) -> None:
    first, second = upstream(host, "192.0.2.1"), upstream(host, "192.0.2.2")
    port = free_port()
    config = tmp_path / "olm.toml"
    config.write_text(
        f'listen = ["127.0.0.1:{port}"]\nupstreams = ["127.0.0.1:{first}"]\n'
        "[cache]\nenabled = false\n"
    )
    olm = OlmProcess(host, ["serve", "--config", str(config), "--stats"])
    assert short(host, port, "example.test") == ["192.0.2.1"]
    config.write_text(config.read_text().replace(str(first), str(second)))
    olm.proc.send_signal(signal.SIGHUP)
    olm.wait_for("reloaded")
    assert short(host, port, "example.test") == ["192.0.2.2"]
    assert short(host, port, "example.test", "+tcp") == ["192.0.2.2"]
    good = config.read_text()
    config.write_text(f'policy = "quickest"\n{good}')  # line 1: not a policy
    olm.proc.send_signal(signal.SIGHUP)
    assert short(host, port, "example.test") == ["192.0.2.2"]  # the old settings stay
    code, _, err = olm.stop()
    assert code == 0
    assert "reload failed" in err and "olm.toml:1" in err and "policy" in err
    assert counters_from(err)["dns.reload_failed"] == 1


def test_a_bad_listen_address_is_exit_2_naming_it(host: Host) -> None:
    done = serve(host, "--listen", "localhost:5300", "--upstream", "127.0.0.1:5300")
    assert done.returncode == 2
    assert "--listen" in done.stderr and "'localhost:5300'" in done.stderr
    assert "IP:PORT" in done.stderr


def test_an_address_in_use_is_exit_1_naming_it(host: Host) -> None:
    port = upstream(host, "192.0.2.1")  # dnsserver holds UDP and TCP on this port
    done = serve(host, "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9")
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_a_bad_upstream_url_is_exit_2_naming_it(host: Host) -> None:
    port = free_port()
    done = serve(host, "--listen", f"127.0.0.1:{port}", "--upstream", "tls://bad host")
    assert done.returncode == 2
    assert "--upstream" in done.stderr and "bad host" in done.stderr
