"""The deploy-target plug-in interface: what every way of putting a model into production must do."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from tweakline.proto.messages import ReleaseHistory, ReleaseRevision
from tweakline.proto.tweakfile import DeploySpec


class DeployTarget(ABC):
    """Makes a recorded release revision live, or puts an earlier one back."""

    name: ClassVar[str]

    @abstractmethod
    async def deploy(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> None:
        """Make ``revision`` live; raise to report a failed deployment (the caller rolls back)."""

    @abstractmethod
    async def rollback(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> None:
        """Make the earlier ``revision`` live again."""
