"""The Helm target: one Helm release of ``helm/model-server`` per model release, driven through the real Helm engine.

The engine is the ``helm-python-sdk`` wheel (Helm v4's Go SDK through ctypes; no ``helm``
binary, no Go toolchain). Each promotion is ``upgrade --install`` with ``wait`` and
``rollback_on_failure`` (Helm v4's name for ``--atomic``). The chart's values are what the
platform release this deployer belongs to passes it (image, pull secrets, the NATS Service, the
model server's certificate Secret or issuer: :meth:`HelmSettings.platform_values`), then the
tweak file's ``deploy.values``, then the model reference (``model.*``); a tweakline rollback is a Helm rollback to the Helm revision recorded
for that tweakline revision.

With no cluster reachable every operation fails at once with a clear error (the reachability
check is bounded by :data:`REACHABILITY_TIMEOUT_S`), never a hang.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any, Protocol

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tweakline.deployer.target import DeployTarget
from tweakline.errors import ConfigurationError, TweaklineError
from tweakline.proto.messages import ReleaseHistory, ReleaseRevision
from tweakline.proto.tweakfile import DeploySpec
from tweakline.runtime.settings import Settings

REPO_CHART = Path(__file__).resolve().parents[2] / "helm" / "model-server"
IMAGE_CHART = Path("/usr/share/tweakline/charts/model-server")  # where the Dockerfile puts it


class HelmDeployError(TweaklineError):
    """A Helm operation failed (cluster unreachable, failed upgrade, unknown release)."""


class HelmSettings(BaseSettings):
    """Where the deployer finds the model-server chart (the platform chart sets it)."""

    model_config = SettingsConfigDict(env_prefix="TWEAKLINE_", extra="ignore", protected_namespaces=())

    model_server_chart: Path | None = Field(
        default=None, description="Path of helm/model-server; default: the repository's, else the image's."
    )

    kubeconfig: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("TWEAKLINE_KUBECONFIG", "KUBECONFIG"),
        description="kubeconfig file; default: Helm's own discovery (in-cluster service account).",
    )
    deploy_namespaces: str | None = Field(
        default=None,
        description="Comma-separated namespaces the deployer may install into (the chart's RBAC); unset: any.",
    )

    # What the model-server chart needs from the platform release it belongs to. The platform
    # chart sets these on the deployer (helm/tweakline/templates/deployer.yaml) from its own
    # names, so a model server always points at the Service, Secret and image that release made.
    model_server_image_registry: str = Field(default="", description="Registry of the platform's image.")
    model_server_image_repository: str | None = Field(
        default=None, description="Repository of the platform's image (the variant without the Helm SDK)."
    )
    model_server_image_tag: str = Field(default="", description="Tag of the platform's image.")
    model_server_image_digest: str = Field(default="", description="Digest of the platform's image; wins over the tag.")
    model_server_image_pull_policy: str = Field(default="", description="The platform's image pull policy.")
    model_server_image_pull_secrets: list[str] = Field(
        default_factory=list, description="The platform's image pull Secrets (a JSON list of names)."
    )
    model_server_nats_url: str | None = Field(default=None, description="URL of the platform's NATS Service.")
    model_server_tls_secret: str | None = Field(
        default=None, description="The platform's Secret with the model-server identity's certificate and CA."
    )
    model_server_tls_issuer: dict[str, str] | None = Field(
        default=None,
        description="A cluster-wide issuer (JSON name/kind/group) that signs model-server certificates "
        "in namespaces other than the platform's; unset: model servers only in the platform namespace.",
    )
    platform_namespace: str | None = Field(default=None, description="Namespace of the platform release.")

    def platform_values(self, namespace: str) -> dict[str, Any]:
        """The model-server chart values that tie a release installed in ``namespace`` to this platform.

        Empty when the deployer runs outside the platform chart (then the tweak file's
        ``deploy.values`` must say it all). The platform's Secret is usable only in its own
        namespace; elsewhere the chart gets a certificate of its own from a cluster-wide issuer.
        """
        values: dict[str, Any] = {}
        if self.model_server_image_repository:
            image: dict[str, Any] = {
                "registry": self.model_server_image_registry,
                "repository": self.model_server_image_repository,
                "tag": self.model_server_image_tag,
                "digest": self.model_server_image_digest,
                "pullSecrets": list(self.model_server_image_pull_secrets),
            }
            if self.model_server_image_pull_policy:
                image["pullPolicy"] = self.model_server_image_pull_policy
            values["image"] = image
        if self.model_server_nats_url:
            values["nats"] = {"url": self.model_server_nats_url}
        if self.model_server_tls_secret:
            if self.platform_namespace in (None, namespace):
                values["tls"] = {"secretName": self.model_server_tls_secret, "certificate": {"enabled": False}}
            elif self.model_server_tls_issuer:
                values["tls"] = {"certificate": {"enabled": True, "issuerRef": dict(self.model_server_tls_issuer)}}
            else:
                raise HelmDeployError(
                    f"deploy.namespace: '{namespace}' is not the platform's namespace '{self.platform_namespace}', "
                    "whose model-server certificate Secret cannot be mounted there; expected the platform "
                    "namespace, or a platform installed with pki.issuerRef set to a ClusterIssuer"
                )
        return values

    def allowed_namespaces(self) -> list[str]:
        """The namespaces the deployer's RBAC covers; empty when unrestricted."""
        return [n.strip() for n in (self.deploy_namespaces or "").split(",") if n.strip()]

    def chart(self) -> Path:
        """The model-server chart to install when the tweak file names none."""
        if self.model_server_chart is not None:
            return self.model_server_chart
        return REPO_CHART if REPO_CHART.is_dir() else IMAGE_CHART


