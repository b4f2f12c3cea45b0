"""Deploy-target implementations by name (``spec.deploy.target``).

The names, and the rules of each target's settings, are the library's
(:mod:`tweakline.promotion.targets`: validation and the JSON Schema read them there); this module
holds the deployer's implementation of each. Adding a target is its rules there, one module here
with a :class:`~tweakline.deployer.target.DeployTarget` subclass, and its registration below; the
contract test fails while a name has no implementation or an implementation no name.
"""

from __future__ import annotations

from tweakline.deployer.helm import HelmTarget
from tweakline.deployer.local import LocalTarget
from tweakline.deployer.target import DeployTarget
from tweakline.errors import ConfigurationError
from tweakline.promotion.targets import DEPLOY_TARGETS
from tweakline.runtime.settings import Settings

TARGETS: dict[str, type[DeployTarget]] = {}
"""Name -> the deployer's implementation of the target registered under that name."""


def register_implementation(cls: type[DeployTarget]) -> type[DeployTarget]:
    """Register ``cls`` as the implementation of the deploy target its ``name`` names in the library."""
    if cls.name not in DEPLOY_TARGETS:
        raise ConfigurationError(
            f"deploy target implementation {cls.__qualname__} is for {cls.name!r}, which tweakline.promotion.targets "
            f"does not register; registered: {', '.join(DEPLOY_TARGETS)}"
        )
    TARGETS[cls.name] = cls
    return cls


register_implementation(LocalTarget)
register_implementation(HelmTarget)


def target_for(name: str, settings: Settings | None = None) -> DeployTarget:
    """An instance of the target called ``name``."""
    try:
        return TARGETS[name](settings)
    except KeyError:
        raise ConfigurationError(f"deploy target {name!r} is not available; known: {', '.join(TARGETS)}") from None
