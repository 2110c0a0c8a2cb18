"""``olm serve`` and ``olm up`` forwarding to Debian's unbound over DoT and DoH.

unbound is started by the test on loopback (in a namespace for ``olm up``) with a certificate
from a test CA and only its TLS and HTTPS ports open; its counters show how the queries
arrived. dig and kdig ask olm in plain DNS, as a pod or a host would.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from netns import Host, NetNS, free_port, require_tool
from olmproc import OlmProcess, counters_from
from tlsutil import ServerFiles, TestCA
from unboundproc import SERVER_NAME, Unbound

V4 = "10.30.30.30"


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, ServerFiles]:
    """The CA file, and a server certificate for dns.test and 127.0.0.1."""
    ca = TestCA.create(tmp_path)
    return ca.ca_file, ca.server(SERVER_NAME, "127.0.0.1")


def settings_file(
    directory: Path, listen: str, upstream: str, pki: tuple[Path, ServerFiles], **extra: str
) -> Path:
    """Write a settings file: one upstream table with the server name and the CA file."""
    lines = [f'listen = ["{listen}"]']
    extra = {"server_name": SERVER_NAME, "ca_file": str(pki[0]), **extra}
    fields = ", ".join([f'url = "{upstream}"', *(f'{k} = "{v}"' for k, v in extra.items())])
    lines.append(f"upstreams = [{{ {fields} }}]")
    lines += ["[cache]", "enabled = false"]  # every query goes upstream
    path = directory / "olm.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def ask(runner: NetNS, server: str, port: int, *args: str, tool: str = "dig") -> str:
    """Ask with dig or kdig; return the output."""
    require_tool(tool)
    timing = ["+time=5", "+tries=1"] if tool == "dig" else ["+timeout=5", "+retry=0"]
    done = runner.run([tool, *timing, f"@{server}", "-p", str(port), *args], timeout=30)
    return str(done.stdout)


UPSTREAM_URLS = {"tls": "tls://127.0.0.1:{port}", "https": "https://127.0.0.1:{port}/dns-query"}


def encrypted_upstream(
    host: Host, tmp_path: Path, pki: tuple[Path, ServerFiles], scheme: str
) -> tuple[Unbound, str]:
    """Start unbound with only its ``scheme`` port (tls or https) open; return it and its URL."""
    port = free_port()
    unbound = Unbound(host, tmp_path, pki[1], **{scheme: port})
    return unbound, UPSTREAM_URLS[scheme].format(port=port)


@pytest.mark.parametrize("scheme", ["tls", "https"])
def test_olm_serve_answers_dig_and_kdig_over_an_encrypted_upstream(
    host: Host, tmp_path: Path, pki: tuple[Path, ServerFiles], scheme: str
) -> None:
    unbound, upstream = encrypted_upstream(host, tmp_path, pki, scheme)
    port = free_port()
    config = settings_file(tmp_path, f"127.0.0.1:{port}", upstream, pki)
    olm = OlmProcess(host, ["serve", "--config", str(config), "--stats"])
    assert "192.0.2.7" in ask(host, "127.0.0.1", port, "+short", "www.test", "A")
    assert "192.0.2.25" in ask(host, "127.0.0.1", port, "+tcp", "+short", "mail.test", "A")
    kdig = ask(host, "127.0.0.1", port, "+tcp", "v6.test", "AAAA", tool="kdig")
    assert "2001:db8::7" in kdig and "NOERROR" in kdig
    assert "NXDOMAIN" in ask(host, "127.0.0.1", port, "nothing.test", "A", tool="kdig")

    stats = unbound.stats()
    counter = "num.query.tls" if scheme == "tls" else "num.query.https"
    assert stats[counter] == 4, stats  # every query arrived encrypted (no plaintext port)
    assert stats["total.num.queries"] == 4
    code, _, err = olm.stop()
    assert code == 0
    counters = counters_from(err)
    if scheme == "tls":
        assert sum(v for k, v in counters.items() if k.endswith("tls_connections")) >= 1
    else:  # unbound's DoH is HTTP/2 only; olm counts the responses by version
        assert sum(v for k, v in counters.items() if k.endswith("doh.http2")) == 4, counters


class Recorder:
    """A TCP relay on 127.0.0.1 in front of a server: it keeps every byte the client sent."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sent = bytearray()
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("scheme", ["tls", "https"])
def test_a_wrong_certificate_name_is_servfail_counted_and_nothing_in_plaintext(
    host: Host, tmp_path: Path, pki: tuple[Path, ServerFiles], scheme: str
) -> None:
    unbound, upstream = encrypted_upstream(host, tmp_path, pki, scheme)
    recorder = Recorder(int(upstream.split(":")[2].split("/")[0]))
    port = free_port()
    config = settings_file(
        tmp_path,
        f"127.0.0.1:{port}",
        upstream.replace(str(recorder.target), str(recorder.port)),
        pki,
        server_name="other.test",  # not in the certificate
    )
    try:
        olm = OlmProcess(host, ["serve", "--config", str(config), "--stats"])
        out = ask(host, "127.0.0.1", port, "www.test", "A")
        out += ask(host, "127.0.0.1", port, "+tcp", "www.test", "A")
        code, _, err = olm.stop()
    finally:
        recorder.close()
    assert out.count("status: SERVFAIL") == 2 and "192.0.2.7" not in out
    assert code == 0
    counters = counters_from(err)
    assert sum(v for k, v in counters.items() if k.endswith("tls_verify_failed")) >= 1
    # olm did connect, and began TLS (a handshake record, RFC 8446 5.1), but the name never
    # crossed the wire in clear, and unbound got no query.
    assert recorder.connections >= 1 and recorder.sent[:1] == b"\x16"
    assert b"\x03www\x04test" not in recorder.sent.lower()
    assert unbound.stats()["total.num.queries"] == 0


