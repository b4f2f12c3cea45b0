"""Bus messages between releases: envelopes tolerate unknown fields; the tweak file stays strict.

An older service must read what a newer one writes: unknown envelope fields are ignored, and
an embedded tweak file travels with only the fields that were set, so a default added to the
tweak-file models in a newer release never reaches (and never breaks) an older receiver.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from tweakline.proto.messages import (
    PAYLOADS,
    ArtifactRef,
    CancelExperiment,
    Comparison,
    DeadLetter,
    Decision,
    DeploymentCompleted,
    DeploymentStatus,
    EvaluationCompleted,
    ExperimentCancelled,
    ExperimentCompleted,
    ExperimentStatus,
    ExperimentSubmitted,
    GateCheck,
    Message,
    ModelStats,
    RevisionFigures,
    RollbackCompleted,
    RollbackRequested,
    Source,
    TrialCompleted,
    TrialControl,
    TrialProgress,
    TrialRecord,
    TrialRequested,
    TrialStatus,
    WarmStartReport,
)
from tweakline.proto.tweakfile import DeploySpec, ExperimentSpec, GateSpec, TweakFile

TWEAK = TweakFile.model_validate(
    {
        "apiVersion": "tweakline/v1",
        "kind": "Experiment",
        "metadata": {"name": "iris-knn"},
        "spec": {
            "dataset": {"source": "sklearn:iris"},
            "model": {"estimator": "sklearn.neighbors.KNeighborsClassifier"},
            "search": {"algorithm": "random", "space": {"n_neighbors": {"type": "int", "low": 1, "high": 15}}},
            "objective": {"metric": "accuracy", "cv": 3},
            "deploy": {"release": "iris"},
        },
    }
)
RECORD = TrialRecord(number=0, params={"n_neighbors": 3}, status=TrialStatus.OK, score=0.9)
ARTIFACT = ArtifactRef(bucket="tweakline-artifacts", name="m.skops", sha256="0" * 64, size=1)
SOURCE = Source(repository="acme/models", commit="a" * 40, trigger="webhook")

# One full example of every payload, with its nested envelopes filled in.
EXAMPLES: dict[type[Message], Message] = {
    ExperimentSubmitted: ExperimentSubmitted(experiment_id="e", tweak=TWEAK, source=SOURCE),
    TrialRequested: TrialRequested(experiment_id="e", trial_id="e.0", number=0, params={"n_neighbors": 3}, spec=TWEAK.spec),
    TrialProgress: TrialProgress(experiment_id="e", trial_id="e.0", number=0, step=0, value=0.5),
    TrialControl: TrialControl(experiment_id="e", trial_id="e.0"),
    CancelExperiment: CancelExperiment(experiment_id="e", reason="stale", requested_by="admin (ops)"),
    ExperimentCancelled: ExperimentCancelled(
        experiment_id="e", status=ExperimentStatus.SUPERSEDED, superseded_by="f", stopped_trials=[2, 3], trials_done=2
    ),
    TrialCompleted: TrialCompleted(experiment_id="e", trial_id="e.0", number=0, status=TrialStatus.OK, params={}),
    RollbackRequested: RollbackRequested(
        release="iris", to=1, expect_current=2, reason="regressed", requested_by="console (ops)", request_id="r1"
    ),
    RollbackCompleted: RollbackCompleted(release="iris", request_id="r1", ok=True, revision=1, previous=2, message="done"),
    ExperimentCompleted: ExperimentCompleted(
        experiment_id="e",
        tweak=TWEAK,
        source=SOURCE,
        status=ExperimentStatus.COMPLETED,
        trials=[RECORD],
        best=RECORD,
        started_at="2026-01-01T00:00:00Z",
        warm_start=WarmStartReport(lineage="acme/models:iris-knn"),
    ),
    EvaluationCompleted: EvaluationCompleted(
        experiment_id="e",
        decision=Decision.PROMOTE,
        checks=[GateCheck(rule="accuracy >= 0.8", passed=True, detail="0.9")],
        comparison=Comparison(
            metric="accuracy",
            candidate=0.9,
            production=0.8,
            difference=0.1,
            required_gain=0.0,
            test="mcnemar-midp",
            alpha=0.05,
            n=30,
            significant=True,
            supported=True,
            rule="r",
        ),
        probe=ARTIFACT,
        artifact=ARTIFACT,
        gate=TWEAK.spec.gate,
        deploy=TWEAK.spec.deploy,
        source=SOURCE,
    ),
    DeploymentCompleted: DeploymentCompleted(experiment_id="e", release="iris", target="local", status=DeploymentStatus.DEPLOYED),
    DeadLetter: DeadLetter(service="scheduler", subject="s", reason="r", payload="{}"),
    ModelStats: ModelStats(
        release="iris", instance="pod-1", revision=2, revisions=[RevisionFigures(revision=2, requests=3, labels={"1": 3})]
    ),
}
STRICT = (TweakFile, ExperimentSpec, GateSpec, DeploySpec)  # written by a person: never widened


def with_unknown_fields(message: BaseModel, data: dict[str, Any]) -> int:
    """Add an unknown field to ``data`` and to every nested envelope in it; return how many were added."""
    if isinstance(message, STRICT):
        return 0
    data["field_from_a_newer_release"] = {"anything": [1, 2]}
    added = 1
    for name in type(message).model_fields:
        value = getattr(message, name)
        items: list[tuple[Any, Any]] = []
        if isinstance(value, BaseModel):
            items = [(value, data[name])]
        elif isinstance(value, list):
            items = list(zip(value, data[name], strict=True))
        elif isinstance(value, dict):
            items = [(v, data[name][k if isinstance(k, str) else str(k)]) for k, v in value.items()]
        for inner, inner_data in items:
            if isinstance(inner, Message):
                added += with_unknown_fields(inner, inner_data)
    return added


def test_every_payload_has_an_example() -> None:
    assert set(PAYLOADS.values()) == set(EXAMPLES)


@pytest.mark.parametrize("model", sorted(set(PAYLOADS.values()), key=lambda m: m.__name__), ids=lambda m: m.__name__)
def test_unknown_fields_at_every_envelope_level_are_ignored(model: type[Message]) -> None:
    example = EXAMPLES[model]
    data = example.model_dump(mode="json")
    added = with_unknown_fields(example, data)

    read = model.model_validate_json(json.dumps(data))
    assert read == model.model_validate_json(example.model_dump_json())
    if model in (ExperimentCompleted, EvaluationCompleted, ExperimentSubmitted):
        assert added > 1  # nested envelopes were exercised too, not only the top level


def test_embedded_tweak_files_travel_without_their_defaults() -> None:
    body = ExperimentSubmitted(experiment_id="e", tweak=TWEAK).model_dump(mode="json")
    spec = body["tweak"]["spec"]
    assert "budget" not in spec and "gate" not in spec  # defaults: the receiver applies its own
    assert spec["deploy"] == {"release": "iris"}
    assert ExperimentSubmitted.model_validate(body).tweak == TWEAK  # and nothing is lost


def test_the_tweak_file_inside_a_message_stays_strict() -> None:
    body = ExperimentSubmitted(experiment_id="e", tweak=TWEAK).model_dump(mode="json")
    body["tweak"]["spec"]["model"]["estimatr"] = "typo"
    with pytest.raises(ValidationError, match="estimatr"):
        ExperimentSubmitted.model_validate(body)


# A newer release whose tweak-file models gained defaulted fields (top level and nested).


class NewerSpec(ExperimentSpec):
    priority: int = Field(default=0)


class NewerTweakFile(TweakFile):
    spec: NewerSpec
    owner: str = "unknown"


def test_a_newer_writer_with_new_defaulted_fields_is_read_by_this_release() -> None:
    newer = NewerTweakFile.model_validate(TWEAK.model_dump(exclude_unset=True))
    assert newer.owner == "unknown" and newer.spec.priority == 0  # the newer defaults exist...
    wire = ExperimentSubmitted(experiment_id="e", tweak=newer).model_dump_json()
    assert "priority" not in wire and "owner" not in wire  # ...but never travel
    read = ExperimentSubmitted.model_validate_json(wire)  # this (older) release reads it
    assert read.tweak == TWEAK
    # Without the rule, the older receiver would refuse it (the tweak file is strict):
    with pytest.raises(ValidationError, match="owner"):
        TweakFile.model_validate(newer.model_dump())


def test_a_new_field_the_user_did_write_is_still_refused_by_an_older_receiver() -> None:
    # It cannot be honoured by a release that does not know it: refusing is right.
    newer = NewerTweakFile.model_validate(TWEAK.model_dump(exclude_unset=True) | {"owner": "jane"})
    with pytest.raises(ValidationError, match="owner"):
        ExperimentSubmitted.model_validate_json(ExperimentSubmitted(experiment_id="e", tweak=newer).model_dump_json())
