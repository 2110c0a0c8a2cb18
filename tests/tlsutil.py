"""Test certificates from trustme: a CA, and server certificates it signs, written as PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class ServerFiles:
    """A server's certificate chain and key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TestCA:
    """A certificate authority for one test, its certificate written to ``ca_file``."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    ca: trustme.CA
    ca_file: Path
    directory: Path

    @classmethod
    def create(cls, directory: Path, name: str = "ca") -> TestCA:
        """Make a CA; write its certificate and those it issues under ``directory/<name>``."""
        own = directory / name
        own.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        ca_file = own / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        return cls(ca, ca_file, own)

    def server(self, *identities: str) -> ServerFiles:
        """Issue a certificate for ``identities`` (host names or IP addresses); write it."""
        issued = self.ca.issue_cert(*identities)
        stem = "-".join(identities).replace(":", "_")
        cert = self.directory / f"{stem}.crt"
        key = self.directory / f"{stem}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return ServerFiles(cert, key)
