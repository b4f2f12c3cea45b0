"""Deploy targets: one list of names (the library's), each with its rules and a deployer implementation."""

from __future__ import annotations

import pytest

from tests.factories import tweak_dict
from tweakline.deployer.registry import TARGETS, register_implementation, target_for
from tweakline.deployer.target import DeployTarget
from tweakline.errors import ConfigurationError, Problem
from tweakline.promotion.targets import DEPLOY_TARGETS, TargetRules, register_target, target_problems
from tweakline.proto.tweakfile import DeploySpec
from tweakline.validation import inspect

ALLOWED = ["sklearn."]


def test_every_registered_name_has_an_implementation_and_every_implementation_a_name() -> None:
    assert list(TARGETS) == list(DEPLOY_TARGETS)


@pytest.mark.parametrize("name", list(DEPLOY_TARGETS))
def test_deploy_target_contract(name: str) -> None:
    rules, cls = DEPLOY_TARGETS[name], TARGETS[name]
    assert isinstance(rules, TargetRules) and rules.name == name and cls.name == name
    for documented in (type(rules), cls):
        assert (documented.__doc__ or "").strip(), f"{documented.__qualname__} needs a docstring"
    good = DeploySpec(target=name, release="digits")
    assert isinstance(target_for(name), DeployTarget)
    assert rules.check(good) == [] and target_problems(good) == []
    assert inspect(tweak_dict(deploy={"target": name, "release": "digits"}), ALLOWED, pools=None)[1] == []
    # a spec with every optional setting of every target: check still answers with Problems (paths from the root)
    busy = DeploySpec(target=name, release="digits", chart="x", namespace="ml", values={"replicas": 2}, endpoint="http://h")
    problems = rules.check(busy)
    assert isinstance(problems, list) and all(isinstance(p, Problem) and p.path.startswith("spec.deploy") for p in problems)


def test_an_unknown_target_is_refused_listing_the_registered_ones() -> None:
    _, problems = inspect(tweak_dict(deploy={"target": "k8s", "release": "digits"}), ALLOWED, pools=None)
    assert [(p.path, p.message) for p in problems] == [("spec.deploy.target", "Input should be 'local' or 'helm', got 'k8s'")]
    # also beside a structural problem of the same section, in one pass
    _, problems = inspect(tweak_dict(deploy={"target": "k8s", "release": "Bad_Name"}), ALLOWED, pools=None)
    assert {p.path for p in problems} == {"spec.deploy.target", "spec.deploy.release"}


def test_an_implementation_of_an_unregistered_name_is_refused() -> None:
    class Nowhere(DeployTarget):
        """A target nobody registered a name for."""

        name = "nowhere"

    with pytest.raises(ConfigurationError, match="'nowhere'.*registered: local, helm"):
        register_implementation(Nowhere)
    assert "nowhere" not in TARGETS


@pytest.fixture
def canary_target():
    """A throwaway ``canary`` target (rules and implementation), registered for one test."""

    @register_target
    class CanaryRules(TargetRules):
        """``canary``: needs an endpoint to send its share of traffic to."""

        name = "canary"

        def check(self, deploy: DeploySpec) -> list[Problem]:
            return [] if deploy.endpoint else [Problem("spec.deploy.endpoint", "required for the canary target")]

    class Canary(DeployTarget):
        """Does nothing: the contract is what is under test."""

        name = "canary"

        async def deploy(self, spec, history, revision):
            return None

        async def rollback(self, spec, history, revision):
            return None

    register_implementation(Canary)
    yield
    del DEPLOY_TARGETS["canary"], TARGETS["canary"]


def test_a_registered_target_is_listed_and_validated(canary_target) -> None:
    ok = tweak_dict(deploy={"target": "canary", "release": "digits", "endpoint": "http://127.0.0.1:1"})
    assert inspect(ok, ALLOWED, pools=None)[1] == []
    _, problems = inspect(tweak_dict(deploy={"target": "canary", "release": "digits"}), ALLOWED, pools=None)
    assert [(p.path, p.message) for p in problems] == [("spec.deploy.endpoint", "required for the canary target")]
    assert "'canary'" in target_problems(DeploySpec(target="nope", release="digits"))[0].message