def _unprivileged() -> list[str]:
    """The command prefix that runs the rest as a normal user (nobody when we are root)."""
    if os.geteuid() != 0:
        return []
    setpriv = require_tool("setpriv")
    nobody = pwd.getpwnam("nobody")
    return [
        setpriv,
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]


def test_olm_serve_with_the_dotproxy_variables_as_a_normal_user(
    host: Host, tmp_path: Path, pki: tuple[Path, ServerFiles]
) -> None:
    ca_file, cert = pki
    upstream_port = free_port()
    unbound = Unbound(host, tmp_path, cert, tls=upstream_port)
    port = free_port()
    with tempfile.TemporaryDirectory() as public:  # pytest's tmp_path is private to its user
        Path(public).chmod(0o755)
        trusted = Path(public) / "ca.pem"
        shutil.copy(ca_file, trusted)
        trusted.chmod(0o644)
        _serve_as_dotproxy(host, unbound, upstream_port, port, trusted)


def _serve_as_dotproxy(
    host: Host, unbound: Unbound, upstream_port: int, port: int, ca_file: Path
) -> None:
    env = {
        "DOTPROXY_UPSTREAM_HOST": "127.0.0.1",
        "DOTPROXY_UPSTREAM_PORT": str(upstream_port),
        "DOTPROXY_LISTEN_PORT": str(port),
        "SSL_CERT_FILE": str(ca_file),  # the system trust store, as OpenSSL reads it
    }
    olm = OlmProcess(host, ["serve", "--stats"], prefix=_unprivileged(), env=env)
    status = Path(f"/proc/{olm.proc.pid}/status").read_text()  # setpriv execs olm
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[0] != "0" and int(fields["CapEff"], 16) == 0
    out = ask(host, "127.0.0.1", port, "+tcp", "www.test", "A", tool="kdig")
    assert "192.0.2.7" in out and "NOERROR" in out
    assert unbound.stats()["num.query.tls"] == 1
    code, _, _ = olm.stop()
    assert code == 0


# -- olm up: the same upstreams behind the TUN, in a namespace ----------------------------------


