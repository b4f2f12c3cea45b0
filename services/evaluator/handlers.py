"""The evaluator's message handling: refit, score against defaults and production, decide, store the model."""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsMessage

from tweakline.errors import TweaklineError
from tweakline.evaluator.scoring import (
    TrainerRefit,
    holdout_record,
    probe_set,
    refit_and_score,
    refit_trainer_and_score,
    score_model,
)
from tweakline.ml.artifacts import TRAINER_SUFFIX, dump_model, is_trainer_artifact, load_model, load_trainer_model
from tweakline.ml.datasets import DatasetCache
from tweakline.ml.estimators import task_of
from tweakline.ml.holdout import HoldoutRule, unseen_by
from tweakline.ml.trainers.bundles import fetch_code_bundle
from tweakline.observability import telemetry
from tweakline.promotion.gate import decide
from tweakline.promotion.stats import Outputs, compare
from tweakline.proto.messages import (
    Comparison,
    Decision,
    EvaluationCompleted,
    ExperimentCompleted,
    ExperimentStatus,
    Holdout,
    ReleaseHistory,
    msg_id,
)
from tweakline.proto.subjects import Bucket, Stream, Subject, subject_for
from tweakline.runtime.objects import get_artifact, put_artifact
from tweakline.runtime.records import RecordStore
from tweakline.runtime.service import ServiceContext, keep_alive

log = logging.getLogger(__name__)


