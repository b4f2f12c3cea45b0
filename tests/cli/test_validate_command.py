"""`tweakline validate` on tweak files with early stopping: what it says, and a bad resource's error."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_validate_says_which_early_stopping_and_which_rungs() -> None:
    result = run_cli("validate", str(ROOT / "examples" / "breast-cancer-gbc-rungs.tweak.yaml"))
    assert result.code == 0, result.stderr
    assert "early stopping asha on rungs of n_estimators (11, 33, 100)" in " ".join(result.stderr.split())


def test_a_resource_the_estimator_lacks_is_refused_naming_the_field(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "breast-cancer-gbc-rungs.tweak.yaml").read_text()
    bad = tmp_path / "svc-rungs.tweak.yaml"
    bad.write_text(
        text.replace("sklearn.ensemble.GradientBoostingClassifier", "sklearn.svm.SVC")
        .replace("learning_rate: {type: float, low: 1.0e-3, high: 1.0, log: true}", "C: {type: float, low: 0.1, high: 10}")
        .replace("      max_depth:     {type: int, low: 1, high: 5}\n", "")
        .replace("      subsample:     {type: float, low: 0.4, high: 1.0}\n", "")
    )
    result = run_cli("validate", str(bad))
    assert result.code == 2
    said = " ".join(result.stderr.split())
    assert "spec.search.resource.name: SVC has no parameter 'n_estimators'" in said, said
    assert "Traceback" not in result.stderr


def test_validate_platform_refuses_a_code_trainer_unless_the_repository_is_allowed() -> None:
    example = str(ROOT / "examples" / "trainers" / "digits-cnn" / "tweak.yaml")
    assert run_cli("validate", example).code == 0  # as `tweakline run` would: your code, your machine
    refused = run_cli("validate", "--platform", "--repository", "team/models", example, env={"TWEAKLINE_CODE_TRAINERS": "[]"})
    assert refused.code == 2
    said = " ".join(refused.stderr.split())
    assert "spec.model.trainer: code trainers are switched off on this platform for repository 'team/models'" in said, said
    allowed = run_cli(
        "validate", "--platform", "--repository", "team/models", example, env={"TWEAKLINE_CODE_TRAINERS": '["team/*"]'}
    )
    assert allowed.code == 0, allowed.stderr
