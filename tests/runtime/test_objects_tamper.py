"""Objects in the real object store: what was recorded is what is loaded, or nothing is; names are never trusted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid

import pytest
from nats.js import api
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from tweakline.errors import ArtifactError
from tweakline.ml.artifacts import dump_model, load_model
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Bucket, dataset_object_name
from tweakline.runtime.bus import connect
from tweakline.runtime.objects import get_artifact, get_dataset, put_artifact, put_dataset


async def test_an_artifact_replaced_in_the_store_is_refused(nats) -> None:
    X, y = load_iris(return_X_y=True)
    good, _ = dump_model(LogisticRegression(max_iter=500).fit(X, y))
    other, _ = dump_model(DecisionTreeClassifier(max_depth=1).fit(X, y))
    name = f"models/tamper-{uuid.uuid4().hex[:6]}.skops"
    nc = await connect(nats.settings(Identity.EVALUATOR), "test")
    admin = await connect(nats.settings(Identity.ADMIN), "test-admin")
    try:
        js = nc.jetstream()
        ref = await put_artifact(js, name, good)
        assert ref.name.endswith(f"/{ref.sha256}.skops"), ref.name  # content-addressed: never overwritten
        assert load_model(await get_artifact(js, ref), ref.sha256).predict(X[:3]).tolist() == [0, 0, 0]
        # only an operator can overwrite a name (it needs a purge): the evaluator's layout never does
        await (await admin.jetstream().object_store(ref.bucket)).put(ref.name, other)
        with pytest.raises(
            ArtifactError, match=rf"artifact {ref.bucket}/{ref.name} has sha256 .* expected .*refusing to load it"
        ):
            await get_artifact(js, ref)
    finally:
        await nc.close()
        await admin.close()


async def test_storing_the_same_artifact_twice_writes_it_once(nats) -> None:
    nc = await connect(nats.settings(Identity.EVALUATOR), "test")
    try:
        js = nc.jetstream()
        data = os.urandom(300_000)
        first = await put_artifact(js, f"probes/{uuid.uuid4().hex[:6]}.json", data)
        info = await (await js.object_store(first.bucket)).get_info(first.name)
        again = await put_artifact(js, first.name.rsplit("/", 1)[0] + ".json", data)  # a redelivered evaluation
        assert again == first
        assert (await (await js.object_store(first.bucket)).get_info(first.name)).nuid == info.nuid
    finally:
        await nc.close()


async def test_a_poisoned_dataset_name_is_replaced_by_the_next_upload(nats) -> None:
    """A pipeline stores garbage under another dataset's hash; the victim's upload is not skipped."""
    victim = b"a,b,label\n" + b"".join(f"{i},{i * 2},{i % 2}\n".encode() for i in range(5000))
    digest = hashlib.sha256(victim).hexdigest()
    attacker = await connect(nats.settings(Identity.SUBMITTER), "attacker")
    uploader = await connect(nats.settings(Identity.WEBHOOK), "uploader")
    runner = await connect(nats.settings(Identity.TRIAL_RUNNER), "runner")
    try:
        store = await attacker.jetstream().object_store(Bucket.DATASETS.value)
        await store.put(dataset_object_name(digest), b"x" * len(victim))  # same size, wrong bytes
        with pytest.raises(ArtifactError, match=rf"{dataset_object_name(digest)} has sha256 .*expected {digest[:12]}"):
            await get_dataset(runner.jetstream(), digest)  # a reader never trusts the name
        assert await put_dataset(uploader.jetstream(), victim) == (digest, True)  # treated as absent: replaced
        assert await get_dataset(runner.jetstream(), digest) == victim
        assert await put_dataset(uploader.jetstream(), victim) == (digest, False)  # now genuinely stored
    finally:
        for nc in (attacker, uploader, runner):
            await nc.close()


async def test_a_dataset_name_forged_without_chunks_is_refused_at_once_and_replaced(nats) -> None:
    """A meta record whose chunks do not exist: nats-py's reader would wait for them forever (runners and uploads hung)."""
    victim = b"a,b,label\n" + b"".join(f"{i},{i * 3},{i % 2}\n".encode() for i in range(4000))
    digest = hashlib.sha256(victim).hexdigest()
    name, bucket = dataset_object_name(digest), Bucket.DATASETS.value
    attacker = await connect(nats.settings(Identity.SUBMITTER), "attacker")
    uploader = await connect(nats.settings(Identity.WEBHOOK), "uploader")
    runner = await connect(nats.settings(Identity.TRIAL_RUNNER), "runner")
    try:
        forged = api.ObjectInfo(
            name=name,
            bucket=bucket,
            nuid=f"nochunks{digest[:12]}",
            size=len(victim),
            chunks=1,
            digest="SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(digest)).decode(),
        )
        meta = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
        await attacker.jetstream().publish(meta, json.dumps(forged.as_dict()).encode(), headers={"Nats-Rollup": "sub"})
        assert (await (await runner.jetstream().object_store(bucket)).get_info(name)).nuid == forged.nuid
        # wait_for only turns a hang into a failure: both answer at once
        with pytest.raises(ArtifactError, match=rf"{name} has sha256 .*expected {digest[:12]}"):
            await asyncio.wait_for(get_dataset(runner.jetstream(), digest), 30)
        assert await asyncio.wait_for(put_dataset(uploader.jetstream(), victim), 30) == (digest, True)
        assert await asyncio.wait_for(get_dataset(runner.jetstream(), digest), 30) == victim
    finally:
        for nc in (attacker, uploader, runner):
            await nc.close()


async def test_the_model_server_identity_cannot_replace_an_artifact(nats) -> None:
    nc = await connect(nats.settings(Identity.MODEL_SERVER), "test")
    try:
        name = f"models/x-{uuid.uuid4().hex[:6]}.skops"
        with pytest.raises(Exception):  # noqa: B017 - the refused publish surfaces as a timeout or an error
            await put_artifact(nc.jetstream(timeout=2), name, b"not allowed")
        assert '"$G/user:CN=model-server" - Publish Violation - Subject "$O.tweakline-artifacts' in nats.log
    finally:
        await nc.close()
