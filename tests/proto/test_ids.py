"""Ids on the bus are one bounded, safe token: checked by the message models and before any subject or KV key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.factories import make_tweak, tweak_dict
from tweakline.client.follow import new_experiment_id
from tweakline.proto.ids import EXPERIMENT_ID_MAX_LENGTH, InvalidIdentifierError, check_experiment_id
from tweakline.proto.messages import (
    DeploymentCompleted,
    DeploymentStatus,
    ExperimentSubmitted,
    ReleaseHistory,
    TrialCompleted,
    TrialStatus,
    trial_id,
)
from tweakline.proto.subjects import Subject, experiment_events, subject_for
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.records import InvalidRecordKeyError, check_key

# Ids the platform makes (client, webhook, bench) and hand-written ones in use: all stay valid.
GOOD = ["e", "e1", "intake-1", "digits-svc-1234abcd", "bench-digits-12345678", "Run_2", "a" * EXPERIMENT_ID_MAX_LENGTH]
# What broke the scheduler (#16) and what else would split, widen or overflow a subject or key.
BAD = ["", "a b", "a" * 5000, "a" * (EXPERIMENT_ID_MAX_LENGTH + 1), "a.b", "a*", ">", "-lead", "tab\t", "é", "a/b"]


@pytest.mark.parametrize("value", GOOD)
def test_valid_ids_pass_everywhere(value: str) -> None:
    message = ExperimentSubmitted(experiment_id=value, tweak=make_tweak())
    assert subject_for(Subject.EXPERIMENT_SUBMITTED, value).endswith(f".{message.experiment_id}")
    assert experiment_events(value).endswith(value)
    assert check_key(value) == value
    TrialCompleted(experiment_id=value, trial_id=trial_id(value, 12), number=12, status=TrialStatus.OK, params={})


def test_generated_ids_are_valid_for_the_longest_name() -> None:
    tweak = make_tweak("n" * 53)
    assert check_experiment_id(new_experiment_id(tweak))


@pytest.mark.parametrize("value", BAD)
def test_invalid_ids_are_refused_by_the_models(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        ExperimentSubmitted.model_validate({"experiment_id": value, "tweak": tweak_dict()})
    assert info.value.errors()[0]["loc"] == ("experiment_id",)


@pytest.mark.parametrize("value", BAD)
def test_invalid_ids_never_become_a_subject(value: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="experiment id .* is not valid: expected 1-100 letters"):
        subject_for(Subject.TRIAL_REQUESTED, value)
    with pytest.raises(ValueError):
        experiment_events(value)


def test_the_refusal_of_a_huge_id_is_short() -> None:
    with pytest.raises(InvalidIdentifierError) as info:
        check_experiment_id("x" * 5000)
    assert "(5000 characters)" in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("value", ["", "a b", "k" * 257, ".lead", "trail.", "a*b", "a>b"])
def test_invalid_record_keys_are_refused_before_the_server(value: str) -> None:
    with pytest.raises(InvalidRecordKeyError, match="record key .* is not valid"):
        check_key(value)


@pytest.mark.parametrize("bad", ["x" * 5000, "x" * 111, "", "e.", ".1", "a b.1", "e.*", "e>.1"])
def test_trial_ids_are_bounded_safe_keys(bad: str) -> None:
    with pytest.raises(ValidationError):
        TrialCompleted(experiment_id="e", trial_id=bad, number=1, status=TrialStatus.OK, params={})


@pytest.mark.parametrize("release", ["Prod", "a_b", "r" * 54, "", "-r"])
def test_release_names_are_kubernetes_names_on_messages_and_in_tweak_files(release: str) -> None:
    with pytest.raises(ValidationError):
        DeploymentCompleted(experiment_id="e", release=release, target="local", status=DeploymentStatus.DEPLOYED)
    with pytest.raises(ValidationError):
        ReleaseHistory(release=release)
    with pytest.raises(ValidationError):
        TweakFile.model_validate(tweak_dict(deploy={"release": release}))


def test_metadata_name_is_bounded() -> None:
    with pytest.raises(ValidationError) as info:
        TweakFile.model_validate(tweak_dict(name="n" * 5000))
    assert info.value.errors()[0]["loc"] == ("metadata", "name")
