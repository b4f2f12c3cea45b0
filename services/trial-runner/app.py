"""The trial-runner service: a long-lived process pulling its pool's trials from the shared work queue."""

from __future__ import annotations

from faststream import AckPolicy, FastStream
from faststream.nats import NatsRouter

from tweakline.ml.uploads import use_uploaded_datasets
from tweakline.proto.subjects import Subject, all_of
from tweakline.runtime.service import ServiceContext, make_app, make_broker, pool_subscription
from tweakline.runtime.settings import Settings
from tweakline.trial_runner.handlers import TrialRunner
from tweakline.trial_runner.worker import TrialWorker, take_early, worker_config

NAME = "trial-runner"


def create_app(settings: Settings) -> FastStream:
    """Build the runner's broker, router (work queue, one trial at a time; prune verdicts) and app."""
    # The training zygote is forked first: before the broker's threads and event loop exist, and
    # before the broker loads this identity's TLS key (training processes never hold a copy). In
    # the local stack it was forked even earlier, as the process started (worker.prepare_early).
    worker = TrialWorker(worker_config(settings), early=take_early())
    worker.prepare()
    broker = make_broker(settings, NAME)
    ctx = ServiceContext(settings, broker, NAME)
    runner = TrialRunner(ctx, worker)
    router = NatsRouter()
    ctx.subscribe(
        router,
        runner.on_trial_requested,
        # Only this runner's pool's trials (TWEAKLINE_RUNNER_POOL): its own durable consumer.
        **pool_subscription(settings.runner_pool, batch_size=1),
        ack_policy=AckPolicy.MANUAL,
    )
    # Early stopping: verdicts for this runner's trials.
    ctx.subscribe(router, runner.early.on_control, subject=all_of(Subject.TRIAL_CONTROL))
    broker.include_router(router)
    return make_app(
        ctx,
        NAME,
        start=[runner.early.start, use_uploaded_datasets(ctx), runner.start],
        stop=[runner.stop],  # before the broker closes: the trial's result or nak still goes out
    )
