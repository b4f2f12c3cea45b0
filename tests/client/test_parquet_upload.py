"""`submit` uploads a parquet: table by content and a runner loads it by hash, over the real object store."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from tests import factories
from tests.ml.tables_data import shop_rows, write_shop_parquet
from tweakline.client.submission import disk_reader, upload_datasets
from tweakline.ml.datasets import DatasetCache, ObjectLoader, use_object_store
from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect
from tweakline.runtime.objects import blocking_dataset_fetcher
from tweakline.validation import problems_of


async def test_a_parquet_table_is_uploaded_by_content_and_loaded_by_a_runner(nats, tmp_path: Path) -> None:
    data = write_shop_parquet(tmp_path / "shop.parquet", shop_rows()).read_bytes()
    tweak = factories.make_tweak(dataset={"source": "parquet:shop.parquet", "target": "y"})
    # a platform refuses a path on its own disk: the table has to be uploaded
    assert [p.path for p in problems_of(tweak, ["sklearn."])] == ["spec.dataset.source"]

    submitter = await connect(nats.settings(Identity.SUBMITTER), "test-submitter")
    runner = await connect(nats.settings(Identity.TRIAL_RUNNER), "test-runner")
    saved = (ObjectLoader.fetcher, ObjectLoader.cache)
    try:
        shipped, [upload] = await upload_datasets(tweak, submitter.jetstream(), disk_reader(tmp_path))
        digest = hashlib.sha256(data).hexdigest()
        assert shipped.spec.dataset.source == f"object:parquet:{digest}" and upload.kind == "parquet"
        assert problems_of(shipped, ["sklearn."]) == []

        use_object_store(blocking_dataset_fetcher(runner.jetstream(), asyncio.get_running_loop()), tmp_path / "cache")
        split = await asyncio.to_thread(DatasetCache().get, shipped.spec.dataset)  # runners load in a worker thread
        assert split.text_features == ["colour"] and len(split.y_train) + len(split.y_test) == 240
    finally:
        ObjectLoader.fetcher, ObjectLoader.cache = saved
        await submitter.close()
        await runner.close()
