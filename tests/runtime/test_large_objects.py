"""Large objects through every identity that reads them: JetStream flow control is in the map.

Without ``$JS.FC.<stream>.>`` an ordered consumer stalls after a few MiB (3 MiB objects never
arrived for the runner, evaluator and model server). 50 MB objects are read here by each reader
of each store, concurrently, on the shared real server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tweakline.proto.messages import ArtifactRef
from tweakline.proto.permissions import LIMITED_IDENTITIES, Identity, Op, allowed_operations, bucket_stream
from tweakline.proto.subjects import Bucket
from tweakline.runtime.bus import connect
from tweakline.runtime.objects import get_artifact, get_dataset, put_artifact, put_dataset

SIZE = 50 * 1024 * 1024 + 123


def readers(bucket: Bucket) -> list[Identity]:
    """Identities whose grants let them read ``bucket`` (from the map, so a new reader is tested too)."""
    return [i for i in LIMITED_IDENTITIES if (Op.FLOW_CONTROL, bucket_stream(bucket)) in allowed_operations(i)]


@pytest.mark.e2e  # ~1 min on a loaded machine: 400 MB through the server; the matrix checks the grant itself
async def test_50_mb_objects_reach_every_identity_that_reads_them(nats) -> None:
    model, data = os.urandom(SIZE), os.urandom(SIZE)
    evaluator = await connect(nats.settings(Identity.EVALUATOR), "big-writer")
    submitter = await connect(nats.settings(Identity.SUBMITTER), "big-uploader")
    try:
        ref = await put_artifact(evaluator.jetstream(timeout=60), "models/big.skops", model)
        digest, _ = await put_dataset(submitter.jetstream(timeout=60), data)
    finally:
        await evaluator.close()
        await submitter.close()
    assert set(readers(Bucket.ARTIFACTS)) == {Identity.EVALUATOR, Identity.DEPLOYER, Identity.MODEL_SERVER}
    assert {Identity.TRIAL_RUNNER, Identity.EVALUATOR} <= set(readers(Bucket.DATASETS))

    async def read(identity: Identity, bucket: Bucket) -> tuple[Identity, Bucket, str]:
        nc = await connect(nats.settings(identity), f"big-{identity}")
        try:
            js = nc.jetstream(timeout=60)
            if bucket is Bucket.ARTIFACTS:
                got = await asyncio.wait_for(get_artifact(js, ArtifactRef.model_validate(ref.model_dump())), 240)
            else:
                got = await asyncio.wait_for(get_dataset(js, digest), 240)
            return identity, bucket, hashlib.sha256(got).hexdigest()
        finally:
            await nc.close()

    jobs = [read(i, b) for b in (Bucket.ARTIFACTS, Bucket.DATASETS) for i in readers(b)]
    results = await asyncio.gather(*jobs)
    expected = {Bucket.ARTIFACTS: ref.sha256, Bucket.DATASETS: digest}
    assert [(i, b) for i, b, h in results if h != expected[b]] == []
    assert len(results) >= 7
