"""The one-line summary, the build state and the Markdown report for each kind of decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tweakline.errors import ConfigurationError
from tweakline.proto.messages import (
    Decision,
    DeploymentCompleted,
    DeploymentStatus,
    EvaluationCompleted,
    Source,
)
from tweakline.reporting.ci import (
    decision_status,
    file_label,
    final_state,
    markdown_report,
    status_key,
    summary_line,
    write_report,
)


def evaluation(decision: Decision = Decision.PROMOTE, **kw: object) -> EvaluationCompleted:
    fields: dict[str, object] = {
        "experiment_id": "digits-svc-1234abcd",
        "decision": decision,
        "metric": "accuracy",
        "candidate_metrics": {"accuracy": 0.981, "f1_macro": 0.97},
        "default_metrics": {"accuracy": 0.95, "f1_macro": 0.94},
        "production_metrics": {"accuracy": 0.969, "f1_macro": 0.96},
        "reasons": ["accuracy 0.9810 >= 0.9500"],
        "best_params": {"C": 12.5},
        "source": Source(repository="acme/models", commit="c" * 40, branch="main", path="digits.tweak.yaml"),
    }
    fields.update(kw)
    return EvaluationCompleted(**fields)


def deployed(revision: int = 7, status: DeploymentStatus = DeploymentStatus.DEPLOYED) -> DeploymentCompleted:
    return DeploymentCompleted(
        experiment_id="digits-svc-1234abcd",
        release="digits",
        target="local",
        status=status,
        revision=revision,
        message="" if status is DeploymentStatus.DEPLOYED else "check failed",
    )


@pytest.mark.parametrize(
    ("ev", "dep", "line", "state"),
    [
        (evaluation(), deployed(), "accuracy 0.981 (+0.012 vs production), promoted rev 7", "SUCCESSFUL"),
        (
            evaluation(production_metrics=None),
            deployed(1),
            "accuracy 0.981 (+0.031 vs defaults, no model in production), promoted rev 1",
            "SUCCESSFUL",
        ),
        (
            evaluation(),
            deployed(8, DeploymentStatus.ROLLED_BACK),
            "accuracy 0.981 (+0.012 vs production), promotion rolled_back: check failed",
            "FAILED",
        ),
        (
            evaluation(Decision.REJECT, candidate_metrics={"accuracy": 0.96}, reasons=["beat_production: gain -0.009"]),
            None,
            "accuracy 0.960 (-0.009 vs production), rejected: beat_production: gain -0.009",
            "FAILED",
        ),
        (
            evaluation(Decision.ERROR, candidate_metrics={}, reasons=["dataset not found"]),
            None,
            "error: dataset not found",
            "FAILED",
        ),
        (
            evaluation(
                metric="rmse", candidate_metrics={"rmse": 40.0}, production_metrics={"rmse": 42.5}, default_metrics={"rmse": 50.0}
            ),
            None,
            "rmse 40.000 (+2.500 vs production), promoted",
            "SUCCESSFUL",
        ),  # lower is better: a gain
    ],
)
def test_summary_line_and_state(ev: EvaluationCompleted, dep: DeploymentCompleted | None, line: str, state: str) -> None:
    assert summary_line(ev, dep) == line
    assert final_state(ev, dep) == state


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("models/digits.tweak.yaml", "models-digits"),
        ("./digits.tweak.yml", "digits"),
        ("/tmp/ci/x/wine.tweak.yaml", "wine"),
        ("a/b/c.yaml", "a-b-c"),
    ],
)
def test_file_labels_are_the_repository_path(path: str, label: str) -> None:
    assert file_label(path) == label


def test_status_keys_fit_bitbucket_limit() -> None:
    assert status_key("digits-svc") == "tweakline-digits-svc"
    long = "a" * 53
    assert len(status_key(long)) <= 40 and status_key(long) != status_key("a" * 52 + "b")


def test_markdown_report_has_gains_params_release_and_link() -> None:
    text = markdown_report("digits-svc", evaluation(), deployed(), url="https://t.example/reports/x")
    assert "✅ promoted" in text
    assert "| accuracy (objective) | 0.9810 | 0.9500 | +0.0310 | 0.9690 | +0.0120 |" in text
    assert "| f1_macro | 0.9700 | 0.9400 | +0.0300 | 0.9600 | +0.0100 |" in text
    assert "`C=12.5`" in text and "Release `digits` (local): deployed, revision 7" in text
    assert "commit `cccccccccccc`" in text and text.rstrip().endswith("[Details](https://t.example/reports/x)")
    failed = markdown_report("digits-svc", evaluation(), deployed(8, DeploymentStatus.FAILED))
    assert "⚠️ promotion failed" in failed


def test_report_files_are_what_bitbucket_would_receive(tmp_path: Path) -> None:
    status = decision_status("digits-svc", evaluation(), deployed(), "https://t.example/r")
    paths = write_report(tmp_path / "out", status, "# report\n", {"decision": "promote"})
    assert [p.name for p in paths] == ["report.md", "build-status.json", "summary.json"]
    assert json.loads((tmp_path / "out" / "build-status.json").read_text()) == {
        "key": "tweakline-digits-svc",
        "state": "SUCCESSFUL",
        "name": "tweakline digits-svc",
        "description": "accuracy 0.981 (+0.012 vs production), promoted rev 7",
        "url": "https://t.example/r",
    }


def test_report_files_that_cannot_be_written_are_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the report directory should be\n")
    status = decision_status("digits-svc", evaluation(), deployed(), "")
    with pytest.raises(ConfigurationError) as caught:
        write_report(blocker / "out", status, "# report\n")
    assert str(blocker / "out") in str(caught.value) and "cannot write the reports" in str(caught.value)
