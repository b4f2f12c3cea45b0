"""The local target: the release history in KV is the deployment; ``tweakline serve`` follows it.

A local model server registers its URL in ``<state_dir>/run/serve/<release>.json`` while it
runs, which is how the deployer finds the endpoint for the post-deploy check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tweakline.deployer.target import DeployTarget
from tweakline.proto.messages import ReleaseHistory, ReleaseRevision
from tweakline.proto.tweakfile import DeploySpec


def registration_path(state_dir: Path, release: str) -> Path:
    """Where a local ``tweakline serve RELEASE`` writes its URL."""
    return state_dir / "run" / "serve" / f"{release}.json"


def registered_endpoint(state_dir: Path, release: str) -> str | None:
    """URL of the local model server of ``release``, if one is running."""
    path = registration_path(state_dir, release)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)  # still alive? (a crashed server leaves its file behind)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(info["url"])


class LocalTarget(DeployTarget):
    """Nothing to push: the model server watches the release's live revision in KV and hot-swaps."""

    name = "local"

    async def deploy(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> int | None:
        return None

    async def rollback(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> None:
        return None

    def endpoint(self, spec: DeploySpec) -> str | None:
        return spec.endpoint or registered_endpoint(self.settings.state_dir, spec.release)
