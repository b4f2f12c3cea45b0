"""Hostile tweak files: each is refused by ``validate``, ``run`` and ``submit`` with exit 2 and one
line naming the problem, no traceback, in seconds, under a memory ceiling, before anything starts.

The corpus (``hostile.py``) breaks one bound per file: binary and non-UTF-8 bytes, a huge file,
a FIFO, ``/dev/zero``, a directory, deep nesting, alias bombs, duplicate keys, non-finite and
oversized numbers, giant grids, too many choices, parameters and labels, Python tags and bad CSVs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.validation.hostile import cases, write_corpus

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT_MB = 2048  # address space of the whole child (Python, numpy, scipy, scikit-learn mapped)
SECONDS_PER_FILE = 10.0  # generous on a loaded 2-core machine; a typical refusal takes ~0.1 s


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], int]:
    folder = tmp_path_factory.mktemp("hostile")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", TWEAKLINE_STATE_DIR=str(folder / "state"))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.validation.hostile_child", str(folder / "corpus"), str(MEMORY_LIMIT_MB)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    peak = lines.pop()["peak_rss_mb"]
    return lines, peak


def test_the_corpus_covers_every_kind_of_hostile_file() -> None:
    names = {c.name for c in cases()}
    for kind in ("binary", "latin-1", "huge", "fifo", "dev-zero", "deep-flow", "alias-bomb-fixed", "duplicate-estimator"):
        assert kind in names
    for kind in ("high-inf", "grid-10-12", "python-object", "csv-inf", "csv-strings", "csv-one-row", "csv-no-feature"):
        assert kind in names
    assert len(names) >= 40


@pytest.mark.parametrize("command", ["validate", "run", "submit"])
def test_every_hostile_file_is_refused_with_one_line(results: tuple[list[dict], int], command: str) -> None:
    rows = [r for r in results[0] if r["command"] == command]
    assert len(rows) == len(cases())
    wrong = []
    for r in rows:
        lines = r["output"].strip().splitlines()
        ok = (
            r["code"] == 2
            and r["exception"] is None
            and len(lines) == 1
            and r["expect"] in lines[0]
            and "Traceback" not in r["output"]
            and r["seconds"] < SECONDS_PER_FILE
            and not r["started"]
        )
        if not ok:
            wrong.append({k: r[k] for k in ("name", "code", "exception", "seconds", "started")} | {"output": r["output"][:300]})
    assert not wrong, json.dumps(wrong, indent=1)


def test_memory_stays_bounded(results: tuple[list[dict], int]) -> None:
    # Under RLIMIT_AS every file was refused (above); the resident peak of all 150 refusals stays small.
    assert results[1] < 600, f"peak RSS {results[1]} MB"


@pytest.mark.parametrize(
    ("command", "case"),
    [("validate", "fifo"), ("run", "alias-bomb-fixed"), ("submit", "deep-flow")],
)
def test_as_a_real_process_there_is_no_traceback(tmp_path: Path, command: str, case: str) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    path, expect = corpus[case]
    extra = ["--ephemeral"] if command == "run" else []
    result = run_cli(command, str(path), *extra, env={"TWEAKLINE_STATE_DIR": str(tmp_path / "state")}, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2, result.stderr
    assert len(lines) == 1 and expect in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "state").exists()  # nothing started: no state directory made
