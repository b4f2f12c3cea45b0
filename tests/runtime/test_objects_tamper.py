"""Artifacts in the real object store: what was recorded is what is loaded, or nothing is."""

from __future__ import annotations

import uuid

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from tweakline.errors import ArtifactError
from tweakline.ml.artifacts import dump_model, load_model
from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect
from tweakline.runtime.objects import get_artifact, put_artifact


async def test_an_artifact_replaced_in_the_store_is_refused(nats) -> None:
    X, y = load_iris(return_X_y=True)
    good, _ = dump_model(LogisticRegression(max_iter=500).fit(X, y))
    other, _ = dump_model(DecisionTreeClassifier(max_depth=1).fit(X, y))
    name = f"models/tamper-{uuid.uuid4().hex[:6]}.skops"
    nc = await connect(nats.settings(Identity.EVALUATOR), "test")
    try:
        js = nc.jetstream()
        ref = await put_artifact(js, name, good)
        assert load_model(await get_artifact(js, ref), ref.sha256).predict(X[:3]).tolist() == [0, 0, 0]
        await (await js.object_store(ref.bucket)).put(name, other)  # someone with write access swaps the model
        with pytest.raises(ArtifactError, match=rf"artifact {ref.bucket}/{name} has sha256 .* expected .*refusing to load it"):
            await get_artifact(js, ref)
    finally:
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
