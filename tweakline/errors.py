"""One root for every error tweakline reports to a user, with specific subclasses.

Messages state the rule and the value received; the CLI prints them without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class TweaklineError(Exception):
    """Root of all tweakline errors."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with user input: where, what was found, and what was expected."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def unknown_name(value: object, registered: Iterable[str]) -> str:
    """``Input should be 'a', 'b' or 'c', got 'x'``: the registered plug-in names, then the value
    received (the words pydantic used when these names were enums in the tweak file)."""
    names = [f"'{n}'" for n in registered]
    expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"Input should be {expected}, got {value!r}"


class InvalidTweakFileError(TweaklineError):
    """The tweak file cannot be run; ``problems`` lists every reason found."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the tweak file\n{lines}")


class ConfigurationError(TweaklineError):
    """Platform settings or local files (certificates, state directory) are unusable."""


class EstimatorNotAllowedError(TweaklineError):
    """An import path outside the platform's allow-list was requested."""


class DatasetError(TweaklineError):
    """A dataset could not be loaded or does not have the declared shape."""


class BusError(TweaklineError):
    """The NATS server could not be reached, or refused what was asked."""


class ArtifactError(TweaklineError):
    """A model artifact is missing, tampered with or of an untrusted type."""


class StackError(TweaklineError):
    """The embedded local stack could not be started or stopped."""
