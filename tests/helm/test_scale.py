"""The chart's scale-out defaults: a 3-node NATS cluster with replicated storage, scheduler
replicas with a rolling update and a PodDisruptionBudget; and a single-node values file."""

from __future__ import annotations

from tests.helm.conftest import find, render


def _env(manifest, container: str) -> dict[str, str]:
    pod = manifest.doc["spec"]["template"]["spec"]
    (found,) = [c for c in pod["containers"] if c["name"] == container]
    return {e["name"]: e.get("value") for e in found.get("env", [])}


def test_defaults_run_three_nats_nodes_with_replicated_storage() -> None:
    manifests = render("tweakline")
    (statefulset,) = find(manifests, "StatefulSet")
    assert statefulset.doc["spec"]["replicas"] == 3
    (job,) = find(manifests, "Job")
    assert _env(job, "bus-init")["TWEAKLINE_STREAM_REPLICAS"] == "3"


def test_defaults_run_several_schedulers_with_a_rolling_update_and_a_disruption_budget() -> None:
    manifests = render("tweakline")
    (scheduler,) = [m for m in find(manifests, "Deployment") if m.name.endswith("-scheduler")]
    assert scheduler.doc["spec"]["replicas"] >= 2
    strategy = scheduler.doc["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0
    (pdb,) = [m for m in find(manifests, "PodDisruptionBudget") if m.name.endswith("-scheduler")]
    assert pdb.doc["spec"]["minAvailable"] == 1
    assert pdb.doc["spec"]["selector"]["matchLabels"] == scheduler.doc["spec"]["selector"]["matchLabels"]


def test_single_node_values_run_one_nats_server_and_one_scheduler() -> None:
    manifests = render("tweakline", "ci/single-node-values.yaml")
    (statefulset,) = find(manifests, "StatefulSet")
    assert statefulset.doc["spec"]["replicas"] == 1
    (job,) = find(manifests, "Job")
    assert _env(job, "bus-init")["TWEAKLINE_STREAM_REPLICAS"] == "0"  # 0: whatever the server allows (1)
    assert not [m for m in find(manifests, "PodDisruptionBudget") if m.name.endswith("-scheduler")]