REACHABILITY_TIMEOUT_S = 15.0
WAIT_STRATEGY = "watcher"  # Helm v4: wait on the resources' status (kstatus), not the legacy poller
MAX_HISTORY = 20


class HelmEngine(Protocol):
    """The Helm operations the target needs (the SDK, or a recorder in tests)."""

    def check_reachable(self) -> None: ...
    def release_exists(self, name: str) -> bool: ...
    def install(self, chart: str, name: str, values: dict[str, Any], **flags: Any) -> dict[str, Any]: ...
    def upgrade(self, chart: str, name: str, values: dict[str, Any], **flags: Any) -> dict[str, Any]: ...
    def rollback(self, name: str, **flags: Any) -> None: ...


class SdkEngine:
    """:class:`HelmEngine` over ``helm_python.Config`` (kubeconfig / in-cluster credentials as Helm finds them)."""

    def __init__(self, namespace: str, kubeconfig: str | None = None):
        try:
            import helm_python
        except ImportError:
            raise ConfigurationError(
                "the helm target needs the Helm engine: pip install helm-python-sdk "
                "(or use the deployer image built with WITH_HELM=true)"
            ) from None
        self.h = helm_python
        self.config = helm_python.Config(namespace=namespace, kubeconfig_path=kubeconfig)

    def check_reachable(self) -> None:
        self.config.check_reachable()

    def release_exists(self, name: str) -> bool:
        try:
            return bool(self.config.history(name, max_revisions=1))
        except self.h.HelmNotFoundError:
            return False
        except self.h.HelmError as exc:
            if "not found" in str(exc):
                return False
            raise

    def install(self, chart: str, name: str, values: dict[str, Any], **flags: Any) -> dict[str, Any]:
        return dict(self.config.install(chart, name, values, **flags))

    def upgrade(self, chart: str, name: str, values: dict[str, Any], **flags: Any) -> dict[str, Any]:
        return dict(self.config.upgrade(chart, name, values, **flags))

    def rollback(self, name: str, **flags: Any) -> None:
        self.config.rollback(name, **flags)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, recursively (``override`` wins)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_values(spec: DeploySpec, revision: ReleaseRevision, platform: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chart values for ``revision``: the platform's (``platform``, see
    :meth:`HelmSettings.platform_values`), then the tweak file's ``deploy.values``, then the
    model reference on top.

    ``model.revision`` pins the server to this revision (a pod serves exactly what Helm
    deployed, so a Helm rollback really restores the old model); ``model.sha256`` is checked
    by the server when it downloads the artifact.
    """
    model = {
        "release": spec.release,
        "revision": revision.revision,
        "artifact": revision.artifact.name,
        "sha256": revision.artifact.sha256,
    }
    return merge(merge(platform or {}, spec.values), {"model": model})


def fullname(spec: DeploySpec) -> str:
    """The chart's ``model-server.fullname`` for this release (see helm/model-server/templates/_helpers.tpl)."""
    override = spec.values.get("fullnameOverride")
    if override:
        return str(override)[:63].rstrip("-")
    name = spec.values.get("nameOverride") or "model-server"
    return spec.release[:63].rstrip("-") if name in spec.release else f"{spec.release}-{name}"[:63].rstrip("-")


