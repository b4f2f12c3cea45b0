"""Passed deep checks, remembered per user: an identical spec is not checked with scikit-learn twice.

The deep checks of a tweak file (:func:`tweakline.validation.checks.spec_problems`: the
estimator's parameters with scikit-learn's own validation, the dataset, the search plug-ins)
import scikit-learn, SciPy and the search plug-ins: one to two seconds of CPU before anything can
be submitted, paid again by the scheduler's check of the same submission. Their answer depends
only on the spec, the allow-list, tweakline's own code and the installed libraries, so a pass is
recorded under a hash of all of these and a second check of the same spec finds it in a few
milliseconds (``tweakline run`` of an unchanged file, and its stack's scheduler after the CLI).

What keeps it safe:

- Only passes are recorded; a refused file is checked afresh, every time.
- The key covers the spec (canonical JSON), the allow-list, the Python version, every source file
  of tweakline's library and contracts (path, size, modification time) and the library
  directories' modification times (a package installed, upgraded or removed changes them).
- Specs whose check reads something the key cannot cover are never recorded: a dataset on disk or
  on the web (``csv:``, ``parquet:``, ``https:``) and code trainers (the repository's code).
- The directory is the user's own (``$XDG_CACHE_HOME/tweakline/checks``, else
  ``~/.cache/tweakline/checks``), created 0700, each entry 0600, and an entry is trusted only if
  the directory and the file belong to this user and nobody else may write them. Forging one needs
  this user's account, which could change the code just as well. The CA key is not here: nothing
  secret is.
- Only ``tweakline run`` (and the scheduler of the stack it starts) consults it
  (``Settings.check_cache``); ``tweakline validate``, a platform's scheduler and the webhook
  check everything every time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import stat
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from tweakline.proto.tweakfile import ExperimentSpec
from tweakline.runtime.settings import Settings

# Dataset sources whose check depends on nothing but the spec: a bundled dataset, or an uploaded
# object named by its content hash.
PURE_SOURCES = ("sklearn", "object")

VERSION = 1  # of the key's recipe: a change here invalidates every entry


def default_cache_dir() -> Path:
    """The user's cache directory for tweakline (``$XDG_CACHE_HOME/tweakline`` or ``~/.cache/tweakline``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tweakline"


@functools.cache
def _code_fingerprint() -> str:
    """tweakline's library and contracts as they are on disk, and the installed libraries."""
    import tweakline
    import tweakline.proto

    digest = hashlib.sha256(sys.version.encode())
    roots = {Path(tweakline.__file__).parent, Path(tweakline.proto.__file__).parent}
    for root in sorted(roots):
        for path in sorted(root.rglob("*.py")):
            with contextlib.suppress(OSError):
                info = path.stat()
                digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    for name in ("purelib", "platlib"):  # a distribution added or removed changes its directory
        with contextlib.suppress(OSError, KeyError):
            directory = sysconfig.get_paths()[name]
            digest.update(f"{directory}\0{os.stat(directory).st_mtime_ns}\n".encode())
    return digest.hexdigest()


def verdict_key(spec: ExperimentSpec, allowed_estimators: Sequence[str]) -> str | None:
    """The key a passed check of ``spec`` is recorded under, or ``None`` if it must never be cached."""
    if spec.model.trainer is not None:  # the repository's code is part of the check
        return None
    if spec.dataset.source.partition(":")[0] not in PURE_SOURCES:  # a file or URL whose content may change
        return None
    document = {
        "recipe": VERSION,
        "spec": spec.model_dump(mode="json"),
        "allowed_estimators": sorted(allowed_estimators),
        "code": _code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class CheckCache:
    """Passed deep checks under one directory (see the module's docstring for what is trusted)."""

    def __init__(self, directory: Path):
        self.directory = directory / "checks"

    def _owned(self, info: os.stat_result) -> bool:
        return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)

    def passed(self, spec: ExperimentSpec, allowed_estimators: Sequence[str]) -> bool:
        """Whether this exact check of ``spec`` passed before (and the record can be trusted)."""
        key = verdict_key(spec, allowed_estimators)
        if key is None:
            return False
        try:
            if not self._owned(os.stat(self.directory)):
                return False
            fd = os.open(self.directory / key, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            return stat.S_ISREG(info.st_mode) and self._owned(info) and os.read(fd, 64) == key[:64].encode()
        finally:
            os.close(fd)

    def record(self, spec: ExperimentSpec, allowed_estimators: Sequence[str]) -> None:
        """Remember that the deep check of ``spec`` passed (best effort: a cache that cannot be written is skipped)."""
        key = verdict_key(spec, allowed_estimators)
        if key is None:
            return
        with contextlib.suppress(OSError):
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self._owned(os.stat(self.directory)):
                return
            partial = self.directory / f".{key}.{os.getpid()}"
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, key.encode())
            finally:
                os.close(fd)
            os.replace(partial, self.directory / key)  # readers never see half an entry


def check_cache_of(settings: Settings) -> CheckCache | None:
    """The cache of passed checks ``settings`` allow (``Settings.check_cache``), or ``None``."""
    if not settings.check_cache:
        return None
    return CheckCache(settings.cache_dir or default_cache_dir())
