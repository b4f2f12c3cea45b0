"""Typed platform settings, read once at start-up from ``TWEAKLINE_*`` environment variables.

Defaults work for the local embedded stack; in Kubernetes the chart sets the variables.
Business logic receives these values as arguments and never reads the environment itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tweakline.proto.ids import NAME_PATTERN
from tweakline.proto.permissions import Identity, runner_identity
from tweakline.proto.subjects import DEFAULT_POOL

DEFAULT_STATE_DIR = Path(".tweakline")


class Settings(BaseSettings):
    """Settings shared by every tweakline process."""

    model_config = SettingsConfigDict(env_prefix="TWEAKLINE_", extra="ignore")

    nats_url: str = Field(default="tls://127.0.0.1:4222", description="NATS server URL (TLS is always used).")
    identity: Identity = Field(default=Identity.ADMIN, description="Certificate identity this process connects as.")
    state_dir: Path = Field(default=DEFAULT_STATE_DIR, description="Local state: JetStream store, dev PKI, caches.")
    tls_dir: Path | None = Field(
        default=None,
        description="Directory holding tls.crt, tls.key and ca.crt (a mounted cert-manager Secret). "
        "Default: <state_dir>/pki/<identity>.",
    )
    allowed_estimators: list[str] = Field(
        default=["sklearn."],
        description="Import-path prefixes that tweak files may name as estimators and pipeline steps.",
    )
    allow_host_paths: bool = Field(
        default=False,
        description="Scheduler: accept submissions whose dataset reads this machine's files (csv: paths). "
        "Only `tweakline run`'s own private stack sets it; a platform never should.",
    )
    code_trainers: list[str] = Field(
        default=[],
        description="Repositories (shell patterns, '*' for all) whose tweak files may run their own code as "
        "model.trainer; empty: estimators only (a shared platform's default; 'tweakline run' allows '*').",
    )
    pools: Annotated[list[str], NoDecode] = Field(
        default=[DEFAULT_POOL],
        description="The platform's runner pools, comma-separated (e.g. default,small,large): the pools a tweak file's "
        "spec.resources.pool may name. Trials without a pool go to 'default' if listed, else to the first.",
    )
    runner_pool: str = Field(
        default=DEFAULT_POOL,
        pattern=NAME_PATTERN,
        description="Runner: the pool whose trials this runner takes (it connects as that pool's identity).",
    )
    trial_ack_wait_s: float = Field(default=30.0, gt=0, description="Redeliver a trial not heartbeated for this long.")
    trial_max_deliver: int = Field(
        default=3, gt=0, description="Deliveries of a trial before it is failed (counted by the runners)."
    )
    trial_retry_backoff_max_s: float = Field(
        default=30.0,
        ge=0,
        description="Runner: the longest wait before a trial that met infrastructure trouble is retried "
        "(the back-off doubles per delivery, 2 s, 4 s, ..., up to this).",
    )
    trial_batch_max: int = Field(
        default=16,
        ge=1,
        le=64,
        description="Scheduler: the most trials one request may carry. Fast trials are batched (sized from the "
        "experiment's observed trial durations); 1 turns batching off (needed while runners from before batches run).",
    )
    trial_batch_target_s: float = Field(
        default=0.25,
        gt=0,
        description="Scheduler: the training time one batch of trials should take, from the trials' measured durations.",
    )
    stream_replicas: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Copies of every stream, KV bucket and object store `bus init` creates (0: 3 on a cluster, 1 alone).",
    )
    runner_threads: int = Field(default=1, gt=0, description="Threads each trial's estimator may use (n_jobs).")
    prune_verdict_wait_s: float = Field(
        default=2.0, ge=0, description="With a pruner, how long a runner waits after a fold for the scheduler's verdict."
    )
    trial_memory_mb: int | None = Field(
        default=4096, gt=0, description="Resident memory a trial's training process may use before it is failed."
    )
    shutdown_grace_s: float = Field(
        default=10.0, ge=0, description="On SIGTERM, how long a runner may finish its trial before handing it back."
    )
    evaluator_concurrency: int = Field(
        default=4, gt=0, description="Experiments one evaluator evaluates at once (a slow one never blocks the others)."
    )
    evaluation_timeout_s: float = Field(
        default=1800.0, gt=0, description="Time limit of one evaluation; past it the decision is ERROR with the reason."
    )
    deployer_concurrency: int = Field(
        default=4, gt=0, description="Releases one deployer deploys at once (one release's deployments stay in order)."
    )
    deployment_timeout_s: float = Field(
        default=900.0, gt=0, description="Time limit of one deployment (upgrade and check); past it, it is failed and undone."
    )
    supersede: Literal["pushes", "always", "never"] = Field(
        default="pushes",
        description="Whether a newer submission of the same lineage and branch cancels the older one still "
        "running: for CI pushes (webhook and pipeline submissions), for every submission, or never.",
    )
    log_level: str = "INFO"
    log_json: bool = False
    trace_console: bool = Field(default=False, description="Also print finished spans on stderr (besides OTEL_* exporters).")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Serve Prometheus metrics on this port (0: no endpoint).")
    trace_url: str | None = Field(
        default=None, description="Link template into the trace UI for reports, e.g. http://jaeger:16686/trace/{trace_id}."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address of the metrics endpoint (0.0.0.0 in a pod, for the scraper)."
    )
    max_payload_bytes: int = Field(default=1_048_576, gt=0, description="Largest message a service accepts.")
    tls_reload_interval_s: float = Field(
        default=10.0, gt=0, description="How often services look for a renewed certificate (reloaded without restart)."
    )
    health_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve /healthz and /readyz on this port (the chart's probes); off when unset."
    )
    fork_server: bool = Field(
        default=True,
        description="Local stack: fork its services from one pre-imported process (each starts in a fraction "
        "of the time and shares the imported pages); off: every service is a fresh interpreter.",
    )
    check_cache: bool = Field(
        default=False,
        description="Reuse a passed scikit-learn check of an identical spec (same allow-list, code and libraries) "
        "recorded in cache_dir instead of importing scikit-learn again. `tweakline run` and its own stack's "
        "scheduler set it; a platform's scheduler, `validate` and the webhook check everything every time.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="The user's tweakline cache (passed checks); default $XDG_CACHE_HOME/tweakline or ~/.cache/tweakline.",
    )
    insecure_plaintext_for_benchmarks: bool = Field(
        default=False,
        description="DEV/BENCHMARK ONLY: run the embedded server and every client without TLS or "
        "per-identity permissions, to measure what mTLS costs (bench/platform.py). Never set in a deployment.",
    )

    @field_validator("pools", mode="before")
    @classmethod
    def _parse_pools(cls, value: Any) -> Any:
        """``default,small,large`` (or a JSON list): valid, distinct names, at least one."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        if not isinstance(value, list) or not value:
            raise ValueError(f"pools: expected at least one pool name, got {value!r:.80}")
        for pool in value:
            if not isinstance(pool, str) or not re.fullmatch(NAME_PATTERN, pool):
                raise ValueError(f"pools: {pool!r:.60} is not a pool name (lower-case letters, digits and '-')")
        if len(set(value)) != len(value):
            raise ValueError(f"pools: {value!r:.80} names a pool twice")
        return value

    def default_pool(self) -> str:
        """Where trials whose tweak file names no pool go: ``default`` if the platform has it, else its first pool."""
        return DEFAULT_POOL if DEFAULT_POOL in self.pools else self.pools[0]

    def principal(self) -> str:
        """The certificate identity this process connects as: a pool's runners hold their pool's own."""
        if self.identity is Identity.TRIAL_RUNNER:
            return runner_identity(self.runner_pool)
        return self.identity.value

    def tls_path(self) -> Path:
        """Directory of this identity's certificate files."""
        return self.tls_dir if self.tls_dir is not None else self.state_dir / "pki" / self.principal()
