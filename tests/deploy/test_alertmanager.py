"""The shipped Alertmanager config: amtool checks, route tests, and inhibition in a real Alertmanager."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("amtool")
    if exe is None:
        pytest.fail("amtool is not installed; run `make system-deps`")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.unit
def test_amtool_check_config(deploy_paths):
    res = amtool("check-config", str(deploy_paths["alertmanager"]))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 inhibit rules" in res.stdout


@pytest.mark.unit
def test_grouping_and_credentials_from_a_file(deploy_paths):
    cfg = yaml.safe_load(deploy_paths["alertmanager"].read_text())
    assert cfg["route"]["group_by"] == ["monitor", "alertname"]
    webhooks = [w for r in cfg["receivers"] for w in r.get("webhook_configs", [])]
    assert webhooks
    for w in webhooks:
        auth = w["http_config"]["authorization"]
        assert auth["credentials_file"].startswith("/")
        assert "credentials" not in auth, "the token must come from a file, not the config"


ROUTES = [
    # (labels, expected receiver)
    ({"alertname": "Watchdog", "severity": "none"}, "heartbeat"),
    (
        {
            "alertname": "StreamdriftFeatureDriftWarning",
            "severity": "warning",
            "monitor": "credit-scoring",
            "feature": "income",
            "statistic": "psi",
            "segment": "__all__",
        },
        "streamdrift-webhook",
    ),
    (
        {
            "alertname": "StreamdriftFeatureDriftCritical",
            "severity": "critical",
            "monitor": "credit-scoring",
            "feature": "income",
            "statistic": "psi",
            "segment": "__all__",
        },
        "streamdrift-critical",
    ),
    ({"alertname": "StreamdriftTargetDown", "severity": "critical", "monitor": "m"}, "streamdrift-critical"),
    ({"alertname": "StreamdriftWindowsStale", "severity": "critical", "monitor": "m"}, "streamdrift-critical"),
    ({"alertname": "StreamdriftConceptDrift", "severity": "warning", "monitor": "m"}, "streamdrift-webhook"),
    ({"alertname": "StreamdriftConsumerLagHigh", "severity": "warning", "monitor": "m"}, "streamdrift-webhook"),
    ({"alertname": "SomethingElse"}, "streamdrift-webhook"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("labels", "receiver"), ROUTES, ids=[f"{lbl['alertname']}->{r}" for lbl, r in ROUTES])
def test_routes(labels, receiver, deploy_paths):
    args = ["config", "routes", "test", f"--config.file={deploy_paths['alertmanager']}"]
    label_args = [f"{k}={v}" for k, v in labels.items()]
    res = amtool(*args, f"--verify.receivers={receiver}", *label_args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == receiver
    # the check can fail: a wrong expectation is reported
    wrong = "heartbeat" if receiver != "heartbeat" else "streamdrift-webhook"
    bad = amtool(*args, f"--verify.receivers={wrong}", *label_args)
    assert bad.returncode != 0


def _alert(name: str, **labels: str) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"labels": {"alertname": name, **labels}, "annotations": {"summary": name}, "startsAt": now}


@pytest.mark.e2e
def test_inhibitions_in_a_real_alertmanager(services, tmp_path: Path):
    """Down/stale pipelines mute their monitor's drift alerts; critical mutes the same warning."""
    exe = services.require_binary("prometheus-alertmanager")
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    cfg = services.render_alertmanager("http://127.0.0.1:9/", token)
    (tmp_path / "am.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = services.free_port()
    am = services.start(
        "alertmanager",
        [
            exe,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        f"http://127.0.0.1:{port}",
        "/-/ready",
        tmp_path / "alertmanager.log",
    )
    drift = {"segment": "__all__", "statistic": "psi"}
    alerts = {
        "down": _alert("StreamdriftTargetDown", severity="critical", monitor="a", instance="a:9308"),
        "a-warn": _alert("StreamdriftFeatureDriftWarning", severity="warning", monitor="a", feature="x", **drift),
        "a-crit": _alert("StreamdriftFeatureDriftCritical", severity="critical", monitor="a", feature="y", **drift),
        "stale": _alert("StreamdriftWindowsStale", severity="critical", monitor="c", instance="c:9308"),
        "c-warn": _alert("StreamdriftFeatureDriftWarning", severity="warning", monitor="c", feature="x", **drift),
        "b-crit-x": _alert("StreamdriftFeatureDriftCritical", severity="critical", monitor="b", feature="x", **drift),
        "b-warn-x": _alert("StreamdriftFeatureDriftWarning", severity="warning", monitor="b", feature="x", **drift),
        "b-warn-y": _alert("StreamdriftFeatureDriftWarning", severity="warning", monitor="b", feature="y", **drift),
        "b-warn-x-seg": _alert(
            "StreamdriftFeatureDriftWarning",
            severity="warning",
            monitor="b",
            feature="x",
            segment="country=de",
            statistic="psi",
        ),
        "b-concept": _alert("StreamdriftConceptDrift", severity="warning", monitor="b", detector="adwin"),
        "d-perf-crit": _alert(
            "StreamdriftPerformanceDropCritical", severity="critical", monitor="d", metric="accuracy", segment="__all__"
        ),
        "d-perf-warn": _alert(
            "StreamdriftPerformanceDropWarning", severity="warning", monitor="d", metric="accuracy", segment="__all__"
        ),
        "d-perf-warn-recall": _alert(
            "StreamdriftPerformanceDropWarning", severity="warning", monitor="d", metric="recall", segment="__all__"
        ),
    }
    services.http_json(f"{am.url}/api/v2/alerts", list(alerts.values()))

    def key(a: dict) -> str:
        return next(k for k, v in alerts.items() if v["labels"] == a["labels"])

    def status() -> dict[str, list[str]] | None:
        got = services.http_json(f"{am.url}/api/v2/alerts")
        if len(got) != len(alerts):
            return None
        return {key(a): a["status"]["inhibitedBy"] for a in got}

    inhibited = services.wait_until(status, 20, "the posted alerts in Alertmanager")
    muted = {k for k, by in inhibited.items() if by}
    assert muted == {"a-warn", "a-crit", "c-warn", "b-warn-x", "d-perf-warn"}
