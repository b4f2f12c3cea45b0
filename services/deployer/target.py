"""The deploy-target plug-in interface: what every way of putting a model into production must do.

A target is one module with a subclass of :class:`DeployTarget`, registered in
:mod:`tweakline.deployer.registry` against a name of :mod:`tweakline.promotion.targets` (which
also holds the rules of the target's settings, checked before anything runs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from tweakline.proto.messages import ReleaseHistory, ReleaseRevision
from tweakline.proto.tweakfile import DeploySpec
from tweakline.runtime.settings import Settings


class DeployTarget(ABC):
    """Makes a recorded release revision live, or puts an earlier one back."""

    name: ClassVar[str]

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()

    @abstractmethod
    async def deploy(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> int | None:
        """Make ``revision`` live; raise to report a failed deployment (the caller rolls back).

        Returns the target's own revision number for it (Helm's), if it keeps one.
        """

    @abstractmethod
    async def rollback(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> None:
        """Make the earlier ``revision`` live again."""

    def endpoint(self, spec: DeploySpec) -> str | None:
        """Base URL of the live model server for the post-deploy check; ``None`` if none is known."""
        return spec.endpoint
