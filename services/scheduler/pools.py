"""Which runner pool an experiment's trials go to.

A tweak file's ``spec.resources.pool`` names the pool (validation has already refused a pool the
platform does not have, :mod:`tweakline.validation.pools`); a file that names none goes to the
platform's default pool (:meth:`~tweakline.runtime.settings.Settings.default_pool`). The pool is a
token of the trial's subject, so only that pool's consumer, and so only its runners, see it.
"""

from __future__ import annotations

from tweakline.proto.tweakfile import ExperimentSpec
from tweakline.runtime.settings import Settings


def run_pool(spec: ExperimentSpec, settings: Settings) -> str:
    """The runner pool of ``spec``'s trials: its ``resources.pool``, else the platform's default pool."""
    if spec.resources is not None and spec.resources.pool:
        return spec.resources.pool
    return settings.default_pool()
