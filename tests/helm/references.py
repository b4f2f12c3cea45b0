"""Cross-references between rendered Kubernetes objects, and whether each resolves.

A reference is a name one object uses to reach another: a Secret or ConfigMap mounted or read
into the environment, a ServiceAccount, an issuer, a Role bound, the NATS Service in a URL. It
resolves when an object of that kind, namespace and name is among the objects rendered (a
cert-manager ``Certificate`` creates the Secret named in its ``spec.secretName``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

from tests.helm.conftest import Manifest

POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
# environment variables whose value is a URL naming a Service (host[.namespace[.svc...]]:port)
URL_ENV = {"TWEAKLINE_NATS_URL"}
CLUSTER_SCOPED = {"ClusterIssuer", "ClusterRole", "ClusterRoleBinding", "Namespace"}


@dataclass(frozen=True)
class Ref:
    """``source`` refers to the object ``kind``/``namespace``/``name``."""

    kind: str
    namespace: str | None
    name: str
    source: str

    def key(self) -> tuple[str, str | None, str]:
        return self.kind, None if self.kind in CLUSTER_SCOPED else self.namespace, self.name


def _ns(manifest: Manifest, default: str) -> str:
    return manifest.doc["metadata"].get("namespace") or default


def created(manifests: list[Manifest], default_namespace: str) -> set[tuple[str, str | None, str]]:
    """(kind, namespace, name) of every object the manifests create, counting the Secret a
    cert-manager Certificate writes."""
    out: set[tuple[str, str | None, str]] = set()
    for m in manifests:
        ns = None if m.kind in CLUSTER_SCOPED else _ns(m, default_namespace)
        out.add((m.kind, ns, m.name))
        if m.kind == "Certificate":
            out.add(("Secret", ns, m.doc["spec"]["secretName"]))
    return out


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if doc["kind"] in POD_OWNERS:
        return doc["spec"]["template"]["spec"]
    return None


def service_of_url(url: str, namespace: str) -> tuple[str, str] | None:
    """(namespace, Service name) a cluster-internal URL points at, or None for an outside host."""
    match = re.fullmatch(r"[a-z]+://([^/:]+)(:\d+)?/?", url)
    if not match:
        return None
    labels = match.group(1).split(".")
    if len(labels) == 1:
        return namespace, labels[0]
    if len(labels) >= 3 and labels[2] == "svc":
        return labels[1], labels[0]
    return None  # an external name: not ours to resolve


def references(manifest: Manifest, default_namespace: str) -> Iterator[Ref]:
    """Every reference ``manifest`` makes to another namespaced or cluster object."""
    doc, ns, src = manifest.doc, _ns(manifest, default_namespace), repr(manifest)
    pod = _pod_spec(doc)
    if pod is not None:
        if pod.get("serviceAccountName"):
            yield Ref("ServiceAccount", ns, pod["serviceAccountName"], src)
        for secret in pod.get("imagePullSecrets") or []:
            yield Ref("Secret", ns, secret["name"], src + " imagePullSecrets")
        for volume in pod.get("volumes") or []:
            if "secret" in volume:
                yield Ref("Secret", ns, volume["secret"]["secretName"], src + f" volume {volume['name']}")
            if "configMap" in volume:
                yield Ref("ConfigMap", ns, volume["configMap"]["name"], src + f" volume {volume['name']}")
            for source in (volume.get("projected") or {}).get("sources") or []:
                if "secret" in source:
                    yield Ref("Secret", ns, source["secret"]["name"], src + f" volume {volume['name']}")
                if "configMap" in source:
                    yield Ref("ConfigMap", ns, source["configMap"]["name"], src + f" volume {volume['name']}")
        for container in (pod.get("initContainers") or []) + pod["containers"]:
            for env in container.get("env") or []:
                value_from = env.get("valueFrom") or {}
                if "secretKeyRef" in value_from:
                    yield Ref("Secret", ns, value_from["secretKeyRef"]["name"], src + f" env {env['name']}")
                if "configMapKeyRef" in value_from:
                    yield Ref("ConfigMap", ns, value_from["configMapKeyRef"]["name"], src + f" env {env['name']}")
                if env["name"] in URL_ENV and "value" in env:
                    target = service_of_url(env["value"], ns)
                    if target:
                        yield Ref("Service", target[0], target[1], src + f" env {env['name']}={env['value']}")
            for env_from in container.get("envFrom") or []:
                if "secretRef" in env_from:
                    yield Ref("Secret", ns, env_from["secretRef"]["name"], src + " envFrom")
                if "configMapRef" in env_from:
                    yield Ref("ConfigMap", ns, env_from["configMapRef"]["name"], src + " envFrom")
    if doc["kind"] == "Certificate":
        issuer = doc["spec"]["issuerRef"]
        yield Ref(issuer.get("kind", "Issuer"), ns, issuer["name"], src + " issuerRef")
    if doc["kind"] == "Issuer" and "ca" in doc["spec"]:
        yield Ref("Secret", ns, doc["spec"]["ca"]["secretName"], src + " spec.ca")
    if doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        role = doc["roleRef"]
        yield Ref(role["kind"], ns, role["name"], src + " roleRef")
        for subject in doc.get("subjects") or []:
            if subject["kind"] == "ServiceAccount":
                yield Ref("ServiceAccount", subject.get("namespace") or ns, subject["name"], src + " subject")


def unresolved(
    manifests: list[Manifest],
    default_namespace: str,
    *,
    among: list[Manifest] | None = None,
    external: set[tuple[str, str | None, str]] = frozenset(),  # type: ignore[assignment]
) -> list[Ref]:
    """The references of ``manifests`` that resolve neither to an object of ``among`` (default:
    ``manifests`` themselves) nor to one of the ``external`` objects the user provides."""
    objects = created(among if among is not None else manifests, default_namespace) | set(external)
    return [ref for m in manifests for ref in references(m, default_namespace) if ref.key() not in objects]


def images(manifests: list[Manifest]) -> set[str]:
    """Every container image the manifests run."""
    out: set[str] = set()
    for m in manifests:
        pod = _pod_spec(m.doc)
        if pod is not None:
            out.update(c["image"] for c in (pod.get("initContainers") or []) + pod["containers"])
    return out
