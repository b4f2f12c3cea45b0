"""The regression corpus: every input that ever failed a parser of outside input, replayed.

``python -m bench.fuzz`` copies each crashing input it finds to ``tests/fuzz_regression/<target>/``;
the inputs of issue 16 (tracebacks, hangs, alias bombs, 500s) are here from the start. Each file
goes through the same target function the fuzzer runs, which accepts only the refusal meant for
bad input; it must also finish quickly (each was a hang or a blow-up once).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.fuzz import TARGETS

HERE = Path(__file__).parent
CASES = sorted(p for target in TARGETS for p in (HERE / target).glob("*") if p.is_file())


def test_the_corpus_has_inputs_for_every_target() -> None:
    for target in TARGETS:
        assert list((HERE / target).glob("*")), f"no regression input for {target}"


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_a_past_failure_is_handled(path: Path) -> None:
    TARGETS[path.parent.name](b"")  # imports (scikit-learn for csv) are not the input's cost
    started = time.monotonic()
    TARGETS[path.parent.name](path.read_bytes())  # raises on anything but a clean refusal
    assert time.monotonic() - started < 10, "each of these once hung or blew up: it must stay quick"
