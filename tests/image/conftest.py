"""Fixtures of the image tier: an engine, the image built from this repository, the platform run from it.

Everything is session-scoped: the image is built once per test session (from the engine's
build cache when the tree did not change) and one platform serves every test of the tier.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from tests.image.docker import IMAGE_OVERRIDE, Docker, EngineUnavailable, engine, ensure_base
from tests.image.platform import Platform, container_prefix

RELEASE = "image-wine"  # the release the containerised model server follows


@pytest.fixture(scope="session")
def one_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> FileLock:
    """A lock shared by this run's xdist workers: the engine is started, and the image built, once."""
    return FileLock(tmp_path_factory.getbasetemp().parent / "image-tier.lock")


@pytest.fixture(scope="session")
def docker(one_at_a_time: FileLock) -> Docker:
    """A responding engine; the tier is skipped, with the reason, only where none can be started."""
    try:
        with one_at_a_time:
            return engine()
    except EngineUnavailable as exc:
        pytest.skip(f"image tier: {exc}")


@pytest.fixture(scope="session")
def image(docker: Docker, one_at_a_time: FileLock) -> str:
    """The image ID of this repository's Dockerfile, built with the legacy builder (or $TWEAKLINE_TEST_IMAGE)."""
    if os.environ.get(IMAGE_OVERRIDE):
        return os.environ[IMAGE_OVERRIDE]
    with one_at_a_time:  # a second worker waits, then finds every layer cached
        try:
            ensure_base(docker)
        except EngineUnavailable as exc:
            pytest.skip(f"image tier: {exc}")
        return docker.build("tweakline:pytest")


@pytest.fixture(scope="session")
def platform(docker: Docker, image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """NATS, ``bus init``, the four services and the model server of ``RELEASE``, from the image."""
    running = Platform(docker, image, Path(tmp_path_factory.mktemp("image-platform")), container_prefix())
    try:
        running.start(RELEASE)
        yield running
    finally:
        running.stop()
