"""Environments by branch: which runs may change a production release.

One rule for every way an experiment arrives (the webhook, ``tweakline submit`` in a pipeline,
``tweakline run``): the deployer applies it to every promotion, and the clients report it.

- A pull request never changes production: it is tuned and judged (against production, with
  the full evidence), and the decision is reported on the PR and in the build status, but the
  model is not deployed.
- A branch push changes production only when the branch matches one of the tweak file's
  ``deploy.production_branches`` (globs; default ``main`` and ``master``, the usual default
  branches). Other branches are judged and reported the same way, not deployed.
- A run with no branch at all (``tweakline run`` or ``submit`` by hand, outside CI) is the
  operator's own decision and may deploy.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from tweakline.proto.messages import Source
from tweakline.proto.tweakfile import DeploySpec


@dataclass(frozen=True)
class Environment:
    """Whether a run may change its production release, and why (shown in reports)."""

    production: bool
    reason: str


def environment_for(source: Source | None, deploy: DeploySpec | None) -> Environment:
    """The environment a run from ``source`` deploys to under ``deploy``'s declared branches."""
    if deploy is None:
        return Environment(False, "no deploy section: judged only")
    branches = ", ".join(deploy.production_branches) or "none"
    if source is not None and source.pull_request is not None:
        return Environment(
            False,
            f"pull request #{source.pull_request}: judged, not deployed "
            f"(release {deploy.release} is promoted only from {branches})",
        )
    branch = source.branch if source is not None else None
    if not branch:
        return Environment(True, f"no branch (a run by hand): may promote release {deploy.release}")
    if any(fnmatch.fnmatchcase(branch, glob) for glob in deploy.production_branches):
        return Environment(True, f"branch {branch} is a production branch of release {deploy.release}")
    return Environment(
        False, f"branch {branch}: judged, not deployed (release {deploy.release} is promoted only from {branches})"
    )
