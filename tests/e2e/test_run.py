"""The user's story: 'tweakline run FILE' on the embedded stack, from tweak file to decision.

Each test runs the real command in a subprocess: a real nats-server with mTLS, and every
service as its own process, exactly as the README's demo does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from tests.conftest import EXAMPLES, run_cli

pytestmark = pytest.mark.e2e

SUMMARY_FIELDS = {
    "experiment_id",
    "decision",
    "best_params",
    "best_cv_score",
    "test_metrics",
    "default_metrics",
    "production_metrics",
    "release",
    "revision",
    "trials",
    "exit_code",
}


def leftover_processes(state_dir: Path) -> list[psutil.Process]:
    """Processes still running that belong to the stack in ``state_dir``."""
    marker = str(state_dir.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            environ = proc.environ() if "tweakline" in cmdline or "nats-server" in cmdline else {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if marker in cmdline or environ.get("TWEAKLINE_STATE_DIR") == marker:
            found.append(proc)
    return found


def test_classification_demo_promotes_then_compares_with_production(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = run_cli("run", str(EXAMPLES / "wine-svc.tweak.yaml"), "--json", "--state-dir", str(state), "--runners", "2")
    assert first.code == 0, first.stderr
    result = first.json()
    assert SUMMARY_FIELDS <= result.keys()
    assert result["decision"] == "promote"
    assert result["trials"] == {"total": 24, "ok": 24, "failed": 0, "pruned": 0}
    assert set(result["best_params"]) == {"C", "gamma"}
    assert result["test_metrics"]["accuracy"] >= result["default_metrics"]["accuracy"]
    assert result["release"] == "wine" and result["revision"] == 1
    assert result["production_metrics"] is None
    assert not leftover_processes(state)

    # The second push of the same release is compared with the model now in production.
    second = run_cli("run", str(EXAMPLES / "wine-svc.tweak.yaml"), "--json", "--state-dir", str(state), "--runners", "2")
    again = second.json()
    assert again["production_revision"] == 1
    assert again["production_metrics"]["accuracy"] == pytest.approx(result["test_metrics"]["accuracy"])
    assert second.code == {"promote": 0, "reject": 1}[again["decision"]], second.stderr
    assert any("production" in reason for reason in again["reasons"])
    assert again["revision"] == (2 if again["decision"] == "promote" else None)
    assert not leftover_processes(state)


def test_regression_example_runs_end_to_end(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = run_cli("run", str(EXAMPLES / "diabetes-svr.tweak.yaml"), "--json", "--state-dir", str(state), "--runners", "2")
    result = done.json()
    assert done.code == 0, done.stderr
    assert result["decision"] == "promote"
    assert {"r2", "rmse", "mae"} <= result["test_metrics"].keys()
    assert result["test_metrics"]["r2"] > result["default_metrics"]["r2"]
    assert result["trials"]["total"] == 16
    assert not leftover_processes(state)


def test_human_output_shows_leaderboard_and_decision(tmp_path: Path) -> None:
    done = run_cli("run", str(EXAMPLES / "diabetes-svr.tweak.yaml"), "--ephemeral", "--runners", "1")
    assert done.code == 0, done.stderr
    assert "Leaderboard (r2, higher is better)" in done.stdout
    assert "PROMOTE" in done.stdout
    assert "16/16" in done.stderr  # the progress bar reached the end


def test_invalid_tweak_file_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tweak.yaml"
    text = (EXAMPLES / "wine-svc.tweak.yaml").read_text().replace("low: 1.0e-2", "low: -1")
    bad.write_text(text)
    state = tmp_path / "state"
    done = run_cli("run", str(bad), "--state-dir", str(state))
    assert done.code == 2
    assert "spec.search.space.C.low: must be > 0 when log is true, got -1" in done.stderr
    assert "Traceback" not in done.stderr
    assert not state.exists()


def test_a_file_refused_while_the_stack_starts_submits_nothing_and_leaves_nothing(tmp_path: Path) -> None:
    # Sound in structure, refused only by the checks that import scikit-learn: those run while the
    # stack starts (the overlapped start-up), and the stack that started is stopped unused.
    text = (EXAMPLES / "wine-svc.tweak.yaml").read_text().replace("gamma: {", "gamma_typo: {")
    bad = tmp_path / "bad.tweak.yaml"
    bad.write_text(text)
    fresh = tmp_path / "fresh"
    done = run_cli("run", str(bad), "--state-dir", str(fresh))
    assert done.code == 2
    assert "spec.search.space.gamma_typo: SVC has no parameter 'gamma_typo'" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr + done.stdout
    assert not fresh.exists()  # a state directory the refused run made is removed again
    assert not leftover_processes(fresh)

    # On a state directory that exists, the stack started (its store) and got no submission. How
    # far the services got before the refusal depends on the machine: not asserted.
    kept = tmp_path / "kept"
    kept.mkdir()
    again = run_cli("run", str(bad), "--state-dir", str(kept))
    assert again.code == 2, again.stderr
    assert (kept / "jetstream").is_dir()
    assert not (kept / "run" / "stack.json").exists()
    assert not leftover_processes(kept)
    assert asyncio.run(submissions_in(kept)) == 0


async def submissions_in(state_dir: Path) -> int:
    """How many submissions the EVENTS stream of the stack in ``state_dir`` holds (its nats-server started alone)."""
    from tweakline.proto.permissions import Identity
    from tweakline.proto.subjects import Stream, Subject, all_of
    from tweakline.runtime.bus import connect
    from tweakline.runtime.natsserver import EmbeddedNatsServer, ServerConfig
    from tweakline.runtime.pki import TlsFiles
    from tweakline.runtime.settings import Settings

    server = EmbeddedNatsServer(
        ServerConfig(store_dir=state_dir / "jetstream", tls=TlsFiles(state_dir / "pki" / Identity.NATS_SERVER)), state_dir / "run"
    )
    url = server.start()
    try:
        nc = await connect(Settings(nats_url=url, identity=Identity.ADMIN, state_dir=state_dir), "test-submissions")
        try:
            info = await nc.jetstream().stream_info(Stream.EVENTS, subjects_filter=all_of(Subject.EXPERIMENT_SUBMITTED))
            return sum((info.state.subjects or {}).values())
        finally:
            await nc.close()
    finally:
        server.stop()


def test_csv_dataset_relative_to_the_tweak_file(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris

    data = load_iris()
    rows = ["sepal_l,sepal_w,petal_l,petal_w,species"]
    rows += [",".join(f"{v:.2f}" for v in x) + f",{data.target_names[y]}" for x, y in zip(data.data, data.target)]
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "iris.csv").write_text("\n".join(rows) + "\n")
    (project / "iris.tweak.yaml").write_text(
        """
apiVersion: tweakline/v1
kind: Experiment
metadata: {name: iris-csv}
spec:
  dataset: {source: "csv:data/iris.csv", target: species}
  model: {estimator: sklearn.neighbors.KNeighborsClassifier}
  search:
    algorithm: grid
    space:
      n_neighbors: {type: int, low: 1, high: 9, step: 2}
      weights: {type: categorical, choices: [uniform, distance]}
  objective: {metric: f1_macro, cv: 3}
  budget: {max_trials: 50, parallelism: 3}
  gate: {thresholds: {f1_macro: 0.8}}
"""
    )
    done = run_cli("run", "iris.tweak.yaml", "--json", "--ephemeral", "--runners", "2", cwd=project)
    result = done.json()
    assert done.code == 0, done.stderr
    assert result["trials"]["total"] == 10  # the grid has 5 x 2 points, fewer than max_trials
    assert result["release"] is None and result["revision"] is None  # no deploy section
