"""Whether this platform runs the user's own code (``model.trainer``): an operator's decision.

``TWEAKLINE_CODE_TRAINERS`` lists the repositories whose tweak files may name a trainer
(shell-style patterns: ``team/*``; ``*`` for every submission, which is what ``tweakline run``'s
embedded stack sets). Empty, the default, means a shared platform runs estimators only.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from tweakline.errors import Problem
from tweakline.proto.tweakfile import TweakFile


def code_allowed(allowed: Sequence[str], repository: str | None) -> bool:
    """Whether code from ``repository`` (None: not from a repository) may run here."""
    if "*" in allowed:
        return True
    return repository is not None and any(fnmatchcase(repository, pattern) for pattern in allowed)


def code_trainer_problems(tweak: TweakFile | None, allowed: Sequence[str], repository: str | None) -> list[Problem]:
    """A problem at ``spec.model.trainer`` when the tweak file names a trainer this platform may not run."""
    if tweak is None or tweak.spec.model.trainer is None or code_allowed(allowed, repository):
        return []
    where = f"repository '{repository}'" if repository else "submissions without a repository"
    return [
        Problem(
            "spec.model.trainer",
            f"code trainers are switched off on this platform for {where}: it runs only allow-listed estimators "
            "unless its operators allow the repository (TWEAKLINE_CODE_TRAINERS); 'tweakline run' allows them locally",
        )
    ]