class HelmTarget(DeployTarget):
    """``upgrade --install`` / rollback of ``helm/model-server`` (or ``deploy.chart``) per model release."""

    name = "helm"

    def __init__(self, settings: Settings | None = None, helm: HelmSettings | None = None):
        super().__init__(settings)
        self.helm = helm or HelmSettings()  # read once, when the deployer starts

    def engine(self, spec: DeploySpec) -> HelmEngine:
        """The Helm engine for the spec's namespace (overridden in tests to record the calls)."""
        kubeconfig = self.helm.kubeconfig
        return SdkEngine(self.namespace(spec), str(kubeconfig) if kubeconfig else None)

    @staticmethod
    def namespace(spec: DeploySpec) -> str:
        return spec.namespace or "default"

    def chart(self, spec: DeploySpec) -> str:
        return spec.chart or str(self.helm.chart())

    def values(self, spec: DeploySpec, revision: ReleaseRevision) -> dict[str, Any]:
        """The values this target installs ``revision`` with (the platform's, the tweak file's, the model)."""
        return chart_values(spec, revision, self.helm.platform_values(self.namespace(spec)))

    def upgrade_flags(self, spec: DeploySpec, revision: ReleaseRevision) -> dict[str, Any]:
        """Flags of ``helm upgrade --install --wait --rollback-on-failure`` for this revision."""
        return {
            "namespace": self.namespace(spec),
            "wait": WAIT_STRATEGY,
            "timeout": int(spec.helm_timeout),
            "rollback_on_failure": True,
            "description": f"tweakline revision {revision.revision} (experiment {revision.experiment_id})",
            "labels": {"tweakline.io/revision": str(revision.revision)},
        }

    async def _reachable(self, engine: HelmEngine, spec: DeploySpec) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(engine.check_reachable), REACHABILITY_TIMEOUT_S)
        except TimeoutError:
            raise HelmDeployError(
                f"Kubernetes cluster not reachable within {REACHABILITY_TIMEOUT_S:.0f}s "
                f"(namespace {self.namespace(spec)}): check the kubeconfig or the deployer's service account"
            ) from None
        except Exception as exc:
            raise HelmDeployError(
                f"Kubernetes cluster not reachable (namespace {self.namespace(spec)}; "
                f"kubeconfig {self.helm.kubeconfig or 'default'}): {exc}"
            ) from None

    def check_namespace(self, spec: DeploySpec) -> None:
        """Refuse a namespace outside the deployer's RBAC at once, rather than as a Kubernetes 403."""
        allowed = self.helm.allowed_namespaces()
        namespace = self.namespace(spec)
        if allowed and namespace not in allowed:
            raise HelmDeployError(
                f"deploy.namespace: the deployer may install into {', '.join(allowed)} "
                f"(the chart's deployer.targetNamespaces), got '{namespace}'"
            )

    async def deploy(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> int | None:
        """``upgrade --install``; returns Helm's revision number. Helm undoes a failed upgrade itself."""
        self.check_namespace(spec)
        values = self.values(spec, revision)
        engine = self.engine(spec)
        await self._reachable(engine, spec)
        flags = self.upgrade_flags(spec, revision)
        chart = self.chart(spec)
        try:
            if await asyncio.to_thread(engine.release_exists, spec.release):
                flags.update(max_history=MAX_HISTORY, cleanup_on_fail=True)
                result = await asyncio.to_thread(engine.upgrade, chart, spec.release, values, **flags)
            else:
                result = await asyncio.to_thread(engine.install, chart, spec.release, values, **flags)
        except Exception as exc:
            raise HelmDeployError(
                f"helm upgrade --install {spec.release} ({chart}, namespace {flags['namespace']}) failed "
                f"and was rolled back by Helm: {exc}"
            ) from None
        return int(result["revision"]) if result.get("revision") is not None else None

    async def rollback(self, spec: DeploySpec, history: ReleaseHistory, revision: ReleaseRevision) -> None:
        """``helm rollback`` to the Helm revision recorded for ``revision``."""
        if revision.target_revision is None:
            raise HelmDeployError(
                f"release {spec.release} revision {revision.revision} has no recorded Helm revision "
                "(it never reached the cluster); choose another with --to"
            )
        engine = self.engine(spec)
        await self._reachable(engine, spec)
        try:
            await asyncio.to_thread(
                engine.rollback,
                spec.release,
                version=revision.target_revision,
                wait=WAIT_STRATEGY,
                timeout=int(spec.helm_timeout),
            )
        except Exception as exc:
            raise HelmDeployError(
                f"helm rollback {spec.release} to Helm revision {revision.target_revision} failed: {exc}"
            ) from None

    def endpoint(self, spec: DeploySpec) -> str | None:
        """The chart's Service inside the cluster (the deployer runs there)."""
        if spec.endpoint:
            return spec.endpoint
        port = (spec.values.get("service") or {}).get("port", 8080)
        return f"http://{fullname(spec)}.{self.namespace(spec)}.svc:{port}"

    def render(self, spec: DeploySpec, revision: ReleaseRevision) -> dict[str, Any]:
        """A client-side dry run of the install through the real engine (no cluster needed): the release and its manifest."""
        engine = self.engine(spec)
        assert isinstance(engine, SdkEngine)
        flags = self.upgrade_flags(spec, revision)
        flags.pop("wait")  # waiting means nothing in a dry run
        return engine.install(self.chart(spec), spec.release, self.values(spec, revision), dry_run="client", **flags)
