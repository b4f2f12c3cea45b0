"""Runner pools in the contracts: the trial subject carries the pool, each pool has its own consumer and identity."""

from __future__ import annotations

import pytest

from tweakline.proto.ids import InvalidIdentifierError
from tweakline.proto.permissions import Identity, permission_map, runner_identity
from tweakline.proto.subjects import (
    CONSUMER_FILTERS,
    DEFAULT_POOL,
    Consumer,
    Stream,
    Subject,
    all_of,
    pool_consumer,
    pool_filter,
    trial_subject,
)

EXP = "exp-0123456789ab"


def test_the_trial_subject_carries_the_pool_before_the_experiment_id() -> None:
    assert trial_subject("large", EXP) == f"tweakline.trials.requested.large.{EXP}"
    assert pool_filter("large") == "tweakline.trials.requested.large.>"
    # still inside the trials stream's subjects, and the experiment id is still the last token
    assert trial_subject("large", EXP).startswith(all_of(Subject.TRIAL_REQUESTED).removesuffix(">"))
    assert trial_subject("large", EXP).rsplit(".", 1)[1] == EXP


def test_the_default_pool_keeps_the_consumer_every_runner_shared() -> None:
    assert pool_consumer(DEFAULT_POOL) == Consumer.TRIAL_RUNNERS.value
    assert CONSUMER_FILTERS[Consumer.TRIAL_RUNNERS] == (Stream.TRIALS, pool_filter(DEFAULT_POOL))
    assert pool_consumer("large") == "trial-runners-large"
    assert runner_identity(DEFAULT_POOL) == Identity.TRIAL_RUNNER.value
    assert runner_identity("large") == "trial-runner-large"


@pytest.mark.parametrize("bad", ["", "Large", "a.b", "gpu>", "*", "x" * 80])
def test_a_bad_pool_name_never_becomes_a_subject(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="runner pool"):
        trial_subject(bad, EXP)
    with pytest.raises(InvalidIdentifierError):
        pool_consumer(bad)


def _trial_consumers(publish: list[str]) -> set[str]:
    """The durables of the trials stream that a publish allow list lets its holder pull from."""
    prefix = f"$JS.API.CONSUMER.MSG.NEXT.{Stream.TRIALS.value}."
    return {s.removeprefix(prefix) for s in publish if s.startswith(prefix)}


def test_each_pools_runners_may_pull_only_their_own_pools_trials() -> None:
    perms = permission_map(["default", "small", "large"])
    assert _trial_consumers(perms[Identity.TRIAL_RUNNER].publish) == {"trial-runners"}
    assert _trial_consumers(perms["trial-runner-small"].publish) == {"trial-runners-small"}
    assert _trial_consumers(perms["trial-runner-large"].publish) == {"trial-runners-large"}
    # the rest of a pool runner's rights are the default runner's, on its own inbox
    large, default = perms["trial-runner-large"], perms[Identity.TRIAL_RUNNER]
    assert "_INBOX.trial-runner-large.>" in large.subscribe and "_INBOX.trial-runner.>" not in large.subscribe
    assert [s for s in large.publish if "trial-runners" not in s] == [s for s in default.publish if "trial-runners" not in s]
    # a platform with the default pool only has exactly today's identities
    assert set(permission_map()) == set(permission_map([DEFAULT_POOL])) == {*perms} - {"trial-runner-small", "trial-runner-large"}
