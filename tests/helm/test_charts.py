"""Both charts lint clean, render, and every rendered object validates strictly against the
Kubernetes schemas of the oldest and the newest supported minor version.

Helm runs for real (``helm-python-sdk`` embeds Helm's Go SDK); kubernetes-validate holds the
upstream OpenAPI schemas; custom resources (cert-manager, KEDA, Prometheus Operator) are
checked against their upstream CRD schemas vendored in ``crd-schemas/`` (see index.json).
"""

from __future__ import annotations

import json

import pytest
import yaml

import kubernetes_validate  # noqa: E402 - installed by the test extra: a missing one must fail, not skip
import jsonschema  # noqa: E402 - a dependency of kubernetes-validate

from tests.helm.conftest import (
    CASE_IDS,
    CASES,
    CHARTS,
    NAMESPACE,
    RELEASE,
    chart_dir,
    chart_kube_versions,
    crd_schema,
    find,
    has_webhook_identity,
    helm_python,
    render,
    values_of,
)
from tweakline.proto.permissions import CLIENT_IDENTITIES, SERVICE_IDENTITIES, Identity
from tweakline.proto.subjects import CONSUMER_FILTERS, Consumer
from tweakline.cli.services import SERVICES

OLDEST, NEWEST = chart_kube_versions()


@pytest.mark.parametrize("kube_version", [OLDEST, NEWEST])
@pytest.mark.parametrize(("chart", "values_file"), CASES, ids=CASE_IDS)
def test_chart_lints_clean(chart: str, values_file: str | None, kube_version: str) -> None:
    values = values_of(chart, values_file)
    result = helm_python.lint(
        str(chart_dir(chart, values)),
        values,
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{kube_version}",
    )
    assert result["total_charts_linted"] == 1
    # Severity 1 is informational ("icon is recommended"); warnings and errors are not allowed.
    problems = [m for m in result["messages"] if m["severity"] >= 2]
    assert problems == [], problems
    assert not result["errors"], result["errors"]


@pytest.mark.parametrize("kube_version", [OLDEST, NEWEST])
@pytest.mark.parametrize(("chart", "values_file"), CASES, ids=CASE_IDS)
def test_every_rendered_object_validates_strictly(chart: str, values_file: str | None, kube_version: str) -> None:
    manifests = render(chart, values_file)
    assert manifests
    failures = []
    for manifest in manifests:
        doc = manifest.doc
        schema = crd_schema(doc["apiVersion"], doc["kind"])
        try:
            if schema is not None:
                jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
            else:
                # Raises SchemaNotFoundError for a kind it does not know: nothing goes unchecked.
                kubernetes_validate.validate(doc, kube_version, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.utils.SchemaNotFoundError) as exc:
            failures.append(f"{manifest!r}: {getattr(exc, 'message', exc)} at {list(getattr(exc, 'path', []))}")
    assert failures == []


