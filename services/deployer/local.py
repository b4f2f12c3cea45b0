"""The local target: the release history in KV is the deployment; ``tweakline serve`` follows it.

A local model server registers its URL in ``<state_dir>/run/serve/<release>.json`` while it
runs, which is how the deployer finds the endpoint for the post-deploy check.
"""

from __future__ import annotations

from tweakline.deployer.target import DeployTarget
from tweakline.proto.messages import ReleaseHistory, ReleaseRevision
from tweakline.proto.tweakfile import DeploySpec
from tweakline.runtime.endpoints import registered_endpoint


class LocalTarget(DeployTarget):
    """Nothing to push: the model server watches the release's live revision in KV and hot-swaps."""

    name = "local"

    async def deploy(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> int | None:
        return None

    async def rollback(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> None:
        return None

    def endpoint(self, spec: DeploySpec) -> str | None:
        return spec.endpoint or registered_endpoint(self.settings.state_dir, spec.release)
