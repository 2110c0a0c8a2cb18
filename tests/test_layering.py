"""The layering of netstack as a checked contract: import-linter over pyproject.toml's contracts.

The same check ``scripts/test`` runs after mypy, plus proof that the check can fail: a tiny
package with an import against its layers, and a copy of netstack with one wrong import.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The lint-imports console script, run by the interpreter that runs the tests.
_RUN = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"


def lint_imports(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` in ``cwd`` (the directory holding the packages) with ``config``."""
    return subprocess.run(
        [sys.executable, "-c", _RUN, "--config", str(config), "--no-cache", "--no-logo"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_netstack_keeps_its_layers_and_has_no_cycles() -> None:
    result = lint_imports(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert "Contracts: 3 kept, 0 broken." in text
    for name in ("netstack layers", "netstack never imports olm", "no import cycles"):
        verdict = re.search(re.escape(name) + r".*? (KEPT|BROKEN)", text)
        assert verdict is not None and verdict.group(1) == "KEPT", name


def test_an_import_against_the_layers_is_reported(tmp_path: Path) -> None:
    pkg = tmp_path / "toystack"
    (pkg / "header").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "header" / "__init__.py").write_text("")
    (pkg / "stack.py").write_text("from toystack.header import ipv4\n")
    # The wrong direction: a wire format reaching up into the stack.
    (pkg / "header" / "ipv4.py").write_text("from toystack import stack\n")
    config = tmp_path / "layers.toml"
    config.write_text(
        textwrap.dedent(
            """\
            [tool.importlinter]
            root_packages = ["toystack"]

            [[tool.importlinter.contracts]]
            name = "toy layers"
            type = "layers"
            layers = ["(toystack.adapters)", "toystack.stack", "toystack.header"]
            """
        )
    )
    result = lint_imports(tmp_path, config)
    assert result.returncode != 0
    assert "toy layers BROKEN" in result.stdout
    assert "toystack.header.ipv4 -> toystack.stack" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("header/checksum.py", "from netstack.stack import Stack", "netstack layers"),
        ("transport/udp.py", "from netstack.network import ipv4", "netstack layers"),
        ("network/icmp.py", "from netstack.transport import udp", "netstack layers"),
        ("protocols.py", "import netstack.stack", "netstack layers"),
        ("link/channel.py", "import olm", "netstack never imports olm"),
    ],
)
def test_the_project_contracts_catch_a_wrong_import(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    for package in ("netstack", "olm"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path, tmp_path / "pyproject.toml").returncode == 0
    target = tmp_path / "netstack" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path, tmp_path / "pyproject.toml")
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[1]
    assert contract in broken
