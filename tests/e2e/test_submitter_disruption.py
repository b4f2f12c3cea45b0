"""A stolen CI credential against a running experiment: with only ``submitter``, every disruption fails.

The attacker knows the platform (names of streams, consumers, stores, inboxes) and the victim's
dataset, and tries every way JetStream's API offers: delete or redirect the services' consumers,
purge or delete streams and stores, forge results and decisions, snoop other identities'
replies, and pre-store garbage under the victim's dataset hash. Each attempt is refused by the
server (a permissions violation naming the subject) or defeated (the poisoned name is replaced
by the victim's upload); the experiment completes with its decision.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
from sklearn.datasets import load_wine

from tests.waiting import until
from tweakline.client.follow import Outcome, follow, submit
from tweakline.client.submission import disk_reader, upload_datasets
from tweakline.proto.messages import Decision, Source
from tweakline.proto.permissions import Identity, inbox_prefix
from tweakline.proto.subjects import CONSUMER_FILTERS, Bucket, Consumer, Stream, Subject, dataset_object_name, subject_for
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.e2e
VIOLATION = re.compile(r'permissions violation for (?:publish|subscription) to "([^"]+)"', re.IGNORECASE)


def wine_csv() -> bytes:
    X, y = load_wine(return_X_y=True)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([f"f{i}" for i in range(X.shape[1])] + ["label"])
    writer.writerows([*row, int(label)] for row, label in zip(X.tolist(), y.tolist(), strict=True))
    return out.getvalue().encode()


def victim_tweak() -> TweakFile:
    return TweakFile.model_validate(
        {
            "apiVersion": "tweakline/v1",
            "kind": "Experiment",
            "metadata": {"name": "victim"},
            "spec": {
                "dataset": {"source": "csv:wine.csv", "target": "label", "test_size": 0.25, "seed": 0},
                "model": {"estimator": "sklearn.dummy.DummyClassifier"},
                "search": {
                    "algorithm": "random",
                    "seed": 0,
                    "space": {"strategy": {"type": "categorical", "choices": ["most_frequent"]}},
                },
                "objective": {"metric": "accuracy", "cv": 2},
                "budget": {"max_trials": 2, "parallelism": 1},
                "gate": {"thresholds": {"accuracy": 0.2}},
                "deploy": {"target": "local", "release": "victim"},
            },
        }
    )


def disruptions(exp_id: str) -> list[tuple[str, str, bool]]:
    """(what, subject, subscribe?) of every attack the API allows."""
    events, trials = Stream.EVENTS.value, Stream.TRIALS.value
    out: list[tuple[str, str, bool]] = []
    for consumer, (stream, _f) in CONSUMER_FILTERS.items():
        out.append((f"delete consumer {consumer.value}", f"$JS.API.CONSUMER.DELETE.{stream.value}.{consumer.value}", False))
        out.append((f"redefine consumer {consumer.value}", f"$JS.API.CONSUMER.CREATE.{stream.value}.{consumer.value}", False))
    # the legacy create carries the name in its body: it could rename itself into a durable
    out.append(("create a consumer named by its body", f"$JS.API.CONSUMER.CREATE.{events}", False))
    for stream in (
        events,
        trials,
        f"OBJ_{Bucket.ARTIFACTS.value}",
        f"OBJ_{Bucket.DATASETS.value}",
        f"KV_{Bucket.RELEASES.value}",
    ):
        out.append((f"purge {stream}", f"$JS.API.STREAM.PURGE.{stream}", False))
        out.append((f"delete {stream}", f"$JS.API.STREAM.DELETE.{stream}", False))
        out.append((f"update {stream}", f"$JS.API.STREAM.UPDATE.{stream}", False))
        out.append((f"delete a message of {stream}", f"$JS.API.STREAM.MSG.DELETE.{stream}", False))
    for family in (
        Subject.TRIAL_COMPLETED,
        Subject.EXPERIMENT_COMPLETED,
        Subject.EVALUATION_COMPLETED,
        Subject.DEPLOYMENT_COMPLETED,
    ):
        out.append((f"forge {family.value}", subject_for(family, exp_id), False))
    out.append(("forge trial control", subject_for(Subject.TRIAL_CONTROL, exp_id), False))
    out.append(("take a trial from the runners", f"$JS.API.CONSUMER.MSG.NEXT.{trials}.{Consumer.TRIAL_RUNNERS.value}", False))
    out.append(("write a model", f"$O.{Bucket.ARTIFACTS.value}.M.bW9kZWxz", False))
    out.append(("rewrite the release history", f"$KV.{Bucket.RELEASES.value}.victim", False))
    out.append(("snoop every inbox", "_INBOX.>", True))
    for other in (Identity.SCHEDULER, Identity.TRIAL_RUNNER, Identity.EVALUATOR, Identity.DEPLOYER, Identity.WEBHOOK):
        out.append((f"snoop {other.value}'s replies", f"{inbox_prefix(other)}.>", True))
    out.append(("listen to trial progress", f"{Subject.TRIAL_PROGRESS.value}.>", True))
    return out


def test_a_submitter_cannot_disrupt_a_running_experiment(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "state", runners=1)
    stack.start()
    try:
        asyncio.run(_attack(stack, tmp_path))
    finally:
        stack.stop()


async def _attack(stack: LocalStack, tmp_path: Path) -> None:
    data = wine_csv()
    (tmp_path / "wine.csv").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    refused: set[str] = set()

    async def on_error(exc: Exception) -> None:
        if found := VIOLATION.search(str(exc)):
            refused.add(found.group(1).lower())

    attacker = await connect(stack.settings_for(Identity.SUBMITTER), "attacker", error_cb=on_error)
    victim = await connect(stack.settings_for(Identity.SUBMITTER), "victim-pipeline")
    admin = await connect(stack.settings_for(Identity.ADMIN), "operator")
    try:
        # before the victim uploads: garbage of the right size under its dataset's hash
        poison = await attacker.jetstream().object_store(Bucket.DATASETS.value)
        await poison.put(dataset_object_name(digest), b"0" * len(data))
        tweak, uploads = await upload_datasets(victim_tweak(), victim.jetstream(), disk_reader(tmp_path))
        assert [(u.sha256, u.uploaded) for u in uploads] == [(digest, True)]  # not skipped as "already stored"
        exp_id = await submit(victim, tweak, Source(trigger="test"))
        following = asyncio.create_task(
            follow(victim, Outcome(experiment_id=exp_id, tweak=tweak), timeout=300, alive=stack.check)
        )

        attempts = disruptions(exp_id)
        for _what, subject, subscribe in attempts:
            if subscribe:
                await attacker.subscribe(subject)
            else:
                await attacker.publish(
                    subject, json.dumps({"config": {"name": "evaluator"}}).encode(), reply=f"{inbox_prefix(Identity.SUBMITTER)}.x"
                )
        await attacker.publish("tweakline.sentinel", b"")
        await attacker.flush(timeout=30)
        await until(lambda: "tweakline.sentinel" in refused, "the attacker's last violation", timeout=30)
        succeeded = [what for what, subject, _s in attempts if subject.lower() not in refused]
        assert succeeded == []

        outcome = await following
        assert outcome.evaluation is not None and outcome.evaluation.decision is Decision.PROMOTE, outcome.evaluation
        assert outcome.completed is not None and len(outcome.completed.trials) == 2
        assert all(t.error is None for t in outcome.completed.trials)  # the runners got the real data
        js = admin.jetstream()
        for consumer, (stream, _f) in CONSUMER_FILTERS.items():  # every service's consumer is intact
            info = await js.consumer_info(stream.value, consumer.value)
            assert info.config.filter_subject == CONSUMER_FILTERS[consumer][1]
    finally:
        for nc in (attacker, victim, admin):
            await nc.close()
