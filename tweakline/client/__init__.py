"""The client side of the bus: submitting, following, listing and cancelling experiments.

:class:`TweaklineClient` is the front door (the CLI's ``experiments`` and ``cancel`` are built on it).
"""

from tweakline.client.api import ExperimentSummary, RollbackRefusedError, TweaklineClient, UnknownExperimentError

__all__ = ["ExperimentSummary", "RollbackRefusedError", "TweaklineClient", "UnknownExperimentError"]
