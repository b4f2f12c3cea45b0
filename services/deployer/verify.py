"""Post-deploy verification: score the live endpoint on the probe rows before a promotion is final.

Why the deployer and not the evaluator: the deployer owns the release and its rollback and
knows the target's endpoint, so the check runs inside the deployment step and a failure is
rolled back before ``DeploymentCompleted`` is published: the CLI and the history see one final
outcome, with no extra round trip or consumer on the bus. The check reuses the evaluator's
gate code (:func:`tweakline.promotion.gate.threshold_checks`) on the predictions the live
server returns, so "below the gate" means the same thing in both places.

The check fails when the new revision does not become live in time, a request fails (beyond
``verify.max_error_rate``), a request is slower than ``verify.max_latency_ms``, or the metrics
of the served predictions miss a gate threshold.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from tweakline.ml.metrics import compute_metrics
from tweakline.promotion.gate import threshold_checks
from tweakline.promotion.stats import Outputs, Replay
from tweakline.proto.messages import PROBE_HEADER
from tweakline.proto.tweakfile import GateSpec, VerifySpec

# Metrics computable from predicted labels or values alone (the server returns no probabilities).
PREDICTION_METRICS = frozenset(
    {"accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "r2", "rmse", "mae"}
)
BATCH_ROWS = 10


@dataclass
class VerifyResult:
    """The verdict of one post-deploy check, with what it measured."""

    ok: bool
    reason: str
    requests: int = 0
    errors: int = 0
    max_latency_ms: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


async def wait_live(client: httpx.AsyncClient, revision: int, timeout: float) -> str | None:
    """Wait until ``/version`` reports ``revision``; the reason it did not, or ``None``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            response = await client.get("/version")
            last = response.json().get("revision")
            if last == revision:
                return None
        except (httpx.HTTPError, ValueError) as exc:
            last = f"unreachable ({type(exc).__name__}: {exc})"
        await asyncio.sleep(0.2)
    return f"revision {revision} did not become live within {timeout:.0f}s (the server reports {last})"


async def verify_live(
    endpoint: str, probe: dict[str, Any], gate: GateSpec | None, verify: VerifySpec, revision: int
) -> VerifyResult:
    """Send the probe rows to ``endpoint``'s ``/predict`` and judge errors, latency and metrics."""
    timeout = httpx.Timeout(max(5.0, verify.max_latency_ms / 1000 * 5))
    # Marked as the check's own, so the live figures the watch judges stay the traffic's.
    headers = {PROBE_HEADER: "post-deploy-check"}
    async with httpx.AsyncClient(base_url=endpoint.rstrip("/"), timeout=timeout, headers=headers) as client:
        not_live = await wait_live(client, revision, verify.timeout)
        if not_live is not None:
            return VerifyResult(False, not_live)
        rows, targets = probe["rows"], probe["targets"]
        predictions: list[Any] = []
        requests = errors = 0
        slowest = 0.0
        first_error = ""
        for start in range(0, len(rows), BATCH_ROWS):
            batch = rows[start : start + BATCH_ROWS]
            requests += 1
            began = time.perf_counter()
            try:
                response = await client.post("/predict", json={"rows": batch})
                elapsed = (time.perf_counter() - began) * 1000
                body = response.json()
                if response.status_code != 200 or body.get("revision") != revision:
                    raise ValueError(f"HTTP {response.status_code}: {body.get('error', body)}")
                predictions.extend(body["predictions"])
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                elapsed = (time.perf_counter() - began) * 1000
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                predictions.extend([None] * len(batch))
            slowest = max(slowest, elapsed)
    result = VerifyResult(True, "", requests=requests, errors=errors, max_latency_ms=round(slowest, 2))
    if errors / max(1, requests) > verify.max_error_rate:
        result.ok = False
        result.reason = f"{errors} of {requests} probe requests failed (allowed {verify.max_error_rate:.0%}): {first_error}"
        return result
    if slowest > verify.max_latency_ms:
        result.ok = False
        result.reason = f"slowest probe request took {slowest:.1f} ms, above the {verify.max_latency_ms:g} ms limit"
        return result
    answered = [i for i, p in enumerate(predictions) if p is not None]
    thresholds = {m: v for m, v in (gate.thresholds if gate else {}).items() if m in PREDICTION_METRICS}
    if thresholds and answered:
        y = np.asarray([targets[i] for i in answered])
        pred = np.asarray([predictions[i] for i in answered])
        idx = np.arange(len(answered))
        result.metrics = compute_metrics(Replay(Outputs(pred)), idx, y, list(thresholds), probe["task"])
        failed = [c.detail for c in threshold_checks(thresholds, result.metrics) if not c.passed]
        if failed:
            result.ok = False
            result.reason = f"live metrics on {len(answered)} probe rows below the gate: " + "; ".join(failed)
            return result
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    result.reason = (
        f"post-deploy check passed on {len(rows)} probe rows: {requests} requests, no failure, "
        f"slowest {slowest:.1f} ms" + (f", {shown}" if shown else "")
    )
    return result


def load_probe(data: bytes) -> dict[str, Any]:
    """The probe set written by the evaluator."""
    return json.loads(data)
