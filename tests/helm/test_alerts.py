"""The chart's alert rules: each fires on the condition it names (promtool unit tests), and the
chart ships them as a PrometheusRule.

``promtool`` is the Prometheus project's own rule checker and test runner (Debian's
``prometheus`` package; ``.ci/run`` installs it where it can).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.helm.conftest import find, render

RULES = REPO / "helm" / "tweakline" / "files" / "alert-rules.yaml"
RULE_TESTS = Path(__file__).parent / "alerts" / "alert-rules.test.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def alert_names(groups: dict) -> set[str]:
    return {rule["alert"] for group in groups["groups"] for rule in group["rules"]}


@needs_promtool
def test_every_alert_rule_fires_on_its_condition_and_not_on_the_healthy_twin() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"] for t in case["alert_rule_test"]}
    assert tested == alert_names(yaml.safe_load(RULES.read_text()))  # no rule without a test


@needs_promtool
def test_a_rule_test_can_fail(tmp_path: Path) -> None:
    # The same tests against rules whose error-rate threshold is raised to 50 %: promtool must fail.
    rules = RULES.read_text().replace("> 0.05", "> 0.5")
    (tmp_path / "rules.yaml").write_text(rules)
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(tmp_path / "rules.yaml")]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode != 0 and "TweaklineModelServerErrorRate" in result.stdout + result.stderr


def test_the_alerts_cover_what_an_operator_must_hear_about() -> None:
    assert alert_names(yaml.safe_load(RULES.read_text())) == {
        "TweaklineExperimentsStuck",
        "TweaklineDeadLetters",
        "TweaklineTrialQueueBacklog",
        "TweaklineRunnersSaturated",
        "TweaklineDeploymentFailedOrRolledBack",
        "TweaklineModelServerErrorRate",
        "TweaklineModelServerLatency",
    }


@needs_promtool
def test_the_chart_ships_the_rules_as_a_prometheus_rule(tmp_path: Path) -> None:
    # Without the operator's CRDs (an offline render has none) nothing is rendered by default.
    assert find(render("tweakline"), "PrometheusRule") == []
    assert find(render("tweakline", values={"alerts": {"prometheusRule": {"enabled": False}}}), "PrometheusRule") == []
    rendered = find(
        render("tweakline", values={"alerts": {"prometheusRule": {"enabled": True, "labels": {"release": "kube-prom"}}}}),
        "PrometheusRule",
    )
    assert len(rendered) == 1
    rule = rendered[0].doc
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prom"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())  # exactly the unit-tested rules
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump(rule["spec"]))
    checked = promtool("check", "rules", str(tmp_path / "rendered.yaml"))
    assert checked.returncode == 0 and "SUCCESS: 7 rules found" in checked.stdout, checked.stdout + checked.stderr
