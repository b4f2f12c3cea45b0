"""Every registered deploy target meets the plug-in contract: name, docstring, its own check, constructs."""

from __future__ import annotations

import pytest

from tweakline.deployer.registry import TARGETS, check_deploy, target_for
from tweakline.deployer.target import DeployTarget
from tweakline.errors import Problem
from tweakline.proto.tweakfile import DeploySpec


@pytest.mark.parametrize("name", list(TARGETS))
def test_deploy_target_contract(name: str) -> None:
    cls = TARGETS[name]
    assert cls.name == name
    assert (cls.__doc__ or "").strip(), f"{cls.__qualname__} needs a docstring"
    good = DeploySpec(target=name, release="digits")
    target = target_for(name)
    assert isinstance(target, DeployTarget)
    assert target.check(good) == []
    assert check_deploy(good) == []
    # a spec with every optional setting of every target: check still answers with Problems (paths from the root)
    busy = DeploySpec(target=name, release="digits", chart="x", namespace="ml", values={"replicas": 2}, endpoint="http://h")
    problems = target.check(busy)
    assert isinstance(problems, list) and all(isinstance(p, Problem) and p.path.startswith("spec.deploy") for p in problems)


def test_an_unknown_target_lists_the_registered_ones() -> None:
    spec = DeploySpec.model_construct(target="k8s", release="digits")
    problems = check_deploy(spec)
    assert [p.path for p in problems] == ["spec.deploy.target"]
    assert all(name in problems[0].message for name in TARGETS)
