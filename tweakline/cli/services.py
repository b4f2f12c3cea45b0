"""The deployable services by name: what ``tweakline service NAME`` runs (in a pod or a local process)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from faststream import FastStream

from tweakline.errors import ConfigurationError
from tweakline.runtime.settings import Settings

# name -> module whose create_app(settings) builds the service
SERVICES: dict[str, str] = {
    "scheduler": "tweakline.scheduler.app",
    "trial-runner": "tweakline.trial_runner.app",
    "evaluator": "tweakline.evaluator.app",
    "deployer": "tweakline.deployer.app",
    "webhook": "tweakline.webhook.app",
    "console": "tweakline.console.app",
}


def app_factory(name: str) -> Callable[[Settings], FastStream]:
    """The ``create_app`` of service ``name`` (imported only when that service runs)."""
    module_name = SERVICES.get(name)
    if module_name is None:
        raise ConfigurationError(f"unknown service {name!r}; expected one of {', '.join(SERVICES)}")
    return importlib.import_module(module_name).create_app
