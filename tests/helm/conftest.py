"""Rendering the charts with the real Helm engine (the ``helm-python-sdk`` wheel), offline.

No cluster is involved: ``Chart.render`` runs Helm's template engine in-process, the way
``helm template`` does. Renders are cached per (chart, values file), so the many checks over
the same manifests cost one render each.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

helm_python = pytest.importorskip("helm_python", reason="pip install -e '.[k8s]' (helm-python-sdk: the real Helm engine)")

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


@functools.lru_cache(maxsize=None)
def rendered_files(chart: str, values_file: str | None) -> dict[str, str]:
    """Template path -> rendered text, exactly as Helm renders them."""
    with helm_python.Chart.load(str(CHARTS / chart)) as loaded:
        return loaded.render(values_of(chart, values_file), name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(chart: str, values_file: str | None = None, values: dict[str, Any] | None = None) -> list[Manifest]:
    """Every Kubernetes object of a render (NOTES.txt left out)."""
    if values is None:
        files = rendered_files(chart, values_file)
    else:
        with helm_python.Chart.load(str(CHARTS / chart)) as loaded:
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
