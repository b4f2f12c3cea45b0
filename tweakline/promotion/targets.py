"""Deploy targets by name (``spec.deploy.target``) and the rules of their own settings.

The tweak file names a target by plain string; this registry is the one list of the names, which
validation checks (:func:`target_problems`, before anything runs) and the JSON Schema lists
(``tweakline.cli.generate``). The deployer service registers an implementation against each name
(``tweakline.deployer.registry``; a contract test keeps the two in step). Adding a target is one
:class:`TargetRules` subclass here (its name and the rules of the ``spec.deploy`` settings only it
reads) and one implementation in the deployer.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

from tweakline.errors import Problem, unknown_name
from tweakline.proto.tweakfile import DeploySpec


class TargetRules:
    """A deploy target as validation sees it: its name and the rules of its own settings."""

    name: ClassVar[str]

    def check(self, deploy: DeploySpec) -> list[Problem]:
        """Problems with the ``spec.deploy`` settings only this target reads (paths from the tweak file's root).

        Default: none; rules that hold for every target stay in ``tweakline.proto.tweakfile.DeploySpec``.
        """
        return []


DEPLOY_TARGETS: dict[str, TargetRules] = {}
"""Name -> the target's rules, in registration order (the order names are listed to users)."""

_T = TypeVar("_T", bound=type[TargetRules])


def register_target(cls: _T) -> _T:
    """Register a :class:`TargetRules` subclass under its :attr:`~TargetRules.name` (a class decorator)."""
    DEPLOY_TARGETS[cls.name] = cls()
    return cls


@register_target
class LocalRules(TargetRules):
    """``local``: the release history in KV is the deployment; ``tweakline serve`` follows it."""

    name = "local"


@register_target
class HelmRules(TargetRules):
    """``helm``: ``helm upgrade --install`` of the model-server chart per release (``chart``,
    ``namespace``, ``values`` and ``helm_timeout`` are its settings)."""

    name = "helm"


def target_problems(deploy: DeploySpec | None) -> list[Problem]:
    """Problems with ``spec.deploy``: an unregistered target name, else the target's own rules."""
    if deploy is None:
        return []
    rules = DEPLOY_TARGETS.get(deploy.target)
    if rules is None:
        return [Problem("spec.deploy.target", unknown_name(deploy.target, DEPLOY_TARGETS))]
    return rules.check(deploy)
