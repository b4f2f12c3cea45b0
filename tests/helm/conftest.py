"""Rendering the charts with the real Helm engine (the ``helm-python-sdk`` wheel), offline.

No cluster is involved: ``Chart.render`` runs Helm's template engine in-process, the way
``helm template`` does. Renders are cached per (chart, values file), so the many checks over
the same manifests cost one render each.
"""

from __future__ import annotations

import atexit
import functools
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import helm_python  # noqa: E402 - helm-python-sdk, the real Helm engine (installed by the test extra)

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "helm"
CRD_SCHEMAS = Path(__file__).parent / "crd-schemas"
RELEASE, NAMESPACE = "tl", "ml-platform"

# (chart, values file relative to the chart or None for the defaults)
CASES: list[tuple[str, str | None]] = [
    ("tweakline", None),
    ("tweakline", "ci/full-values.yaml"),
    ("tweakline", "ci/external-nats-values.yaml"),
    ("tweakline", "ci/minimal-values.yaml"),
    ("tweakline", "ci/pools-values.yaml"),
    ("model-server", None),
    ("model-server", "ci/full-values.yaml"),
]
CASE_IDS = [f"{chart}:{values or 'defaults'}" for chart, values in CASES]


def chart_kube_versions(chart: str = "tweakline") -> tuple[str, str]:
    """The oldest Kubernetes minor the chart supports (its ``kubeVersion``) and the newest one
    kubernetes-validate has schemas for: the two ends every manifest is validated against."""
    from kubernetes_validate.utils import latest_version

    constraint = yaml.safe_load((CHARTS / chart / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*v?(\d+\.\d+)(\.\d+)?(-0)?", constraint.strip())
    assert match, f"unexpected kubeVersion constraint {constraint!r}"
    return f"{match.group(1)}.0", latest_version()


@dataclass(frozen=True)
class Manifest:
    """One rendered Kubernetes object and the template it came from."""

    template: str
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    @property
    def name(self) -> str:
        return self.doc["metadata"]["name"]

    def __repr__(self) -> str:
        return f"{self.kind}/{self.name} ({self.template})"


def values_of(chart: str, values_file: str | None) -> dict[str, Any]:
    """The user-supplied values of a case (merged over the chart's values.yaml by Helm)."""
    if values_file is None:
        return {}
    return yaml.safe_load((CHARTS / chart / values_file).read_text()) or {}


WEBHOOK_USER = "CN=webhook"


def chart_dir(chart: str, values: dict[str, Any]) -> Path:
    """The chart to render ``values`` with: the real one, or, when the values enable the webhook
    and this build's generated map has no webhook identity yet (the webhook service is built
    separately), a copy of the chart whose map has one, so the webhook's objects are checked."""
    path = CHARTS / chart
    if chart == "tweakline" and (values.get("webhook") or {}).get("enabled") and not has_webhook_identity():
        return _chart_with_webhook_identity()
    return path


def has_webhook_identity() -> bool:
    """Whether the generated NATS map (from proto/permissions.py) has the webhook's user."""
    auth = json.loads((CHARTS / "tweakline" / "files" / "nats-authorization.json").read_text())
    return any(user["user"] == WEBHOOK_USER for user in auth["authorization"]["users"])


@functools.lru_cache(maxsize=1)
def _chart_with_webhook_identity() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tweakline-chart-"))
    atexit.register(shutil.rmtree, root, True)
    copy = root / "tweakline"
    shutil.copytree(CHARTS / "tweakline", copy)
    path = copy / "files" / "nats-authorization.json"
    auth = json.loads(path.read_text())
    users = auth["authorization"]["users"]
    (submitter,) = [u for u in users if u["user"] == "CN=submitter"]  # a stand-in for its permissions
    users.append({"user": WEBHOOK_USER, "permissions": submitter["permissions"]})
    path.write_text(json.dumps(auth, indent=2) + "\n")
    return copy


@functools.lru_cache(maxsize=None)
def rendered_files(chart: str, values_file: str | None) -> dict[str, str]:
    """Template path -> rendered text, exactly as Helm renders them."""
    values = values_of(chart, values_file)
    with helm_python.Chart.load(str(chart_dir(chart, values))) as loaded:
        return loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(chart: str, values_file: str | None = None, values: dict[str, Any] | None = None) -> list[Manifest]:
    """Every Kubernetes object of a render (NOTES.txt left out)."""
    if values is None:
        files = rendered_files(chart, values_file)
    else:
        with helm_python.Chart.load(str(chart_dir(chart, values))) as loaded:
            files = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests = []
    for template, text in sorted(files.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                manifests.append(Manifest(template, doc))
    return manifests


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """The objects of one kind (and name)."""
    return [m for m in manifests if m.kind == kind and (name is None or m.name == name)]


@functools.lru_cache(maxsize=None)
def crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The OpenAPI schema of a custom resource, made strict (unknown fields rejected, as
    ``kubectl apply --validate=strict`` does), or None when no CRD schema is vendored."""
    index = json.loads((CRD_SCHEMAS / "index.json").read_text())
    entry = index.get(f"{api_version}/{kind}")
    if entry is None:
        return None
    return _strict(json.loads((CRD_SCHEMAS / entry["file"]).read_text()))


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node
