"""The deployer's message handling: record the promoted revision, make it live, verify it, roll back on failure."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream.nats import NatsMessage

from tweakline.deployer.control import rollback
from tweakline.deployer.registry import target_for
from tweakline.deployer.releases import ReleaseError, record_event, record_promotion, set_target_revision
from tweakline.deployer.verify import load_probe, verify_live
from tweakline.deployer.watch import LiveBook, Outcome, Verdict, Watch
from tweakline.observability import telemetry
from tweakline.promotion.environments import environment_for
from tweakline.proto.messages import (
    Decision,
    DeploymentCompleted,
    DeploymentStatus,
    EvaluationCompleted,
    ModelStats,
    ReleaseAction,
    ReleaseEvent,
    ReleaseHistory,
    ReleaseRevision,
    RollbackCompleted,
    RollbackRequested,
    msg_id,
    utcnow,
)
from tweakline.proto.subjects import Bucket, Stream, Subject, release_subject, subject_for
from tweakline.runtime.objects import get_artifact
from tweakline.runtime.records import RecordStore
from tweakline.runtime.service import ServiceContext, keep_alive

log = logging.getLogger(__name__)

WATCH_MARK = "post-promotion watch"  # how the watch's steps in a release history begin
RESUME_GRACE_S = 30.0


class Deployer:
    """Promotes models the evaluator accepted; undoes a promotion whose deployment or check fails."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.store: RecordStore[ReleaseHistory] | None = None
        # Deployments of one release stay in order; different releases deploy side by side.
        self._releases: dict[str, asyncio.Lock] = {}
        # The post-promotion watch: the servers' latest figures, and the watch of each release.
        self.book = LiveBook()
        self.watches: dict[str, Watch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind to the release history bucket, and pick up the watches a previous process left running."""
        self.store = await RecordStore.open(self.ctx.js, Bucket.RELEASES.value, ReleaseHistory)
        try:
            await self.resume_watches()
        except Exception:  # the watch is a safety net: never a reason not to deploy
            log.exception("could not resume the post-promotion watches")

    async def on_evaluation_completed(self, evaluation: EvaluationCompleted, msg: NatsMessage) -> None:
        """Deploy a promoted model; ignore rejections and errors (nothing to do)."""
        if evaluation.decision is not Decision.PROMOTE or evaluation.release is None or evaluation.artifact is None:
            await msg.ack()
            return
        beat = asyncio.create_task(keep_alive(msg, 10.0))
        try:
            async with self._releases.setdefault(evaluation.release, asyncio.Lock()):
                status, revision, message = await self._deploy(evaluation)
                if status is DeploymentStatus.DEPLOYED and revision is not None:
                    await self._start_watch(evaluation, revision)
        finally:
            beat.cancel()
        await self.ctx.publish(
            DeploymentCompleted(
                experiment_id=evaluation.experiment_id,
                release=evaluation.release,
                target=evaluation.target or "local",
                status=status,
                revision=revision,
                message=message,
            ),
            subject_for(Subject.DEPLOYMENT_COMPLETED, evaluation.experiment_id),
            msg_id=msg_id("deployment", evaluation.experiment_id),
            stream=Stream.EVENTS,
        )
        await msg.ack()
        log.info("release %s: %s", evaluation.release, message)

    async def on_rollback_requested(self, request: RollbackRequested, msg: NatsMessage) -> None:
        """An operator's rollback (the console's): drive the target, record it, answer with the outcome.

        Idempotent: the request id is kept in the recorded reason, so a redelivered request that
        was already carried out is answered again instead of rolling back a second time.
        """
        marker = f"(request {request.request_id})"
        async with self._releases.setdefault(request.release, asyncio.Lock()):
            answer = await self._rollback(request, marker)
        await self.ctx.publish(
            answer,
            release_subject(Subject.RELEASE_ROLLED_BACK, request.release),
            msg_id=msg_id("rolledback", request.request_id),
            stream=Stream.EVENTS,
        )
        await msg.ack()
        log.info("release %s: %s", request.release, answer.message)

    async def _rollback(self, request: RollbackRequested, marker: str) -> RollbackCompleted:
        assert self.store is not None
        answer = {"release": request.release, "request_id": request.request_id}
        found = await self.store.get(request.release)
        if found is not None:
            done = next((e for e in found[0].events if e.reason.endswith(marker)), None)
            if done is not None:
                message = f"revision {done.revision} is live again (was {done.previous})"
                return RollbackCompleted(**answer, ok=True, revision=done.revision, previous=done.previous, message=message)
        try:
            result = await rollback(
                self.ctx.js,
                self.ctx.settings,
                request.release,
                to=request.to,
                reason=f"{request.reason or 'manual rollback'} {marker}",
                by=request.requested_by or "operator",
                expect_current=request.expect_current,
            )
        except ReleaseError as exc:
            return RollbackCompleted(**answer, ok=False, message=str(exc))
        except Exception as exc:  # a failed target: the history is unchanged
            log.exception("rollback of %s failed", request.release)
            return RollbackCompleted(**answer, ok=False, message=f"rollback failed: {type(exc).__name__}: {exc}")
        message = f"revision {result.revision.revision} is live again (was {result.previous})"
        return RollbackCompleted(**answer, ok=True, revision=result.revision.revision, previous=result.previous, message=message)

    async def _deploy(self, evaluation: EvaluationCompleted) -> tuple[DeploymentStatus, int | None, str]:
        assert self.store is not None and evaluation.release is not None
        environment = environment_for(evaluation.source, evaluation.deploy)
        if evaluation.deploy is not None and not environment.production:
            existing = await self.store.get(evaluation.release)
            live = existing[0].current if existing else None
            return DeploymentStatus.SKIPPED, live, f"production unchanged: {environment.reason}"
        target = target_for(evaluation.target or "local", self.ctx.settings)
        existing = await self.store.get(evaluation.release)
        seen = existing is not None and any(r.experiment_id == evaluation.experiment_id for r in existing[0].revisions)
        history, revision = await record_promotion(self.store, evaluation.release, target.name, evaluation, evaluation.estimator)
        if seen and history.current != revision.revision:
            # A redelivery of a promotion that was already undone: do not deploy it again.
            return DeploymentStatus.ROLLED_BACK, history.current, f"revision {revision.revision} was already rolled back"
        spec = evaluation.deploy
        if spec is None:
            return DeploymentStatus.DEPLOYED, revision.revision, f"revision {revision.revision} is live"
        # One time limit for the upgrade and its check: a stuck target fails this deployment (and
        # puts the previous revision back) instead of holding a deployer slot for ever.
        limit = self.ctx.settings.deployment_timeout_s
        deadline = asyncio.get_running_loop().time() + limit
        over = f"deployment exceeded its time limit of {limit:g}s (TWEAKLINE_DEPLOYMENT_TIMEOUT_S)"
        upgrade = asyncio.timeout_at(deadline)
        try:
            attributes = {"tweakline.target": target.name, "tweakline.revision": revision.revision}
            with telemetry.span("deployment", attributes=attributes):
                async with upgrade:
                    target_revision = await target.deploy(spec, history, revision)
        except TimeoutError as exc:
            if not upgrade.expired():  # the target's own timeout: an ordinary failed upgrade
                log.exception("deployment of %s failed", evaluation.release)
                return await self._undo(evaluation, revision, f"deployment failed: {type(exc).__name__}: {exc}")
            log.error("deployment of %s: %s", evaluation.release, over)
            return await self._undo(evaluation, revision, over)
        except Exception as exc:  # a failed upgrade: put the previous revision back
            log.exception("deployment of %s failed", evaluation.release)
            return await self._undo(evaluation, revision, f"deployment failed: {type(exc).__name__}: {exc}")
        if target_revision is not None:
            await set_target_revision(self.store, evaluation.release, revision.revision, target_revision)
        if not spec.verify.enabled:
            return DeploymentStatus.DEPLOYED, revision.revision, f"revision {revision.revision} is live (not verified)"
        endpoint = target.endpoint(spec)
        if endpoint is None:
            return (
                DeploymentStatus.DEPLOYED,
                revision.revision,
                f"revision {revision.revision} is live (not verified: no model server is serving release {spec.release})",
            )
        if evaluation.probe is None:
            return DeploymentStatus.DEPLOYED, revision.revision, f"revision {revision.revision} is live (no probe set)"
        probe = load_probe(await get_artifact(self.ctx.js, evaluation.probe))
        check = asyncio.timeout_at(deadline)
        try:
            async with check:
                result = await verify_live(endpoint, probe, evaluation.gate, spec.verify, revision.revision)
        except TimeoutError:
            if not check.expired():
                raise
            return await self._undo(evaluation, revision, f"post-deploy check at {endpoint}: {over}")
        if not result.ok:
            return await self._undo(evaluation, revision, f"post-deploy check failed at {endpoint}: {result.reason}")
        await record_event(
            self.store,
            evaluation.release,
            ReleaseEvent(action=ReleaseAction.VERIFIED, revision=revision.revision, reason=result.reason),
        )
        return DeploymentStatus.DEPLOYED, revision.revision, f"revision {revision.revision} is live; {result.reason}"

    async def _undo(
        self, evaluation: EvaluationCompleted, revision: ReleaseRevision, reason: str
    ) -> tuple[DeploymentStatus, int | None, str]:
        assert evaluation.release is not None
        try:
            done = await rollback(
                self.ctx.js,
                self.ctx.settings,
                evaluation.release,
                to=None,
                reason=reason,
                by="deployer",
                automatic=True,
                expect_current=revision.revision,
            )
        except ReleaseError as exc:  # nothing earlier to go back to, or a newer promotion won
            return DeploymentStatus.FAILED, revision.revision, f"{reason}; not rolled back: {exc}"
        except Exception as exc:
            log.exception("automatic rollback of %s failed", evaluation.release)
            return DeploymentStatus.FAILED, revision.revision, f"{reason}; rollback failed: {type(exc).__name__}: {exc}"
        return (
            DeploymentStatus.ROLLED_BACK,
            done.revision.revision,
            f"revision {revision.revision} rolled back to {done.revision.revision}: {reason}",
        )

    # --- the post-promotion watch (tweakline.deployer.watch has the comparison) ---

    async def _start_watch(self, evaluation: EvaluationCompleted, revision: int) -> None:
        """Watch ``revision``'s live figures against the revision it replaced for ``deploy.watch.window``."""
        assert self.store is not None and evaluation.release is not None
        spec = evaluation.deploy
        if spec is None or not spec.watch.enabled:
            return
        running = self.watches.get(evaluation.release)
        if running is not None and running.revision == revision and not running.concluded:
            return  # a redelivered promotion: already watched
        found = await self.store.get(evaluation.release)
        history = found[0] if found else None
        promoted = [
            e for e in (history.events if history else []) if e.action is ReleaseAction.PROMOTED and e.revision == revision
        ]
        previous = promoted[-1].previous if promoted else None
        probe = None
        if evaluation.probe is not None:
            try:
                probe = load_probe(await get_artifact(self.ctx.js, evaluation.probe))
            except Exception as exc:  # no probe: the shift is not judged, the rest is
                log.warning("release %s: no probe set for the watch's prediction shift: %s", evaluation.release, exc)
        self._begin(Watch(evaluation.release, revision, previous, spec.watch, probe, self._now() + spec.watch.window))

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _begin(self, watch: Watch) -> None:
        self.watches[watch.release] = watch
        left = watch.deadline - self._now()
        log.info("release %s: watching revision %s against %s for %.0fs", watch.release, watch.revision, watch.previous, left)
        self._spawn(self._watch_until_deadline(watch))

    async def resume_watches(self) -> None:
        """Watch again what a previous deployer process was watching when it stopped (the history says what).

        A release whose live revision was promoted (not rolled back to) with ``deploy.watch`` on,
        has no watch verdict yet and is still inside its window is watched for the rest of it, and
        at least :data:`RESUME_GRACE_S` (the servers' next summaries must be heard). The probe set is not in
        the history, so a resumed watch does not judge the prediction shift.
        """
        assert self.store is not None
        for release in await self.store.keys():
            found = await self.store.get(release)
            history = found[0] if found else None
            live = history.live if history else None
            if history is None or live is None or live.deploy is None or not live.deploy.watch.enabled:
                continue
            moves = [e for e in history.events if e.action is not ReleaseAction.VERIFIED]
            if not moves or moves[-1].action is not ReleaseAction.PROMOTED or moves[-1].revision != live.revision:
                continue
            promoted = moves[-1]
            after = history.events[history.events.index(promoted) :]
            if any(e.reason.startswith(WATCH_MARK) for e in after):
                continue  # judged already
            began = max(e.at for e in after)  # the post-deploy check's step, if there was one
            left = live.deploy.watch.window - (utcnow() - began).total_seconds()
            if left <= 0:
                continue  # the window closed while no deployer ran: too late to call it a post-promotion regression
            deadline = self._now() + max(left, RESUME_GRACE_S)
            self._begin(Watch(release, live.revision, promoted.previous, live.deploy.watch, None, deadline))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def on_model_stats(self, stats: ModelStats) -> None:
        """A model server's live figures: keep them, and judge the release's watch on them."""
        self.book.add(stats)
        watch = self.watches.get(stats.release)
        if watch is None or watch.concluded:
            return
        verdict = self.book.judge(watch)
        if verdict.outcome is Outcome.REGRESSED:
            watch.concluded = True  # later summaries change nothing: the rollback is under way
            self._spawn(self._conclude(watch, verdict))

    async def _watch_until_deadline(self, watch: Watch) -> None:
        await asyncio.sleep(max(0.0, watch.deadline - asyncio.get_running_loop().time()))
        if watch.concluded:
            return
        watch.concluded = True
        await self._conclude(watch, self.book.judge(watch))

    async def _conclude(self, watch: Watch, verdict: Verdict) -> None:
        """Record the watch's verdict; roll a regressed revision back (only if it is still the live one)."""
        assert self.store is not None
        if self.watches.get(watch.release) is watch:
            del self.watches[watch.release]
        try:
            async with self._releases.setdefault(watch.release, asyncio.Lock()):
                if verdict.outcome is Outcome.REGRESSED:
                    reason = f"{WATCH_MARK}: revision {watch.revision} regressed: {verdict.reason}"
                    await rollback(
                        self.ctx.js,
                        self.ctx.settings,
                        watch.release,
                        to=watch.previous,
                        reason=reason,
                        by="deployer",
                        automatic=True,
                        expect_current=watch.revision,
                    )
                    log.warning("release %s: %s; rolled back", watch.release, reason)
                    return
                found = await self.store.get(watch.release)
                if found is None or found[0].current != watch.revision:
                    return  # replaced or rolled back meanwhile: nothing to say about it any more
                if verdict.outcome is Outcome.PASSED:
                    reason = f"{WATCH_MARK} passed after {watch.spec.window:g}s: {verdict.reason}"
                else:
                    reason = f"{WATCH_MARK} ended without a verdict after {watch.spec.window:g}s: {verdict.reason}"
                await record_event(
                    self.store, watch.release, ReleaseEvent(action=ReleaseAction.VERIFIED, revision=watch.revision, reason=reason)
                )
                log.info("release %s: %s", watch.release, reason)
        except ReleaseError as exc:  # a newer promotion won, or nothing to go back to
            log.warning("release %s: watch of revision %s: %s", watch.release, watch.revision, exc)
        except Exception:  # a failed target or store: logged, the deployer carries on
            log.exception("release %s: concluding the watch of revision %s failed", watch.release, watch.revision)
