"""Deploy targets by name (``spec.deploy.target``): adding one is one module plus one line here."""

from __future__ import annotations

from tweakline.deployer.helm import HelmTarget
from tweakline.deployer.local import LocalTarget
from tweakline.deployer.target import DeployTarget
from tweakline.errors import ConfigurationError, Problem
from tweakline.proto.tweakfile import DeploySpec
from tweakline.runtime.settings import Settings

TARGETS: dict[str, type[DeployTarget]] = {
    LocalTarget.name: LocalTarget,
    HelmTarget.name: HelmTarget,
}


def target_for(name: str, settings: Settings | None = None) -> DeployTarget:
    """An instance of the target called ``name``."""
    try:
        return TARGETS[name](settings)
    except KeyError:
        raise ConfigurationError(f"deploy target {name!r} is not available; known: {', '.join(TARGETS)}") from None


def check_deploy(spec: DeploySpec, settings: Settings | None = None) -> list[Problem]:
    """Problems with ``spec.deploy`` that its target reports (its own settings), or an unknown target."""
    cls = TARGETS.get(str(spec.target))
    if cls is None:
        return [
            Problem("spec.deploy.target", f"deploy target {str(spec.target)!r} is not available; known: {', '.join(TARGETS)}")
        ]
    return cls(settings).check(spec)
