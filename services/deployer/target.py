"""The deploy-target plug-in interface: what every way of putting a model into production must do.

A target is one module with a subclass of :class:`DeployTarget`, registered by name in
:mod:`tweakline.deployer.registry` (``spec.deploy.target``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from tweakline.errors import Problem
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

    def check(self, spec: DeploySpec) -> list[Problem]:
        """Problems with the ``spec.deploy`` settings only this target reads (paths from the tweak file's root).

        Default: none; rules that hold for every target stay in ``tweakline.proto.tweakfile.DeploySpec``.
        """
        return []

    def endpoint(self, spec: DeploySpec) -> str | None:
        """Base URL of the live model server for the post-deploy check; ``None`` if none is known."""
        return spec.endpoint
