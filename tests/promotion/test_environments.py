"""Environments by branch: the one rule the deployer applies and the clients report."""

from __future__ import annotations

import pytest

from tweakline.promotion.environments import environment_for
from tweakline.proto.messages import Source
from tweakline.proto.tweakfile import DeploySpec

DEPLOY = DeploySpec(release="churn")


@pytest.mark.parametrize(
    ("source", "production", "words"),
    [
        (Source(branch="main", trigger="webhook"), True, "branch main is a production branch"),
        (Source(branch="master", trigger="pipeline"), True, "production branch"),
        (Source(branch="feature/x", trigger="webhook"), False, "branch feature/x: judged, not deployed"),
        (Source(branch="main", pull_request=12, trigger="webhook"), False, "pull request #12: judged, not deployed"),
        (Source(branch="feature/x", pull_request=7, trigger="pipeline"), False, "promoted only from main, master"),
        (Source(trigger="cli"), True, "no branch (a run by hand)"),
        (None, True, "no branch"),
    ],
)
def test_only_declared_branches_change_production(source, production: bool, words: str) -> None:
    env = environment_for(source, DEPLOY)
    assert env.production is production and words in env.reason


def test_a_repository_declares_its_own_branches_as_globs() -> None:
    deploy = DeploySpec(release="churn", production_branches=["release/*"])
    assert environment_for(Source(branch="release/2.1"), deploy).production
    assert not environment_for(Source(branch="main"), deploy).production
    assert "promoted only from release/*" in environment_for(Source(branch="main"), deploy).reason
    assert not environment_for(Source(branch="main"), DeploySpec(release="churn", production_branches=[])).production