def test_strict_validation_catches_a_misplaced_field() -> None:
    """The check above can fail: an unknown field in a rendered object is reported."""
    deployment = find(render("tweakline"), "Deployment")[0].doc
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["probes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="probes"):
        kubernetes_validate.validate(broken, OLDEST, strict=True)
    certificate = find(render("tweakline"), "Certificate")[0].doc
    broken = json.loads(json.dumps(certificate))
    broken["spec"]["keyUsages"] = ["client auth"]
    with pytest.raises(jsonschema.ValidationError, match="keyUsages"):
        jsonschema.validate(broken, crd_schema("cert-manager.io/v1", "Certificate"))


def test_values_schema_rejects_bad_values_with_the_field_named() -> None:
    with helm_python.Chart.load(str(CHARTS / "tweakline")) as chart:
        with pytest.raises(helm_python.HelmValuesError, match="pullPolicy"):
            chart.render({"image": {"pullPolicy": "Sometimes"}}, name=RELEASE, namespace=NAMESPACE)
        with pytest.raises(helm_python.HelmValuesError, match="replicas"):
            chart.render({"runner": {"replicas": "two"}}, name=RELEASE, namespace=NAMESPACE)


def test_no_nats_at_all_is_a_clear_error() -> None:
    with helm_python.Chart.load(str(CHARTS / "tweakline")) as chart:
        with pytest.raises(helm_python.HelmError, match="externalNats.url"):
            chart.render({"nats": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE)


def test_the_nats_dependency_is_the_vendored_official_chart() -> None:
    chart_yaml = yaml.safe_load((CHARTS / "tweakline" / "Chart.yaml").read_text())
    (dependency,) = [d for d in chart_yaml["dependencies"] if d["name"] == "nats"]
    vendored = yaml.safe_load((CHARTS / "tweakline" / "charts" / "nats" / "Chart.yaml").read_text())
    assert vendored["name"] == "nats" and vendored["version"] == dependency["version"]
    assert "nats-io" in vendored["home"]
    # Helm itself agrees the dependency is satisfied (what `helm dependency list` prints as "ok").
    # Helm renders a chart whose dependency is missing without a word (and without NATS), so
    # check what `helm dependency list` reports: "unpacked" is a vendored directory.
    statuses = {d["name"]: d["status"] for d in helm_python.dependency_list(str(CHARTS / "tweakline"))}
    assert statuses == {"nats": "unpacked"}


# -- what the platform chart deploys ----------------------------------------------------------


def _env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("values_file", [None, "ci/full-values.yaml"])
def test_one_deployment_per_service_running_its_own_identity(values_file: str | None) -> None:
    manifests = render("tweakline", values_file)
    deployments = {m.doc["spec"]["template"]["spec"]["containers"][0]["args"][1]: m for m in find(manifests, "Deployment")}
    # The webhook and the console are optional (<name>.enabled); every other service always runs.
    optional = {"webhook", "console"}
    always = {s for s in SERVICES if s not in optional}
    assert always == {i.value for i in SERVICE_IDENTITIES}
    values = values_of("tweakline", values_file)
    enabled = {name for name in optional if values.get(name, {}).get("enabled")}
    assert set(deployments) == always | enabled
    for service, manifest in deployments.items():
        pod = manifest.doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["service", service]
        env = _env(container)
        assert env["TWEAKLINE_IDENTITY"] == service
        assert str(env["TWEAKLINE_NATS_URL"]).startswith("tls://")
        (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert tls["secret"]["secretName"].endswith(f"-{service}-tls")
        assert {p["name"] for p in container["ports"]} >= {"http"}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "http"
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


@pytest.mark.parametrize(("chart", "values_file"), CASES, ids=CASE_IDS)
def test_pods_run_restricted(chart: str, values_file: str | None) -> None:
    """Every pod of ours: non-root, no privilege escalation, read-only root, no capabilities."""
    pods = []
    for manifest in render(chart, values_file):
        if manifest.template.startswith(f"{chart}/charts/"):
            continue  # the NATS chart's own pods are its maintainers' choice
        spec = manifest.doc.get("spec", {})
        if manifest.kind in ("Deployment", "Job"):
            pods.append((manifest, spec["template"]["spec"]))
        elif manifest.kind == "Pod":
            pods.append((manifest, spec))
    assert pods
    for manifest, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, manifest
        assert pod["automountServiceAccountToken"] is (manifest.name.endswith("-deployer")), manifest
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, manifest
            assert sc["readOnlyRootFilesystem"] is True, manifest
            assert sc["capabilities"]["drop"] == ["ALL"], manifest


@pytest.mark.parametrize("values_file", [None, "ci/full-values.yaml", "ci/external-nats-values.yaml"])
def test_only_the_deployer_gets_api_access(values_file: str | None) -> None:
    manifests = render("tweakline", values_file)
    bindings = find(manifests, "RoleBinding") + find(manifests, "ClusterRoleBinding")
    assert bindings
    subjects = {s["name"] for b in bindings for s in b.doc["subjects"]}
    assert subjects == {f"{RELEASE}-tweakline-deployer"}
    expected = values_of("tweakline", values_file).get("deployer", {}).get("targetNamespaces") or [NAMESPACE]
    if values_of("tweakline", values_file).get("deployer", {}).get("clusterWide"):
        assert [b.kind for b in bindings] == ["ClusterRoleBinding"]
    else:
        assert sorted(b.doc["metadata"]["namespace"] for b in bindings) == sorted(expected)
    for role in find(manifests, "Role") + find(manifests, "ClusterRole"):
        for rule in role.doc["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule


@pytest.mark.parametrize("values_file", [None, "ci/full-values.yaml"])
def test_one_certificate_per_identity_and_the_nats_server(values_file: str | None) -> None:
    manifests = render("tweakline", values_file)
    certificates = {
        m.doc["spec"]["commonName"]: m.doc["spec"]
        for m in find(manifests, "Certificate")
        if not m.doc["spec"].get("isCA") and not m.name.endswith("-console-https")  # the console's HTTPS, not a bus identity
    }
    values = values_of("tweakline", values_file)
    map_file = chart_dir("tweakline", values) / "files" / "nats-authorization.json"
    users = [u["user"].removeprefix("CN=") for u in json.loads(map_file.read_text())["authorization"]["users"]]
    assert {i.value for i in CLIENT_IDENTITIES} <= set(users)
    for optional in (Identity.WEBHOOK, Identity.CONSOLE):
        if not any(m.name.endswith(f"-{optional.value}") for m in find(manifests, "Deployment")):  # not deployed, no certificate
            users.remove(optional.value)
    assert sorted(certificates) == sorted(users + [Identity.NATS_SERVER.value])
    for identity in (i for i in CLIENT_IDENTITIES if i.value in users):
        spec = certificates[identity.value]
        assert "client auth" in spec["usages"] and "server auth" not in spec["usages"]
        assert spec["privateKey"]["rotationPolicy"] == "Always"
        assert _hours(spec["renewBefore"]) < _hours(spec["duration"])
    server = certificates[Identity.NATS_SERVER.value]
    assert "server auth" in server["usages"]
    # The host every service dials is a name in the server certificate (TLS hostname check).
    url = _env(find(manifests, "Deployment")[0].doc["spec"]["template"]["spec"]["containers"][0])["TWEAKLINE_NATS_URL"]
    host = str(url).removeprefix("tls://").rsplit(":", 1)[0]
    assert host in server["dnsNames"]
    # Bootstrap: self-signed Issuer -> CA Certificate -> CA Issuer that signs every leaf.
    (ca,) = [m for m in find(manifests, "Certificate") if m.doc["spec"].get("isCA")]
    ca_issuers = [m for m in find(manifests, "Issuer") if "ca" in m.doc["spec"]]
    assert [i.doc["spec"]["ca"]["secretName"] for i in ca_issuers] == [ca.doc["spec"]["secretName"]]
    assert {c["issuerRef"]["name"] for c in certificates.values()} == {ca_issuers[0].name}


def _hours(duration: str) -> float:
    assert duration.endswith("h"), duration
    return float(duration[:-1])


def test_keda_scales_runners_on_the_trial_queue_from_proto() -> None:
    manifests = render("tweakline", "ci/full-values.yaml")
    (scaled,) = find(manifests, "ScaledObject")
    (trigger,) = scaled.doc["spec"]["triggers"]
    stream, _subject = CONSUMER_FILTERS[Consumer.TRIAL_RUNNERS]
    assert trigger["type"] == "nats-jetstream"
    assert trigger["metadata"]["stream"] == stream.value
    assert trigger["metadata"]["consumer"] == Consumer.TRIAL_RUNNERS.value
    assert trigger["metadata"]["natsServerMonitoringEndpoint"].endswith(":8222")
    assert scaled.doc["spec"]["minReplicaCount"] == 0  # scale to zero when idle
    assert scaled.doc["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-tweakline-trial-runner"
    (runner,) = find(manifests, "Deployment", f"{RELEASE}-tweakline-trial-runner")
    assert "replicas" not in runner.doc["spec"]  # owned by KEDA, not reset by each upgrade
    assert not find(manifests, "HorizontalPodAutoscaler")


def test_hpa_is_the_fallback_without_keda() -> None:
    manifests = render("tweakline")
    (hpa,) = find(manifests, "HorizontalPodAutoscaler")
    assert hpa.doc["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa.doc["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-tweakline-trial-runner"
    assert not find(manifests, "ScaledObject")
    (runner,) = find(manifests, "Deployment", f"{RELEASE}-tweakline-trial-runner")
    assert "replicas" not in runner.doc["spec"]
    requests = runner.doc["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests["cpu"]  # a CPU utilisation target needs a CPU request


def test_fixed_runner_count_without_autoscaling() -> None:
    manifests = render("tweakline", "ci/minimal-values.yaml")
    assert not find(manifests, "HorizontalPodAutoscaler") and not find(manifests, "ScaledObject")
    (runner,) = find(manifests, "Deployment", f"{RELEASE}-tweakline-trial-runner")
    assert runner.doc["spec"]["replicas"] == 3


def test_otel_settings_reach_every_service() -> None:
    for manifest in find(render("tweakline", "ci/full-values.yaml"), "Deployment"):
        env = _env(manifest.doc["spec"]["template"]["spec"]["containers"][0])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://tempo-distributor.observability.svc:4318"
        assert str(env["OTEL_SERVICE_NAME"]).startswith("tweakline-")
        assert "deployment.environment=production" in str(env["OTEL_RESOURCE_ATTRIBUTES"])
    for manifest in find(render("tweakline"), "Deployment"):
        assert _env(manifest.doc["spec"]["template"]["spec"]["containers"][0])["OTEL_SDK_DISABLED"] == "true"


def test_grafana_dashboard_is_valid_json() -> None:
    (config_map,) = [m for m in find(render("tweakline"), "ConfigMap") if m.name.endswith("-dashboard")]
    assert config_map.doc["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map.doc["data"].values()
    dashboard = json.loads(text)
    assert dashboard["panels"]


def test_bus_setup_job_runs_as_admin() -> None:
    (job,) = find(render("tweakline"), "Job")
    (container,) = job.doc["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["bus", "init"]
    assert _env(container)["TWEAKLINE_IDENTITY"] == Identity.ADMIN.value
    (tls,) = [v for v in job.doc["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == f"{RELEASE}-tweakline-admin-tls"
    # A plain Job per revision by default (a Job's template is immutable, so a new name each time).
    assert job.name.endswith("-1") and "annotations" not in job.doc["metadata"]
    (hooked,) = find(render("tweakline", values={"busInit": {"hook": "post-install,pre-upgrade"}}), "Job")
    assert hooked.doc["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"


def test_model_server_runs_serve_with_its_own_read_only_identity() -> None:
    manifests = render("model-server", "ci/full-values.yaml")
    (deployment,) = find(manifests, "Deployment")
    (container,) = deployment.doc["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve", "digits"]
    env = _env(container)
    assert env["TWEAKLINE_IDENTITY"] == Identity.MODEL_SERVER.value
    (certificate,) = find(manifests, "Certificate")
    assert certificate.doc["spec"]["commonName"] == Identity.MODEL_SERVER.value
    assert certificate.doc["spec"]["usages"] == ["digital signature", "client auth"]


def test_optional_parts_switched_off_render_nothing() -> None:
    """The webhook, the console and the dashboard ConfigMap exist only when enabled."""
    manifests = render("tweakline", "ci/minimal-values.yaml")
    assert not [m for m in manifests if "-webhook" in m.name or "-console" in m.name or m.name.endswith("-dashboard")]
    assert not [m for m in manifests if m.kind == "Pod"]  # no helm test


def test_every_setting_the_chart_passes_is_one_the_services_read() -> None:
    from tweakline.deployer.helm import HelmSettings
    from tweakline.model_server.settings import ServeSettings
    from tweakline.webhook.app import WebhookSettings
    from tweakline.console.settings import ConsoleSettings
    from tweakline.runtime.settings import Settings

    known = {
        f"TWEAKLINE_{name.upper()}"
        for model in (Settings, HelmSettings, ServeSettings, WebhookSettings)
        for name in model.model_fields
    } | {f"TWEAKLINE_CONSOLE_{name.upper()}" for name in ConsoleSettings.model_fields}
    for values_file in (None, "ci/full-values.yaml"):
        manifests = render("tweakline", values_file)
        for manifest in find(manifests, "Deployment") + find(manifests, "Job"):
            env = _env(manifest.doc["spec"]["template"]["spec"]["containers"][0])
            unknown = {name for name in env if name.startswith("TWEAKLINE_")} - known
            assert not unknown, f"{manifest!r} sets {sorted(unknown)}, which no Settings field reads"
    deployments = find(render("tweakline"), "Deployment")
    for manifest in deployments:
        env = _env(manifest.doc["spec"]["template"]["spec"]["containers"][0])
        assert env["TWEAKLINE_HEALTH_PORT"] == "8080"  # the port the probes call


def test_model_server_listens_where_the_probes_and_service_point() -> None:
    manifests = render("model-server", values={"service": {"port": 80}})
    (deployment,) = find(manifests, "Deployment")
    (container,) = deployment.doc["spec"]["template"]["spec"]["containers"]
    (http,) = container["ports"]
    env = _env(container)
    assert env["TWEAKLINE_SERVE_PORT"] == str(http["containerPort"]) == "8080"
    assert env["TWEAKLINE_SERVE_HOST"] == "0.0.0.0"  # the kubelet probes the pod IP
    (service,) = find(manifests, "Service")
    assert service.doc["spec"]["ports"][0] == {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}


def test_webhook_runs_as_its_own_identity_with_its_secrets_as_files() -> None:
    manifests = render("tweakline", "ci/full-values.yaml")
    (deployment,) = find(manifests, "Deployment", f"{RELEASE}-tweakline-webhook")
    pod = deployment.doc["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    assert container["args"] == ["service", "webhook"] and env["TWEAKLINE_IDENTITY"] == "webhook"
    assert env["TWEAKLINE_WEBHOOK_HOST"] == "0.0.0.0"
    assert "TWEAKLINE_WEBHOOK_SECRET" not in env and "TWEAKLINE_BITBUCKET_TOKEN" not in env  # files, not env
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "webhook-secrets"]
    assert "subPath" not in mount  # rotated Secrets reach the files
    assert str(env["TWEAKLINE_WEBHOOK_SECRET_FILE"]).startswith(mount["mountPath"] + "/")
    assert str(env["TWEAKLINE_BITBUCKET_TOKEN_FILE"]).startswith(mount["mountPath"] + "/")
    (volume,) = [v for v in pod["volumes"] if v["name"] == "webhook-secrets"]
    assert [src["secret"]["name"] for src in volume["projected"]["sources"]] == ["bitbucket-webhook", "bitbucket"]
    (intake,) = find(manifests, "Service", f"{RELEASE}-tweakline-webhook-intake")
    assert intake.doc["spec"]["ports"][0]["targetPort"] == "webhook"
    (ingress,) = find(manifests, "Ingress", f"{RELEASE}-tweakline-webhook")
    (path,) = ingress.doc["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/webhooks/bitbucket" and path["pathType"] == "Exact"
    assert path["backend"]["service"]["name"] == intake.name


def test_webhook_without_its_secret_or_identity_is_a_clear_error() -> None:
    with helm_python.Chart.load(str(chart_dir("tweakline", {"webhook": {"enabled": True}}))) as chart:
        with pytest.raises(helm_python.HelmError, match="webhook.secret.existingSecret"):
            chart.render({"webhook": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE)
    if not has_webhook_identity():
        with helm_python.Chart.load(str(CHARTS / "tweakline")) as chart:
            with pytest.raises(helm_python.HelmError, match="no .*webhook.* identity"):
                chart.render({"webhook": {"enabled": True, "secret": {"existingSecret": "s"}}}, name=RELEASE, namespace=NAMESPACE)


def test_console_runs_as_its_own_identity_with_its_tokens_from_a_secret_and_https() -> None:
    manifests = render("tweakline", "ci/full-values.yaml")
    (deployment,) = find(manifests, "Deployment", f"{RELEASE}-tweakline-console")
    pod = deployment.doc["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    assert container["args"] == ["service", "console"] and env["TWEAKLINE_IDENTITY"] == "console"
    assert env["TWEAKLINE_CONSOLE_HOST"] == "0.0.0.0" and env["TWEAKLINE_CONSOLE_PORT"] == "8090"
    assert env["TWEAKLINE_CONSOLE_SECURE_COOKIE"] == "true"
    # Tokens only by reference to the Secret: no value in the manifest.
    for name, key in (("READ_TOKEN", "read-token"), ("OPERATOR_TOKEN", "operator-token"), ("SESSION_SECRET", "session-secret")):
        ref = env[f"TWEAKLINE_CONSOLE_{name}"]["secretKeyRef"]
        assert ref == {"name": "tweakline-console", "key": key, "optional": True}
    assert {"name": "console", "containerPort": 8090, "protocol": "TCP"} in container["ports"]
    # HTTPS from a server-auth certificate of the chart's issuer, mounted where the console reads it.
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "console-https"]
    assert env["TWEAKLINE_CONSOLE_TLS_DIR"] == mount["mountPath"] and mount["readOnly"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "console-https"]
    (cert,) = find(manifests, "Certificate", volume["secret"]["secretName"])
    assert cert.doc["spec"]["usages"] == ["digital signature", "server auth"]
    (web,) = find(manifests, "Service", f"{RELEASE}-tweakline-console-web")
    assert "console.ml.example.com" in cert.doc["spec"]["dnsNames"] and web.name in cert.doc["spec"]["dnsNames"]
    assert web.doc["spec"]["ports"][0]["targetPort"] == "console"
    (ingress,) = [m for m in find(manifests, "Ingress") if m.name.endswith("-console")]
    (path,) = ingress.doc["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/" and path["backend"]["service"] == {"name": web.name, "port": {"name": "console"}}


def test_console_without_its_secret_is_a_clear_error() -> None:
    with helm_python.Chart.load(str(CHARTS / "tweakline")) as chart:
        with pytest.raises(helm_python.HelmError, match="console.secret.existingSecret"):
            chart.render({"console": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE)
