"""The shipped Prometheus rules and config, checked and unit-tested with the real promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REQUIRED_ANNOTATIONS = {"summary", "description", "runbook_url"}
SEVERITIES = {"warning", "critical", "none"}
EXPECTED_ALERTS = {
    "StreamdriftFeatureDriftWarning",
    "StreamdriftFeatureDriftCritical",
    "StreamdriftConceptDrift",
    "StreamdriftPerformanceDropWarning",
    "StreamdriftPerformanceDropCritical",
    "StreamdriftLabelsTimingOut",
    "StreamdriftWindowsStale",
    "StreamdriftConsumerLagHigh",
    "StreamdriftDeadLetterRateHigh",
    "StreamdriftTargetDown",
    "Watchdog",
}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed; run `make system-deps`")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rules(path: Path) -> list[dict]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules(deploy_paths):
    res = promtool("check", "rules", str(deploy_paths["rules"]))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in res.stdout


def test_promtool_check_config(deploy_paths):
    res = promtool("check", "config", str(deploy_paths["deploy"] / "prometheus" / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 rule files found" in res.stdout


def test_prometheus_config_scrapes_streamdrift_and_alerts_to_alertmanager(deploy_paths):
    cfg = yaml.safe_load((deploy_paths["deploy"] / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["streamdrift"]
    assert job["honor_labels"] is True
    # every static target carries the monitor target label that the inhibitions match on
    for sc in job["static_configs"]:
        assert sc["labels"]["monitor"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert cfg["rule_files"] == ["rules/*.yml"]


def test_promtool_unit_tests_pass(deploy_paths):
    tests = sorted((deploy_paths["deploy"] / "prometheus" / "tests").glob("*.yml"))
    assert len(tests) >= 2
    res = promtool("test", "rules", *[t.name for t in tests], cwd=tests[0].parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(tests)


def test_every_alert_has_severity_annotations_and_runbook_anchor(deploy_paths):
    runbook = (deploy_paths["deploy"] / "runbook.md").read_text()
    # GitHub anchors of the runbook's second-level headings
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^## (.+)$", runbook, re.M)
    }
    alerts = [r for r in rules(deploy_paths["rules"]) if "alert" in r]
    assert {r["alert"] for r in alerts} == EXPECTED_ALERTS
    for r in alerts:
        assert r["labels"]["severity"] in SEVERITIES, r["alert"]
        assert set(r["annotations"]) >= REQUIRED_ANNOTATIONS, r["alert"]
        url = r["annotations"]["runbook_url"]
        assert url.endswith("deploy/runbook.md#" + r["alert"].lower()), url
        assert r["alert"].lower() in anchors, f"runbook.md has no section for {r['alert']}"
        if r["alert"] != "Watchdog":
            assert "for" in r, f"{r['alert']} must be held with for:"


def test_every_alert_is_covered_by_a_firing_promtool_case(deploy_paths):
    fired: set[str] = set()
    for t in (deploy_paths["deploy"] / "prometheus" / "tests").glob("*.yml"):
        for case in yaml.safe_load(t.read_text())["tests"]:
            for art in case.get("alert_rule_test", []):
                if art.get("exp_alerts"):
                    fired.add(art["alertname"])
                    for exp in art["exp_alerts"]:
                        assert set(exp["exp_annotations"]) >= REQUIRED_ANNOTATIONS, art["alertname"]
                        assert "severity" in exp["exp_labels"]
    assert fired == EXPECTED_ALERTS


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS - {"Watchdog"}))
def test_promtool_tests_fail_without_the_for_clause(alert, deploy_paths, tmp_path):
    """The pending checks are real: drop one alert's `for:` and the unit tests must fail."""
    doc = yaml.safe_load(deploy_paths["rules"].read_text())
    for g in doc["groups"]:
        for r in g["rules"]:
            if r.get("alert") == alert:
                del r["for"]
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "streamdrift.rules.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "tests").mkdir()
    for t in (deploy_paths["deploy"] / "prometheus" / "tests").glob("*.yml"):
        shutil.copy(t, tmp_path / "tests" / t.name)
    names = sorted(p.name for p in (tmp_path / "tests").glob("*.yml"))
    res = promtool("test", "rules", *names, cwd=tmp_path / "tests")
    assert res.returncode != 0, f"removing for: from {alert} went unnoticed:\n{res.stdout}"
    assert f"alertname: {alert}," in res.stdout + res.stderr
