"""Runner pools: a tweak file may ask only for a pool the platform has.

Which pools exist is platform configuration (``TWEAKLINE_POOLS``; ``tweakline run`` and ``up``
know theirs from ``--runners``). A trial sent to a pool nobody consumes would wait for ever, so
an unknown ``spec.resources.pool`` is refused before anything starts, with the pools that exist.

The platform side (the scheduler, the webhook) always knows its pools. A client checks them when
it knows them too: ``tweakline run`` (its ``--runners``), ``submit`` to a local stack (the stack's),
or ``TWEAKLINE_POOLS`` set where ``validate`` and ``submit`` run (:func:`known_pools`); otherwise
the pool is left to the platform, which refuses the submission with the same message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tweakline.errors import Problem
from tweakline.proto.tweakfile import ExperimentSpec

FIELD = "spec.resources.pool"


def requested_pool(spec: ExperimentSpec | Any) -> Any:
    """The pool a spec (parsed, or the raw mapping of a structurally broken one) asks for, or ``None``."""
    if isinstance(spec, ExperimentSpec):
        return spec.resources.pool if spec.resources is not None else None
    if isinstance(spec, Mapping):
        resources = spec.get("resources")
        if isinstance(resources, Mapping):
            return resources.get("pool")
    return None


def pool_problems(spec: ExperimentSpec | Any, pools: Sequence[str] | None) -> list[Problem]:
    """A problem naming the field, the value and the platform's pools when the spec asks for another pool.

    ``pools`` ``None``: the platform's pools are not known here (not checked; the platform checks).
    """
    pool = requested_pool(spec)
    if pools is None or pool is None or not isinstance(pool, str) or pool in pools:
        return []  # no pool (the default one), or a wrong type that the structural pass reports
    have = ", ".join(repr(p) for p in pools)
    return [Problem(FIELD, f"no runner pool {pool!r:.60} on this platform; expected one of: {have}")]


def known_pools(settings: Any) -> list[str] | None:
    """The platform's pools if this process was told them (``TWEAKLINE_POOLS``, or set by the caller), else ``None``."""
    return list(settings.pools) if "pools" in settings.model_fields_set else None
