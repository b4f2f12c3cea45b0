"""The helm target through the real Helm engine (helm-python-sdk), as far as it runs without a cluster.

- the model-server chart lints and renders with exactly the values the target passes;
- a client-side dry run of the install goes through the engine's real install path;
- the flags of upgrade --install / rollback are accepted by the engine's real signatures;
- with no cluster, a deployment fails at once with a clear error (never a hang);
- a failed upgrade makes the deployer roll the release back and record why (real NATS).
"""

from __future__ import annotations

import inspect
import uuid
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tweakline.deployer.control import releases
from tweakline.deployer.handlers import Deployer
from tweakline.deployer.helm import HelmDeployError, HelmTarget, SdkEngine, chart_values, fullname
from tweakline.deployer.releases import record_promotion
from tweakline.proto.messages import ArtifactRef, Decision, DeploymentStatus, EvaluationCompleted, ReleaseRevision
from tweakline.proto.permissions import Identity
from tweakline.proto.tweakfile import DeploySpec
from tweakline.runtime.bus import connect
from tweakline.runtime.objects import put_artifact

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "model-server"
SHA = "3f" * 32


def spec(**extra: Any) -> DeploySpec:
    values = {"replicas": 3, "nats": {"url": "tls://platform-nats.tweakline:4222"}, "model": {"revision": 99}}
    return DeploySpec(target="helm", release="wine", namespace="ml", values=values, **extra)


def revision(n: int = 3, helm_rev: int | None = None) -> ReleaseRevision:
    return ReleaseRevision(
        revision=n,
        experiment_id=f"wine-{n}",
        artifact=ArtifactRef(bucket="tweakline-artifacts", name=f"models/wine-{n}.skops", sha256=SHA, size=10),
        target_revision=helm_rev,
    )


def deployment(manifests: dict[str, str] | str) -> dict:
    if isinstance(manifests, str):
        text = manifests
    else:  # render() also returns NOTES.txt: only the .yaml templates are manifests
        text = "\n---\n".join(v for k, v in manifests.items() if k.endswith(".yaml"))
    docs = [d for d in yaml.safe_load_all(text) if d]
    return next(d for d in docs if d["kind"] == "Deployment")


