"""Coverage-guided fuzzing of the parsers of outside input, with atheris (libFuzzer for Python).

    python -m bench.fuzz                      # every target, 180 s each
    python -m bench.fuzz --seconds 60 predict # one target

Targets (each a function of the raw bytes an attacker controls):

* ``tweakfile``: bytes -> UTF-8 -> the bounded YAML loader -> the tweak-file structure;
* ``predict``: a ``/predict`` body -> bounded JSON -> the feature matrix;
* ``webhook``: a delivery body -> bounded JSON -> push / pull-request targets;
* ``csv``: a dataset's bytes -> the content checks run before an experiment starts.

A target may refuse its input only with the error meant for that (``InvalidTweakFileError``,
``JsonLimitError``, ``InputError``, ``PayloadError``) and must answer within the time budget of
one input; anything else is a crash. Each target runs in its own process (libFuzzer owns the
process) seeded from ``bench/fuzz_seeds/<target>/``, with new inputs kept in a working corpus;
executions per second and coverage (libFuzzer's ``cov``/``ft`` counters) are reported and written
to ``bench/results/fuzz.json``. A crashing input is copied to ``tests/fuzz_regression/<target>/``,
whose files the test suite replays through the same target functions
(``tests/fuzz_regression/test_replay.py``). Needs the ``fuzz`` extra (``pip install -e .[fuzz]``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "bench" / "fuzz_seeds"
REGRESSION = ROOT / "tests" / "fuzz_regression"
RESULTS = ROOT / "bench" / "results" / "fuzz.json"
MAX_INPUT_BYTES = 70_000  # a little over the tweak-file limit, so the size bound itself is exercised
FEATURES = ("a", "b", "c")


def fuzz_tweakfile(data: bytes) -> None:
    """The tweak-file loader: bytes as a pushed file arrives (webhook) or is read from disk (CLI)."""
    from tweakline.errors import InvalidTweakFileError
    from tweakline.validation.loading import read_tweak_bytes, structure

    try:
        structure(read_tweak_bytes(data, "fuzz.tweak.yaml"))
    except InvalidTweakFileError as exc:
        assert exc.problems and all(len(str(p)) < 1000 for p in exc.problems), exc.problems


def fuzz_predict(data: bytes) -> None:
    """A ``/predict`` body: bounded JSON, then the rows checked against the features."""
    from tweakline.model_server.inputs import InputError, rows_to_matrix
    from tweakline.validation.json_input import JsonLimitError, parse_json

    try:
        rows_to_matrix(parse_json(data), FEATURES)
    except (JsonLimitError, InputError):
        pass


def fuzz_webhook(data: bytes) -> None:
    """A delivery's body: bounded JSON, then a push and a pull-request payload read from it."""
    from tweakline.validation.json_input import JsonLimitError, parse_json
    from tweakline.webhook.bitbucket import PayloadError, target_from_pull_request, targets_from_push

    try:
        payload = parse_json(data)
    except JsonLimitError:
        return
    if not isinstance(payload, dict):
        return
    for read in (targets_from_push, target_from_pull_request):
        try:
            read(payload)
        except PayloadError:
            pass


def fuzz_csv(data: bytes) -> None:
    """A dataset's content, as checked before an experiment starts: problems, never an exception."""
    from tweakline.proto.tweakfile import DatasetSpec
    from tweakline.validation.checks import csv_problems

    spec = DatasetSpec(source="csv:data.csv", target="y")
    problems = csv_problems(spec, data, "data.csv", cv=3)
    assert all(len(str(p)) < 2000 for p in problems), problems


TARGETS: dict[str, Callable[[bytes], None]] = {
    "tweakfile": fuzz_tweakfile,
    "predict": fuzz_predict,
    "webhook": fuzz_webhook,
    "csv": fuzz_csv,
}
# What each target imports, instrumented for coverage (everything a target's input reaches).
_INSTRUMENTED = (
    "tweakline.validation.limits",
    "tweakline.validation.loading",
    "tweakline.validation.json_input",
    "tweakline.validation.checks",
    "tweakline.model_server.inputs",
    "tweakline.webhook.bitbucket",
    "tweakline.proto.tweakfile",
    "tweakline.ml.datasets",
)


def _child(target: str, libfuzzer_args: list[str]) -> None:
    """Inside the fuzzing process: instrument the parsers, then hand control to libFuzzer."""
    import importlib

    import atheris

    with atheris.instrument_imports(include=["tweakline"]):
        for module in _INSTRUMENTED:
            importlib.import_module(module)
    function = TARGETS[target]
    atheris.Setup([sys.argv[0], *libfuzzer_args], function)
    atheris.Fuzz()


_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+ .*?exec/s: (\d+)")
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")


def run_target(target: str, seconds: int, workdir: Path) -> dict[str, object]:
    """Fuzz one target for ``seconds`` in a child process; its figures, and any crashing input."""
    corpus = workdir / target / "corpus"
    artifacts = workdir / target / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [
        str(corpus),
        str(SEEDS / target),
        f"-max_total_time={seconds}",
        f"-max_len={MAX_INPUT_BYTES}",
        "-timeout=30",  # one input may take at most 30 s on a loaded machine (a hang is a crash)
        "-rss_limit_mb=2048",  # and at most 2 GB (an alias bomb would be one)
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
    ]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fuzz", "--child", target, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 600,
        check=False,
    )
    elapsed = time.monotonic() - started
    log = proc.stderr
    stats = {k: int(v) for k, v in _STAT.findall(log)}
    done = _DONE.findall(log)
    crashes = sorted(artifacts.iterdir())
    kept = []
    for crash in crashes:  # every input that ever failed joins the regression corpus
        dest = REGRESSION / target / crash.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(crash, dest)
        kept.append(str(dest.relative_to(ROOT)))
    result: dict[str, object] = {
        "target": target,
        "seconds": round(elapsed, 1),
        "executions": stats.get("number_of_executed_units", int(done[-1][0]) if done else 0),
        "exec_per_s": int(done[-1][4]) if done else stats.get("average_exec_per_sec", 0),
        "coverage_edges": int(done[-1][1]) if done else None,
        "features": int(done[-1][2]) if done else None,
        "corpus_inputs": int(done[-1][3]) if done else None,
        "peak_rss_mb": stats.get("peak_rss_mb"),
        "exit_code": proc.returncode,
        "crashes": kept,
    }
    if proc.returncode != 0 or kept:
        result["log_tail"] = log[-3000:]
    return result


def main(argv: list[str] | None = None) -> int:
    """Fuzz the chosen targets in turn; exit 1 if any crashed."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"targets to fuzz: {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=180, help="time budget per target (default 180)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the grown corpora here (default: a temp dir)")
    options = parser.parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tweakline-fuzz-"))
    results = []
    print(f"{'target':<10} {'seconds':>8} {'execs':>10} {'exec/s':>8} {'cov':>6} {'ft':>6} {'corpus':>7}  crashes")
    for target in options.targets or list(TARGETS):
        r = run_target(target, options.seconds, workdir)
        results.append(r)
        print(
            f"{target:<10} {r['seconds']:>8} {r['executions']:>10} {r['exec_per_s']:>8} {r['coverage_edges']!s:>6} "
            f"{r['features']!s:>6} {r['corpus_inputs']!s:>7}  {len(r['crashes']) or ('exit ' + str(r['exit_code']) if r['exit_code'] else 0)}",
            flush=True,
        )
        if "log_tail" in r:
            print(r["log_tail"], file=sys.stderr)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "targets": results}, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 1 if any(r["crashes"] or r["exit_code"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