@pytest.mark.privileged
def test_olm_up_answers_over_dot_and_doh_through_the_tun(
    netns: NetNS,
    olm_up: Callable[..., OlmProcess],
    tmp_path: Path,
    pki: tuple[Path, ServerFiles],
) -> None:
    ca_file, cert = pki
    unbound = Unbound(netns, tmp_path, cert, tls=853, https=443)
    config = tmp_path / "olm.toml"
    config.write_text(
        'policy = "round-robin"\n'
        "upstreams = [\n"
        f'  {{ url = "tls://127.0.0.1", server_name = "{SERVER_NAME}", ca_file = "{ca_file}" }},\n'
        f'  {{ url = "https://127.0.0.1/dns-query", server_name = "{SERVER_NAME}",'
        f' ca_file = "{ca_file}" }},\n'
        "]\n[cache]\nenabled = false\n"
    )
    up = olm_up("--config", str(config))
    names = ["www.test", "mail.test"] * 3
    for name in names:
        assert ask(netns, V4, 53, "+short", name, "A").strip() in ("192.0.2.7", "192.0.2.25")
    kdig = ask(netns, V4, 53, "+tcp", "v6.test", "AAAA", tool="kdig")
    assert "2001:db8::7" in kdig
    stats = unbound.stats()
    assert stats["total.num.queries"] == len(names) + 1
    assert stats["num.query.tls"] >= 1 and stats["num.query.https"] >= 1, stats
    # every query came over TLS, DoT's or DoH's (unbound counts https ones among the tls ones)
    assert stats["num.query.tls"] == len(names) + 1, stats
    code, _, _ = up.stop()
    assert code == 0


@pytest.mark.parametrize("scheme", ["tls", "https"])
def test_an_encrypted_upstream_through_a_socks5_proxy(
    host: Host, tmp_path: Path, pki: tuple[Path, ServerFiles], scheme: str
) -> None:
    unbound, upstream = encrypted_upstream(host, tmp_path, pki, scheme)
    socks_port = free_port()
    socks_log = tmp_path / "microsocks.log"
    with socks_log.open("w") as log:
        host.popen(
            [require_tool("microsocks"), "-i", "127.0.0.1", "-p", str(socks_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    port = free_port()
    config = settings_file(
        tmp_path, f"127.0.0.1:{port}", upstream, pki, socks5=f"socks5://127.0.0.1:{socks_port}"
    )
    olm = OlmProcess(host, ["serve", "--config", str(config)])
    assert "192.0.2.7" in ask(host, "127.0.0.1", port, "+short", "www.test", "A")
    assert "192.0.2.25" in ask(host, "127.0.0.1", port, "+tcp", "+short", "mail.test", "A")
    assert olm.stop()[0] == 0
    assert unbound.stats()["num.query.tls"] == 2
    # microsocks logs each connection it made: "client[N] 127.0.0.1: connected to HOST:PORT"
    assert f"connected to {upstream.split('/')[2]}" in socks_log.read_text()


def test_the_default_log_level_logs_no_name_client_or_answer(
    host: Host, tmp_path: Path, pki: tuple[Path, ServerFiles]
) -> None:
    """Answers and failures at INFO: names, clients and answers stay out of the log."""
    ca_file, cert = pki
    upstream_port = free_port()
    Unbound(host, tmp_path, cert, tls=upstream_port)
    port, client_port, dead = free_port(), free_port(), free_port()
    config = tmp_path / "olm.toml"
    config.write_text(
        f'listen = ["127.0.0.1:{port}"]\npolicy = "sequential"\ntimeout = 0.5\n'
        f'upstreams = ["tls://127.0.0.1:{dead}", '
        f'{{ url = "tls://127.0.0.1:{upstream_port}", server_name = "{SERVER_NAME}", '
        f'ca_file = "{ca_file}" }}]\n'
    )
    olm = OlmProcess(host, ["serve", "--config", str(config)])
    script = (
        "import socket,sys\n"
        "from dnslib import DNSRecord\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(5)\n"
        "s.bind(('127.0.0.1', int(sys.argv[2])))\n"
        "for name in ('www.test','mail.test','nothing.test','www.test'):\n"
        "    s.sendto(DNSRecord.question(name).pack(), ('127.0.0.1', int(sys.argv[1])))\n"
        "    print(DNSRecord.parse(s.recv(4096)).short())\n"
    )
    done = host.python(script, str(port), str(client_port))
    assert "192.0.2.7" in done.stdout and "192.0.2.25" in done.stdout
    code, out, err = olm.stop()
    assert code == 0
    log = "\n".join(olm.lines) + out + err
    assert "is down after 3 failures in a row" in err  # failures are logged, without names
    for secret in ("www.test", "mail.test", "nothing.test", "192.0.2.", str(client_port)):
        assert secret not in log, f"{secret!r} logged:\n{log}"
