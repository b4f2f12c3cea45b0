"""Uploaded (``object:``) datasets, fetched over a service's NATS connection and cached on disk by hash."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tweakline.ml.datasets import use_object_store
from tweakline.runtime.objects import blocking_dataset_fetcher
from tweakline.runtime.service import ServiceContext


def use_uploaded_datasets(ctx: ServiceContext) -> Callable[[], Awaitable[None]]:
    """A start-up hook letting this process load ``object:`` datasets (fetched over its NATS
    connection, cached on disk by hash under ``<state_dir>/cache/datasets``)."""

    async def hook() -> None:
        fetch = blocking_dataset_fetcher(ctx.js, asyncio.get_running_loop())
        use_object_store(fetch, ctx.settings.state_dir / "cache" / "datasets")

    return hook
