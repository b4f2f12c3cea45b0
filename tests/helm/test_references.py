"""Every name one rendered object uses to reach another resolves — inside each chart, and
between the platform chart and the model-server releases its deployer installs.

The cross-chart case renders the platform chart under a release name and namespace other than
the defaults, builds the deployer's typed settings from the environment that render gives the
deployer's container, asks the helm target for the values it would install, renders the
model-server chart with them, and resolves the model server's Secrets, ConfigMaps, Services,
ServiceAccounts and image against the objects the two charts create.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import yaml

from tests.helm.conftest import CASE_IDS, CASES, CHARTS, NAMESPACE, Manifest, chart_dir, find, helm_python, values_of
from tests.helm.references import images, service_of_url, unresolved
from tweakline.deployer.helm import HelmDeployError, HelmSettings, HelmTarget, chart_values
from tweakline.proto.messages import ArtifactRef, ReleaseRevision
from tweakline.proto.tweakfile import DeploySpec

# not the docs' "tl"/"ml-platform" and not the model-server chart's defaults ("tweakline", "default")
PLATFORM_RELEASE, PLATFORM_NS = "acme-mlops", "mlops-prod"
MODEL_RELEASE = "churn"


def render_as(chart: str, values: dict[str, Any], name: str, namespace: str) -> list[Manifest]:
    """Every object of a render under the given release name and namespace."""
    with helm_python.Chart.load(str(chart_dir(chart, values))) as loaded:
        files = loaded.render(values, name=name, namespace=namespace, is_install=True)
    return [
        Manifest(template, doc)
        for template, text in sorted(files.items())
        if not template.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def provided_by_the_user(values: dict[str, Any], namespace: str) -> set[tuple[str, str | None, str]]:
    """Objects the values name as already existing: pull secrets, the external issuer, the
    webhook's secrets, the model server's certificate Secret of a hand install."""
    image = values.get("image") or {}
    out: set[tuple[str, str | None, str]] = {("Secret", namespace, s) for s in image.get("pullSecrets") or []}
    issuer = (values.get("pki") or {}).get("issuerRef") or ((values.get("tls") or {}).get("certificate") or {}).get(
        "issuerRef"
    )
    if issuer and issuer.get("name"):
        out.add((issuer.get("kind", "ClusterIssuer"), None, issuer["name"]))
    def walk(node: Any) -> None:  # env valueFrom refs and existingSecret names anywhere in the values
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("secretKeyRef", "configMapKeyRef") and isinstance(value, dict):
                    out.add(("Secret" if key == "secretKeyRef" else "ConfigMap", namespace, value["name"]))
                elif key == "existingSecret" and isinstance(value, str) and value:
                    out.add(("Secret", namespace, value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(values)
    return out


def external_nats(values: dict[str, Any]) -> set[tuple[str, str | None, str]]:
    """The Service of an external NATS (``externalNats.url``), which no chart here creates."""
    url = (values.get("externalNats") or {}).get("url")
    target = service_of_url(url, NAMESPACE) if url else None
    return {("Service", target[0], target[1])} if target else set()


@pytest.mark.parametrize(("chart", "values_file"), CASES, ids=CASE_IDS)
def test_every_reference_inside_a_chart_resolves(chart: str, values_file: str | None) -> None:
    values = values_of(chart, values_file)
    manifests = render_as(chart, values, PLATFORM_RELEASE, PLATFORM_NS)
    external = provided_by_the_user(values, PLATFORM_NS) | external_nats(values)
    if chart == "model-server" and not ((values.get("tls") or {}).get("certificate") or {}).get("enabled"):
        # installed by hand, the chart mounts the platform's Secret named in tls.secretName
        external.add(("Secret", PLATFORM_NS, values.get("tls", {}).get("secretName", "tweakline-model-server-tls")))
        external.add(("Service", PLATFORM_NS, "tweakline-nats"))
    if chart == "model-server":
        url = (values.get("nats") or {}).get("url")
        target = service_of_url(url, PLATFORM_NS) if url else None
        if target:
            external.add(("Service", *target))
    missing = unresolved(manifests, PLATFORM_NS, external=external)
    assert not missing, "\n".join(f"{r.source} -> {r.kind}/{r.name} in {r.namespace}" for r in missing)


def test_the_reference_check_catches_a_dangling_name() -> None:
    """The check can fail: a Secret name no object creates is reported with who refers to it."""
    manifests = render_as("model-server", {"tls": {"secretName": "nobody-made-this"}}, MODEL_RELEASE, PLATFORM_NS)
    missing = unresolved(manifests, PLATFORM_NS, external={("Service", PLATFORM_NS, "tweakline-nats")})
    assert [(r.kind, r.name) for r in missing] == [("Secret", "nobody-made-this")]
    assert "Deployment/churn-model-server" in missing[0].source


def revision() -> ReleaseRevision:
    artifact = ArtifactRef(bucket="tweakline-artifacts", name="models/churn-4.skops", sha256="ab" * 32, size=10)
    return ReleaseRevision(revision=4, experiment_id=f"churn-{uuid.uuid4().hex[:6]}", artifact=artifact)


def deployer_settings(platform: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> HelmSettings:
    """The deployer's typed settings, read from the environment the platform chart gives its container."""
    (deployer,) = [m for m in find(platform, "Deployment") if m.name.endswith("-deployer")]
    (container,) = deployer.doc["spec"]["template"]["spec"]["containers"]
    for var in container["env"]:
        if var["name"].startswith("TWEAKLINE_") and "value" in var:
            monkeypatch.setenv(var["name"], var["value"])
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return HelmSettings()


