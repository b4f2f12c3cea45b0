"""The local target: the release history in KV is the deployment; the local model server follows it."""

from __future__ import annotations

from tweakline.deployer.target import DeployTarget
from tweakline.proto.messages import ReleaseHistory, ReleaseRevision
from tweakline.proto.tweakfile import DeploySpec


class LocalTarget(DeployTarget):
    """Nothing to push: ``tweakline serve`` watches the release's current revision in KV."""

    name = "local"

    async def deploy(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> None:
        return None

    async def rollback(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> None:
        return None
