"""Runner pools in the chart: a Deployment, a certificate identity and a scaler per pool, from proto's names."""

from __future__ import annotations

import json

import pytest

from tests.helm.conftest import RELEASE, find, render
from tweakline.proto.permissions import Identity, nats_authorization, permission_map, runner_identity
from tweakline.proto.subjects import Stream, pool_consumer

POOLS = ["default", "large", "small"]  # helm/tweakline/ci/pools-values.yaml


def _env(deployment) -> dict[str, str]:
    (container,) = deployment.doc["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def _name(pool: str) -> str:
    return f"{RELEASE}-tweakline-{runner_identity(pool)}"


def test_each_pool_is_a_deployment_of_runners_of_that_pool_with_its_own_settings() -> None:
    manifests = render("tweakline", "ci/pools-values.yaml")
    for pool in POOLS:
        (deployment,) = find(manifests, "Deployment", _name(pool))
        env = _env(deployment)
        pod = deployment.doc["spec"]["template"]["spec"]
        assert pod["containers"][0]["args"] == ["service", "trial-runner"]
        assert env["TWEAKLINE_IDENTITY"] == Identity.TRIAL_RUNNER.value
        # the default pool's runners need no TWEAKLINE_RUNNER_POOL (its default)
        assert env.get("TWEAKLINE_RUNNER_POOL", "default") == pool
        assert env["TWEAKLINE_POOLS"] == "default,large,small"
        # its own certificate: the identity allowed its own pool's consumer only
        (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert tls["secret"]["secretName"] == f"{_name(pool)}-tls"
        (certificate,) = find(manifests, "Certificate", _name(pool))
        assert certificate.doc["spec"]["commonName"] == runner_identity(pool)
        # selectors never overlap: each Deployment owns its own pods
        assert deployment.doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == runner_identity(pool)
    large = find(manifests, "Deployment", _name("large"))[0].doc["spec"]
    pod = large["template"]["spec"]
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "m6i.4xlarge"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "8", "memory": "32Gi"}
    assert _env(find(manifests, "Deployment", _name("large"))[0])["TWEAKLINE_RUNNER_THREADS"] == "8"
    assert "replicas" not in large  # KEDA owns it
    assert find(manifests, "Deployment", _name("small"))[0].doc["spec"]["replicas"] == 2  # no scaler: fixed
    # every other service knows the platform's pools too (the scheduler validates against them)
    (scheduler,) = find(manifests, "Deployment", f"{RELEASE}-tweakline-scheduler")
    assert _env(scheduler)["TWEAKLINE_POOLS"] == "default,large,small"


def test_each_scaled_pool_scales_on_its_own_consumer() -> None:
    manifests = render("tweakline", "ci/pools-values.yaml")
    scaled = {m.name: m.doc for m in find(manifests, "ScaledObject")}
    assert set(scaled) == {_name("default"), _name("large")}  # "small" has a fixed count
    for pool in ("default", "large"):
        doc = scaled[_name(pool)]
        (trigger,) = doc["spec"]["triggers"]
        assert trigger["metadata"]["stream"] == Stream.TRIALS.value
        assert trigger["metadata"]["consumer"] == pool_consumer(pool)
        assert doc["spec"]["scaleTargetRef"]["name"] == _name(pool)
    assert scaled[_name("large")]["spec"]["maxReplicaCount"] == 4
    assert scaled[_name("large")]["spec"]["triggers"][0]["metadata"]["lagThreshold"] == "1"
    assert scaled[_name("default")]["spec"]["maxReplicaCount"] == 10  # the runner's own setting


def test_the_nats_map_has_each_pools_runner_user_as_proto_renders_it() -> None:
    manifests = render("tweakline", "ci/pools-values.yaml")
    (config,) = [m for m in find(manifests, "ConfigMap") if m.name.endswith("nats-auth")]
    rendered = json.loads(config.doc["data"]["authorization.json"])["authorization"]["users"]
    expected = nats_authorization(permission_map(POOLS))["authorization"]["users"]
    assert sorted(rendered, key=lambda u: u["user"]) == sorted(expected, key=lambda u: u["user"])


def test_a_bad_pool_name_is_refused_by_the_values_schema() -> None:
    import helm_python

    with pytest.raises(helm_python.HelmError, match="'Large_Nodes' does not match pattern"):
        render("tweakline", values={"runner": {"pools": {"Large_Nodes": {}}}})
    with pytest.raises(helm_python.HelmError, match="/runner/pools/large"):
        render("tweakline", values={"runner": {"pools": {"large": {"surprise": 1}}}})