class Evaluator:
    """Turns a finished search into a promote/reject decision with its evidence."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.datasets = DatasetCache()

    async def on_experiment_completed(self, completed: ExperimentCompleted, msg: NatsMessage) -> None:
        """Evaluate one finished experiment and publish the decision (always, even on error)."""
        beat = asyncio.create_task(keep_alive(msg, 10.0))
        limit = self.ctx.settings.evaluation_timeout_s
        deadline = asyncio.timeout(limit)
        try:
            # Each evaluation runs in its own subscriber worker (evaluator_concurrency of them), so
            # a slow one holds one slot; past its limit it is failed and its slot freed.
            async with deadline:
                evaluation = await self._evaluate(completed)
        except TimeoutError as exc:
            if not deadline.expired():
                evaluation = self._error(completed, f"evaluation failed: {type(exc).__name__}: {exc}")
            else:
                log.error("evaluation of %s exceeded its time limit of %gs", completed.experiment_id, limit)
                evaluation = self._error(
                    completed, f"evaluation exceeded its time limit of {limit:g}s (TWEAKLINE_EVALUATION_TIMEOUT_S)"
                )
        except TweaklineError as exc:
            evaluation = self._error(completed, str(exc))
        except Exception as exc:  # an unexpected failure still ends the experiment, with the reason
            log.exception("evaluation of %s failed", completed.experiment_id)
            evaluation = self._error(completed, f"evaluation failed: {type(exc).__name__}: {exc}")
        finally:
            beat.cancel()
        await self.ctx.publish(
            evaluation,
            subject_for(Subject.EVALUATION_COMPLETED, completed.experiment_id),
            msg_id=msg_id("evaluation", completed.experiment_id),
            stream=Stream.EVENTS,
        )
        await msg.ack()
        log.info("experiment %s: %s", completed.experiment_id, evaluation.decision.value)

    def _error(self, completed: ExperimentCompleted, reason: str) -> EvaluationCompleted:
        spec = completed.tweak.spec
        return EvaluationCompleted(
            experiment_id=completed.experiment_id,
            decision=Decision.ERROR,
            reasons=[reason],
            metric=spec.objective.metric,
            release=spec.deploy.release if spec.deploy else None,
            target=spec.deploy.target if spec.deploy else None,
            deploy=spec.deploy,
            estimator=spec.model.name,
            source=completed.source,
            trials_total=completed.total,
            trials_ok=completed.ok,
        )

    async def _production(self, release: str) -> tuple[object, int, Holdout | None] | None:
        """The model now serving ``release``, its revision and the holdout it was evaluated with, if any."""
        store = await RecordStore.open(self.ctx.js, Bucket.RELEASES.value, ReleaseHistory)
        found = await store.get(release)
        live = found[0].live if found else None
        if live is None:
            return None
        data = await get_artifact(self.ctx.js, live.artifact)
        if is_trainer_artifact(live.artifact.name):
            # Production came from a trainer: its predict entry point runs here (see docs/trainers.md).
            cache = self.ctx.settings.state_dir / "cache" / "trainer-models"
            return await asyncio.to_thread(load_trainer_model, data, live.artifact.sha256, cache), live.revision, live.holdout
        # Off the event loop: a large model must not stall the other evaluations (nor the heartbeats).
        return await asyncio.to_thread(load_model, data, live.artifact.sha256), live.revision, live.holdout

    @staticmethod
    def _compare(spec, split, task, refit, model, holdout: Holdout | None = None):
        """Production's metrics and the paired comparison, on the test rows production cannot have trained on.

        Production's recorded holdout rule says which rows it trained on: under the same rule
        none of today's test rows (the split is append-stable), under another rule only the rows
        that rule also held out are kept.
        """
        reference = HoldoutRule(holdout.test_size, holdout.seed, holdout.method) if holdout else None
        rows = unseen_by(split.test_keys, split.rule, reference) if split.rule is not None else None
        metrics = score_model(model, split, spec, task, rows)
        metric = spec.objective.metric
        if metric not in metrics or metric not in refit.metrics:
            return metrics, None
        X, y = (split.X_test, split.y_test) if rows is None else (split.X_test[rows], split.y_test[rows])
        candidate = score_model(refit.model, split, spec, task, rows)
        comparison = compare(
            metric,
            y,
            Outputs.of(refit.model, X),
            Outputs.of(model, X),
            task,
            candidate_value=candidate[metric],
            production_value=metrics[metric],
            required_gain=spec.gate.beat_production_by,
            alpha=spec.gate.alpha,
            resamples=spec.gate.bootstrap_resamples,
            seed=spec.dataset.seed,
        )
        comparison.excluded = 0 if rows is None else int((~rows).sum())
        if holdout is None:
            comparison.reference_holdout = "production's training rows are unknown (released before holdouts were recorded)"
        elif reference == split.rule:
            comparison.reference_holdout = "production was held out by the same rule: it trained on none of these rows"
        else:
            comparison.reference_holdout = (
                f"production's rule (test_size {holdout.test_size:g}, seed {holdout.seed}) also held these rows out"
            )
        return metrics, comparison

    @staticmethod
    def _against_defaults(spec, split, task, refit) -> Comparison | None:
        """The paired comparison of the tuned model with the default-params estimator on the same test rows."""
        metric = spec.objective.metric
        if refit.default_model is None or metric not in refit.metrics or metric not in refit.default_metrics:
            return None
        comparison = compare(
            metric,
            split.y_test,
            Outputs.of(refit.model, split.X_test),
            Outputs.of(refit.default_model, split.X_test),
            task,
            candidate_value=refit.metrics[metric],
            production_value=refit.default_metrics[metric],
            required_gain=0.0,
            alpha=spec.gate.alpha,
            resamples=spec.gate.bootstrap_resamples,
            seed=spec.dataset.seed,
        )
        comparison.reference_holdout = "both fitted on the same training rows"
        return comparison

    @telemetry.traced("evaluation")  # refit, scoring and the gate, under the experiment's trace
    async def _evaluate(self, completed: ExperimentCompleted) -> EvaluationCompleted:
        spec = completed.tweak.spec
        if completed.status is not ExperimentStatus.COMPLETED or completed.best is None:
            return self._error(completed, completed.message or "the search produced no successful trial")
        allowed = self.ctx.settings.allowed_estimators
        split = await asyncio.to_thread(self.datasets.get, spec.dataset)
        if spec.model.trainer is not None:  # the user's code: refitted in the scrubbed trainer process
            code_cache = self.ctx.settings.state_dir / "cache" / "code"
            await fetch_code_bundle(self.ctx.js, spec.model.trainer.code, code_cache)  # hash-checked
            refit = await asyncio.to_thread(
                refit_trainer_and_score,
                split,
                spec,
                completed.best.params,
                memory_mb=self.ctx.settings.trial_memory_mb,
                code_cache=code_cache,
            )
            task = refit.task
        else:
            task = task_of(spec.model, allowed)
            refit = await asyncio.to_thread(refit_and_score, split, spec, completed.best.params, allowed, task)

        production_metrics = None
        production_revision = None
        comparison = None
        if spec.deploy is not None:
            production = await self._production(spec.deploy.release)
            if production is not None:
                model, production_revision, production_holdout = production
                try:
                    production_metrics, comparison = await asyncio.to_thread(
                        self._compare, spec, split, task, refit, model, production_holdout
                    )
                except Exception as exc:  # e.g. the features changed: the old model cannot be compared
                    raise TweaklineError(
                        f"the model in production (revision {production_revision}) cannot be scored on this "
                        f"experiment's test split: {type(exc).__name__}: {exc}"
                    ) from exc

        defaults = await asyncio.to_thread(self._against_defaults, spec, split, task, refit)
        result = decide(spec, refit.metrics, production_metrics, comparison, defaults)
        if isinstance(refit, TrainerRefit):
            artifact = None
            if refit.bundle:  # a declared predict entry point: servable
                artifact = await put_artifact(self.ctx.js, f"models/{completed.experiment_id}{TRAINER_SUFFIX}", refit.bundle)
            elif result.decision is Decision.PROMOTE and spec.deploy is not None:
                raise TweaklineError("the trainer declares no model.trainer.predict entry point: its model cannot be served")
        else:
            data, _sha = await asyncio.to_thread(dump_model, refit.model)
            artifact = await put_artifact(self.ctx.js, f"models/{completed.experiment_id}.skops", data)
        probe = None
        if result.decision is Decision.PROMOTE and spec.deploy is not None:
            rows = probe_set(split, spec.deploy.verify.probe_rows)
            probe = await put_artifact(self.ctx.js, f"probes/{completed.experiment_id}.json", rows)
        return EvaluationCompleted(
            experiment_id=completed.experiment_id,
            decision=result.decision,
            reasons=result.reasons,
            checks=result.checks,
            metric=spec.objective.metric,
            best_params=completed.best.params,
            best_cv_score=completed.best.score,
            candidate_metrics=refit.metrics,
            default_metrics=refit.default_metrics,
            production_metrics=production_metrics,
            production_revision=production_revision,
            comparison=comparison,
            default_comparison=defaults,
            holdout=holdout_record(split),
            features=list(split.feature_names),
            probe=probe,
            gate=spec.gate,
            artifact=artifact,
            release=spec.deploy.release if spec.deploy else None,
            target=spec.deploy.target if spec.deploy else None,
            deploy=spec.deploy,
            estimator=spec.model.name,
            source=completed.source,
            trials_total=completed.total,
            trials_ok=completed.ok,
        )