def model_server_of(platform_values: dict[str, Any], namespace: str, monkeypatch: pytest.MonkeyPatch):
    platform = render_as("tweakline", platform_values, PLATFORM_RELEASE, PLATFORM_NS)
    target = HelmTarget(helm=deployer_settings(platform, monkeypatch))
    spec = DeploySpec(target="helm", release=MODEL_RELEASE, namespace=namespace, values={"replicas": 3})
    values = target.values(spec, revision())
    return platform, values, render_as("model-server", values, MODEL_RELEASE, namespace)


PLATFORM_VALUE_FILES = [None, "ci/full-values.yaml", "ci/external-nats-values.yaml"]


@pytest.mark.parametrize("values_file", PLATFORM_VALUE_FILES, ids=[v or "defaults" for v in PLATFORM_VALUE_FILES])
def test_the_model_server_the_deployer_installs_resolves_against_its_platform(
    values_file: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform_values = values_of("tweakline", values_file)
    platform, values, model_server = model_server_of(platform_values, PLATFORM_NS, monkeypatch)
    assert values["replicas"] == 3 and values["model"]["revision"] == 4  # the tweak file's and the model's
    external = provided_by_the_user(platform_values, PLATFORM_NS) | external_nats(platform_values)
    missing = unresolved(model_server, PLATFORM_NS, among=platform + model_server, external=external)
    assert not missing, "\n".join(f"{r.source} -> {r.kind}/{r.name} in {r.namespace}" for r in missing)
    (deployment,) = find(model_server, "Deployment")
    pod = deployment.doc["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"]} <= images(platform)  # the platform's own image
    platform_pod = find(platform, "Deployment")[0].doc["spec"]["template"]["spec"]
    assert pod.get("imagePullSecrets") == platform_pod.get("imagePullSecrets")


def test_a_model_server_in_another_namespace_gets_its_certificate_from_the_cluster_issuer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    platform_values = values_of("tweakline", "ci/external-nats-values.yaml")
    platform, values, model_server = model_server_of(platform_values, "team-models", monkeypatch)
    (certificate,) = find(model_server, "Certificate")
    assert certificate.doc["spec"]["issuerRef"]["name"] == "platform-ca"
    assert certificate.doc["spec"]["commonName"] == "model-server"
    external = provided_by_the_user(platform_values, "team-models") | external_nats(platform_values)
    missing = unresolved(model_server, "team-models", among=platform + model_server, external=external)
    assert not missing, "\n".join(f"{r.source} -> {r.kind}/{r.name} in {r.namespace}" for r in missing)


def test_another_namespace_with_the_platforms_own_ca_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    platform = render_as("tweakline", {}, PLATFORM_RELEASE, PLATFORM_NS)
    target = HelmTarget(helm=deployer_settings(platform, monkeypatch))
    spec = DeploySpec(target="helm", release=MODEL_RELEASE, namespace="team-models")
    with pytest.raises(HelmDeployError, match=r"deploy.namespace: 'team-models' is not the platform's namespace"):
        target.values(spec, revision())


def test_the_model_reference_alone_does_not_resolve() -> None:
    """What the deployer passed before it read the platform's settings (``model.*`` only):
    the model server points at a Service, a Secret and an image the platform never made."""
    platform = render_as("tweakline", values_of("tweakline", "ci/full-values.yaml"), PLATFORM_RELEASE, PLATFORM_NS)
    spec = DeploySpec(target="helm", release=MODEL_RELEASE, namespace=PLATFORM_NS)
    model_server = render_as("model-server", chart_values(spec, revision()), MODEL_RELEASE, PLATFORM_NS)
    missing = unresolved(model_server, PLATFORM_NS, among=platform + model_server)
    assert {(r.kind, r.name) for r in missing} == {("Secret", "tweakline-model-server-tls"), ("Service", "tweakline-nats")}
    (deployment,) = find(model_server, "Deployment")
    assert deployment.doc["spec"]["template"]["spec"]["containers"][0]["image"] not in images(platform)
    assert CHARTS.is_dir()
