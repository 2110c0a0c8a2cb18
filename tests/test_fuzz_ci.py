"""The fuzz harnesses in CI: seed corpora replay clean, and each harness fuzzes briefly.

``fuzz/run`` runs harnesses for minutes or hours; here each runs for a few seconds under
libFuzzer as a subprocess (two at a time, about 20 s in all) and must exit 0: a crash, an
invariant violation, a hang past 10 s or an out-of-memory fails the test, and libFuzzer's
reproducer lands in the test's temporary directory.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz.common import HARNESSES

ROOT = Path(__file__).resolve().parent.parent

CORPUS = ROOT / "fuzz" / "corpus"
SECONDS_EACH = 4
PARALLEL = 2


@pytest.mark.parametrize("name", HARNESSES)
def test_seed_corpus_replays_clean_in_process(name: str) -> None:
    module = importlib.import_module(f"fuzz.fuzz_{name}")
    seeds = sorted((CORPUS / name).iterdir())
    assert seeds, f"no seeds for {name}"
    for seed in seeds:
        module.test_one_input(seed.read_bytes())


def test_every_harness_fuzzes_clean_under_libfuzzer(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    pending = list(HARNESSES)
    running: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    results: dict[str, tuple[int, str]] = {}
    while pending or running:
        while pending and len(running) < PARALLEL:
            name = pending.pop(0)
            work = tmp_path / name
            (work / "corpus").mkdir(parents=True)
            log = work / "log"
            with log.open("wb") as out:
                cmd = [
                    sys.executable,
                    "-m",
                    f"fuzz.fuzz_{name}",
                    f"-max_total_time={SECONDS_EACH}",
                    "-timeout=10",
                    "-rss_limit_mb=1024",
                    "-seed=1",
                    "-print_final_stats=1",
                    f"-artifact_prefix={work}/",
                    str(work / "corpus"),
                    str(CORPUS / name),
                ]
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
            running.append((name, proc, log))
        for entry in list(running):
            name, proc, log = entry
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                continue
            running.remove(entry)
            results[name] = (proc.returncode, log.read_text(errors="replace"))
        time.sleep(0.05)
    for name, (code, output) in results.items():
        assert code == 0, f"fuzz_{name} exited {code}:\n{output[-3000:]}"
        assert "stat::number_of_executed_units" in output, f"fuzz_{name} did not fuzz"