def env_of(dep: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_values_carry_the_model_reference_over_the_users_values() -> None:
    values = chart_values(spec(), revision())
    assert values["model"] == {"release": "wine", "revision": 3, "artifact": "models/wine-3.skops", "sha256": SHA}
    assert values["replicas"] == 3 and values["nats"]["url"] == "tls://platform-nats.tweakline:4222"
    assert fullname(spec()) == "wine-model-server"
    assert HelmTarget().endpoint(spec()) == "http://wine-model-server.ml.svc:8080"


def test_model_server_chart_lints_and_renders_with_the_values_passed() -> None:
    values = chart_values(spec(), revision())
    lint = helm_python.lint(str(CHART), values, strict=True, namespace="ml")
    assert not [m for m in lint["messages"] if m["severity"] >= 2], lint["messages"]
    with helm_python.Chart.load(str(CHART)) as chart:
        dep = deployment(chart.render(values, name="wine", namespace="ml"))
    env = env_of(dep)
    assert env["TWEAKLINE_MODEL_RELEASE"] == "wine"
    assert env["TWEAKLINE_MODEL_REVISION"] == "3"  # the user's 99 is overridden by the promoted revision
    assert env["TWEAKLINE_MODEL_ARTIFACT"] == "models/wine-3.skops"
    assert env["TWEAKLINE_MODEL_SHA256"] == SHA
    assert env["TWEAKLINE_NATS_URL"] == "tls://platform-nats.tweakline:4222"
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"] == ["serve", "wine"]


def test_client_side_dry_run_through_the_real_engine() -> None:
    result = HelmTarget().render(spec(), revision())
    assert result["name"] == "wine" and result["namespace"] == "ml"
    assert result["status"] == "pending-install" and result["chart_name"] == "model-server"
    assert result["labels"] == {"tweakline.io/revision": "3"}
    assert env_of(deployment(result["manifest"]))["TWEAKLINE_MODEL_SHA256"] == SHA


class Recorder:
    """A HelmEngine that records calls; its flags are bound against the real SDK signatures."""

    def __init__(self, exists: bool = False, fail_upgrade: str | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.exists = exists
        self.fail_upgrade = fail_upgrade
        self.helm_revision = 1

    def _check(self, method: str, *args: Any, **kwargs: Any) -> None:
        # TypeError if a flag name or argument does not exist in the engine's API
        inspect.signature(getattr(helm_python.Config, method)).bind(None, *args, **kwargs)
        self.calls.append((method, args, kwargs))

    def check_reachable(self) -> None:
        self.calls.append(("check_reachable", (), {}))

    def release_exists(self, name: str) -> bool:
        return self.exists

    def install(self, chart, name, values, **flags):
        self._check("install", chart, name, values, **flags)
        self.exists = True
        return {"revision": self.helm_revision}

    def upgrade(self, chart, name, values, **flags):
        self._check("upgrade", chart, name, values, **flags)
        if self.fail_upgrade:
            raise helm_python.HelmReleaseError(self.fail_upgrade)
        self.helm_revision += 1
        return {"revision": self.helm_revision}

    def rollback(self, name, **flags):
        self._check("rollback", name, **flags)


class RecordingTarget(HelmTarget):
    recorder = Recorder()

    def engine(self, spec):
        return self.recorder


async def test_upgrade_install_and_rollback_flags() -> None:
    target = RecordingTarget()
    target.recorder = Recorder()
    first = await target.deploy(spec(), None, revision(1))
    second = await target.deploy(spec(), None, revision(2))
    assert (first, second) == (1, 2)
    (_, (chart, name, values), install), (_, _, upgrade) = [c for c in target.recorder.calls if c[0] != "check_reachable"]
    assert chart == str(CHART) and name == "wine" and values["model"]["revision"] == 1
    assert install == {
        "namespace": "ml",
        "wait": "watcher",
        "timeout": 300,
        "rollback_on_failure": True,
        "description": "tweakline revision 1 (experiment wine-1)",
        "labels": {"tweakline.io/revision": "1"},
    }
    assert upgrade["rollback_on_failure"] is True and upgrade["wait"] == "watcher"
    assert upgrade["cleanup_on_fail"] is True and upgrade["max_history"] == 20
    await target.rollback(spec(), None, revision(1, helm_rev=1))
    assert target.recorder.calls[-1] == ("rollback", ("wine",), {"version": 1, "wait": "watcher", "timeout": 300})
    with pytest.raises(HelmDeployError, match="no recorded Helm revision"):
        await target.rollback(spec(), None, revision(1))


async def test_a_namespace_outside_the_deployers_rbac_is_refused_before_helm_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWEAKLINE_DEPLOY_NAMESPACES", "models, staging")
    target = RecordingTarget()
    target.recorder = Recorder()
    with pytest.raises(HelmDeployError, match=r"deploy.namespace: the deployer may install into models, staging .* got 'ml'"):
        await target.deploy(spec(), None, revision(1))
    assert target.recorder.calls == []  # nothing reached the cluster
    monkeypatch.setenv("TWEAKLINE_DEPLOY_NAMESPACES", "ml")
    target = RecordingTarget()  # settings are read once, when the deployer starts
    target.recorder = Recorder()
    assert await target.deploy(spec(), None, revision(1)) == 1


@pytest.mark.timeout(60)
async def test_no_cluster_fails_fast_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert isinstance(HelmTarget().engine(spec()), SdkEngine)
    with pytest.raises(
        HelmDeployError, match=r"Kubernetes cluster not reachable \(namespace ml; kubeconfig .*kubeconfig\): .*127.0.0.1:1"
    ):
        await HelmTarget().deploy(spec(), None, revision())


async def test_failed_upgrade_is_rolled_back_and_recorded(nats, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(HelmTarget, "engine", lambda self, spec: recorder)
    release = f"helm-{uuid.uuid4().hex[:6]}"
    nc = await connect(nats.settings(Identity.DEPLOYER), "test")
    try:

        class Ctx:  # what the handler uses of ServiceContext, on a real connection
            js = nc.jetstream()
            settings = nats.settings(Identity.DEPLOYER)

        deployer = Deployer(Ctx())
        await deployer.start()
        ok = await deployer._deploy(helm_evaluation(release, 1, await stored_model(nats, release, 1)))
        assert ok == (DeploymentStatus.DEPLOYED, 1, "revision 1 is live (not verified)")
        recorder.fail_upgrade = "context deadline exceeded: 0 of 2 pods ready"
        failed = await deployer._deploy(helm_evaluation(release, 2))
        assert failed[0] is DeploymentStatus.ROLLED_BACK and failed[1] == 1
        assert "deployment failed" in failed[2] and "0 of 2 pods ready" in failed[2]
        assert recorder.calls[-1] == ("rollback", (release,), {"version": 1, "wait": "watcher", "timeout": 300})
        history = (await (await releases(nc.jetstream())).get(release))[0]
        assert history.current == 1 and history.revision(1).target_revision == 1
        assert history.events[-1].action.value == "auto_rolled_back" and "0 of 2 pods ready" in history.events[-1].reason
    finally:
        await nc.close()


async def stored_model(nats, release: str, n: int) -> ArtifactRef:
    """A model really stored by the evaluator identity: rollbacks hash-check what they restore."""
    nc = await connect(nats.settings(Identity.EVALUATOR), "test-evaluator")
    try:
        return await put_artifact(nc.jetstream(), f"models/{release}-{n}.skops", f"model {release} {n}".encode())
    finally:
        await nc.close()


def helm_evaluation(release: str, n: int, artifact: ArtifactRef | None = None) -> EvaluationCompleted:
    deploy = DeploySpec(target="helm", release=release, namespace="ml", verify={"enabled": False})
    return EvaluationCompleted(
        experiment_id=f"{release}-{n}",
        decision=Decision.PROMOTE,
        release=release,
        target="helm",
        deploy=deploy,
        artifact=artifact or ArtifactRef(bucket="tweakline-artifacts", name=f"models/{release}-{n}.skops", sha256=SHA, size=1),
        features=["a"],
    )


def test_cli_rollback_of_a_helm_release_without_a_cluster_is_a_clear_error(nats, tmp_path: Path) -> None:
    import asyncio

    from tests.conftest import run_cli

    release = f"helm-{uuid.uuid4().hex[:6]}"

    async def record_two() -> None:
        nc = await connect(nats.settings(Identity.DEPLOYER), "test")
        try:
            store = await releases(nc.jetstream())
            for n in (1, 2):
                await record_promotion(
                    store, release, "helm", helm_evaluation(release, n, await stored_model(nats, release, n)), "SVC"
                )
        finally:
            await nc.close()

    asyncio.run(record_two())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    env = {"TWEAKLINE_NATS_URL": nats.url, "TWEAKLINE_STATE_DIR": str(nats.pki.parent), "KUBECONFIG": str(kubeconfig)}
    done = run_cli("rollback", release, env=env, timeout=120)
    # revision 1 never reached a cluster (no Helm revision recorded): said plainly, history unchanged
    assert done.code == 2 and "has no recorded Helm revision" in done.stderr and "Traceback" not in done.stderr
    shown = run_cli("history", release, "--json", env=env)
    assert shown.json()["current"] == 2


async def test_helm_rollback_without_a_cluster_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    with pytest.raises(HelmDeployError, match="Kubernetes cluster not reachable"):
        await HelmTarget().rollback(spec(), None, revision(1, helm_rev=4))
