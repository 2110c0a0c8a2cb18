"""Fuzz the settings loader: a TOML file and OLM_* variables from arbitrary bytes.

The input is split at the first NUL: before it, the TOML file's text (any bytes, decoded as
UTF-8 with replacement); after it, ``NAME=value`` lines that become OLM_* environment variables.
Oracle: ``load_settings`` returns a Settings or raises ConfigError and nothing else, and the
error names its source: the file (``path:line: ...`` or ``path: ...``) or the variable
(``environment OLM_X: ...``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fuzz.common import fuzz_main
from olm.config import ConfigError, Settings, load_settings

_DIR = Path(
    tempfile.mkdtemp(
        prefix="olm-fuzz-config-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
)
_FILE = _DIR / "olm.toml"


def test_one_input(data: bytes) -> None:
    """Load settings from the fuzzed file and environment and check the outcome."""
    text, _, env_part = data.partition(b"\0")
    _FILE.write_bytes(text)
    environ: dict[str, str] = {}
    for line in env_part.decode("utf-8", "replace").splitlines()[:8]:
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            environ[f"OLM_{key.upper()}"] = value
    try:
        settings = load_settings(None, environ, _FILE)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith((str(_FILE), "environment OLM_")), message
        return
    assert isinstance(settings, Settings)
    assert settings.addresses and settings.mtu >= 68
    assert settings.timeout > 0 and settings.deadline > 0


if __name__ == "__main__":
    fuzz_main(test_one_input, ("olm",))
