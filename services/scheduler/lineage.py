"""Warm start by lineage: earlier trials of the same repository and experiment seed a new search.

A lineage is ``<repository>/<experiment name>`` (``local/<name>`` without a repository), or the
tweak file's ``search.warm_start.from``. Its trials are kept in the lineage KV bucket. A new
experiment takes only the trials that are *compatible*: same dataset, model and objective
(otherwise scores do not compare), every parameter still in the space and inside its range,
and a value for every parameter active in the new space. The others are counted, by reason,
in a :class:`~tweakline.proto.messages.WarmStartReport`; they are never mixed into the study.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from typing import Any

from nats.js import JetStreamContext

from tweakline.proto.messages import LineageHistory, LineageTrial, Source, TrialRecord, TrialStatus, WarmStartReport
from tweakline.proto.subjects import Bucket
from tweakline.proto.tweakfile import ExperimentSpec, TweakFile
from tweakline.runtime.records import RecordStore
from tweakline.search.space import distribution, is_active, ordered

# Most recent trials kept per lineage, and seeded into one study. A lineage is one KV value,
# which must stay well under the server's max_payload (1 MiB by default).
MAX_HISTORY = 1000
MAX_HISTORY_BYTES = 512 * 1024
MAX_WARM_TRIALS = 500
MAX_WARM_BYTES = 256 * 1024

_KEY_UNSAFE = re.compile(r"[^-/_=.a-zA-Z0-9]+")


def lineage_of(tweak: TweakFile, source: Source) -> str | None:
    """The lineage key of an experiment, or ``None`` when warm start is off."""
    warm = tweak.spec.search.warm_start
    if not warm.enabled:
        return None
    name = warm.from_ or f"{source.repository or 'local'}/{tweak.metadata.name}"
    return _KEY_UNSAFE.sub("_", name).strip("./") or None


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _dataset_identity(spec: ExperimentSpec, source: Source | None) -> dict[str, Any]:
    """The dataset as the user wrote it: a csv path relative to the tweak file's folder when known.

    The CLI makes csv paths absolute; CI checks every commit out into a new folder, so the
    absolute path would make each push look like a new dataset.
    """
    dataset = spec.dataset.model_dump(mode="json")
    location = spec.dataset.source.removeprefix("csv:")
    if spec.dataset.source.startswith("csv:") and source and source.path and os.path.isabs(source.path):
        if os.path.isabs(location):
            dataset["source"] = "csv:" + os.path.relpath(location, os.path.dirname(source.path))
    return dataset


def context_of(spec: ExperimentSpec, source: Source | None = None) -> dict[str, str]:
    """What a score depends on besides the searched parameters, as one fingerprint per part.

    The dataset is identified by where it comes from, not by its content: a csv file changed in
    place at the same path counts as the same dataset.
    """
    return {
        "dataset": _digest(_dataset_identity(spec, source)),
        "model": _digest(spec.model.model_dump(mode="json")),
        "objective": _digest([spec.objective.metric, spec.objective.maximize, spec.objective.cv]),
    }


def incompatibility(trial: LineageTrial, spec: ExperimentSpec, context: dict[str, str]) -> str | None:
    """Why an earlier trial cannot seed a search of ``spec`` (``None`` when it can)."""
    for part in ("dataset", "model", "objective"):
        if trial.context.get(part) != context[part]:
            return f"the {part} changed"
    space = spec.search.space
    params = trial.record.params
    for name, value in params.items():
        param = space.get(name)
        if param is None:
            return f"parameter '{name}' is no longer in the space"
        dist = distribution(param)
        try:
            inside = dist._contains(dist.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            return f"parameter '{name}' outside its new range or choices"
    chosen: dict[str, Any] = {}
    for name in ordered(space):
        active = is_active(space[name], chosen)
        if active and name not in params:
            return f"no value for parameter '{name}' (new, or newly active)"
        if not active and name in params:
            return f"parameter '{name}' is inactive under its new condition"
        if name in params:
            chosen[name] = params[name]
    return None


def select(
    history: LineageHistory | None, lineage: str, spec: ExperimentSpec, source: Source | None = None
) -> tuple[list[TrialRecord], WarmStartReport]:
    """The earlier trials that may seed a search of ``spec`` (most recent last), and the report."""
    report = WarmStartReport(lineage=lineage)
    if history is None:
        return [], report
    candidates = [t for t in history.trials if t.record.status in (TrialStatus.OK, TrialStatus.PRUNED)]
    report.available = len(candidates)
    if spec.search.algorithm == "grid":
        # An exhaustive grid would skip the points seen before instead of learning from them.
        report.incompatible = len(candidates)
        if candidates:
            report.reasons = {"grid search does not use earlier trials": len(candidates)}
        return [], report
    context = context_of(spec, source)
    reasons: Counter[str] = Counter()
    reused: list[TrialRecord] = []
    for trial in candidates:
        why = incompatibility(trial, spec, context)
        if why is None:
            reused.append(trial.record)
        else:
            reasons[why] += 1
    reused = reused[-MAX_WARM_TRIALS:]
    # They are kept in the experiment's state (one KV value, next to its own results): bound the bytes.
    while reused and sum(len(r.model_dump_json()) for r in reused) > MAX_WARM_BYTES:
        reused = reused[max(1, len(reused) // 10) :]
    report.reused = len(reused)
    report.incompatible = sum(reasons.values())
    report.reasons = dict(reasons.most_common())
    return reused, report


class LineageStore:
    """The lineage KV bucket: read a lineage's trials, add a finished experiment's (once)."""

    def __init__(self, records: RecordStore[LineageHistory]):
        self.records = records

    @classmethod
    async def open(cls, js: JetStreamContext) -> LineageStore:
        """Bind to the bucket made by ``ensure_topology``."""
        return cls(await RecordStore.open(js, Bucket.LINEAGE.value, LineageHistory))

    async def load(self, lineage: str) -> LineageHistory | None:
        """The lineage's history, if any."""
        found = await self.records.get(lineage)
        return None if found is None else found[0]

    async def add(
        self, lineage: str, experiment_id: str, source: Source, spec: ExperimentSpec, trials: list[TrialRecord]
    ) -> None:
        """Append an experiment's finished trials (ok and pruned) to its lineage; a repeat changes nothing."""
        context = context_of(spec, source)
        finished = [record for record in trials if record.status in (TrialStatus.OK, TrialStatus.PRUNED)]
        kept = [  # only the most recent MAX_HISTORY can stay: a 20,000-trial experiment builds 1,000, not 20,000
            LineageTrial(experiment_id=experiment_id, commit=source.commit, context=context, record=record)
            for record in finished[-MAX_HISTORY:]
        ]

        def change(current: LineageHistory | None) -> LineageHistory:
            history = current or LineageHistory(lineage=lineage)
            if experiment_id in history.experiments:
                return history
            history.trials = (history.trials + kept)[-MAX_HISTORY:]
            history.experiments = (history.experiments + [experiment_id])[-MAX_HISTORY:]
            while history.trials and len(history.model_dump_json()) > MAX_HISTORY_BYTES:
                history.trials = history.trials[max(1, len(history.trials) // 10) :]  # drop the oldest tenth
            return history

        await self.records.mutate(lineage, change)
