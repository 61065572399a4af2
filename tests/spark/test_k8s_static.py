"""Static validation of the Spark-on-Kubernetes files (no cluster here): the manifests and the
executor pod template against the Kubernetes schemas, the spark-submit settings against the names
Spark itself knows (read from the pyspark jars), the job's arguments against its parser, and the
executor entrypoint against Spark's executor contract (and run, with a stand-in for java)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

import jobs.streaming

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "k8s" / "spark-streaming.yaml"
ENTRYPOINT = REPO / "jobs" / "spark-k8s-entrypoint.sh"
JARS = Path(__import__("pyspark").__file__).parent / "jars"
BIN = Path(sys.executable).parent


@cache
def jar_strings(jar_glob: str, member: str) -> str:
    """The bytes of a class file of a pyspark jar, as text (its constant pool holds the names it uses)."""
    (jar,) = JARS.glob(jar_glob)
    with zipfile.ZipFile(jar) as z:
        return z.read(member).decode("latin-1")


def docs() -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(MANIFEST.read_text())}


def driver() -> dict[str, Any]:
    (c,) = docs()["Deployment/streamdrift-spark-driver"]["spec"]["template"]["spec"]["containers"]
    return c


def executor_template() -> dict[str, Any]:
    return dict(yaml.safe_load(docs()["ConfigMap/streamdrift-spark"]["data"]["executor-pod-template.yaml"]))


def confs() -> dict[str, str]:
    args = driver()["args"]
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--conf")


def test_manifests_and_the_executor_pod_template_validate(tmp_path: Path) -> None:
    template = tmp_path / "executor-pod-template.yaml"
    template.write_text(yaml.safe_dump(executor_template()))
    res = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(MANIFEST), str(template)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_spark_settings_are_names_spark_knows() -> None:
    k8s = jar_strings("spark-kubernetes_*.jar", "org/apache/spark/deploy/k8s/Config$.class")
    core = jar_strings("spark-core_*.jar", "org/apache/spark/internal/config/package$.class")
    python = jar_strings("spark-core_*.jar", "org/apache/spark/internal/config/Python$.class")
    ui = jar_strings("spark-core_*.jar", "org/apache/spark/internal/config/UI$.class")
    for key in confs():
        known = k8s if key.startswith("spark.kubernetes.") else core + python + ui
        if key.startswith("spark.kubernetes.authenticate."):  # (Spark builds these from a prefix and a suffix)
            prefix, _, suffix = key.rpartition(".")
            assert prefix in k8s and suffix in k8s, f"{key} is not a Spark setting"
            continue
        assert key in known, f"{key} is not a Spark setting"
    assert confs()["spark.kubernetes.container.image"] == driver()["image"]


def test_the_driver_runs_the_streaming_job_with_valid_arguments() -> None:
    c = driver()
    argv = c["command"] + c["args"]
    assert argv[:5] == [
        "spark-submit",
        "--master",
        "k8s://https://kubernetes.default.svc:443",
        "--deploy-mode",
        "client",
    ]
    script = next(a for a in argv if a.endswith(".py"))
    assert script == "/opt/streamdrift/jobs/" + Path(jobs.streaming.__file__).name  # COPY jobs /opt/streamdrift/jobs
    args = jobs.streaming.build_parser().parse_args(argv[argv.index(script) + 1 :])
    # Kubernetes substitutes $(VAR) from the container's env: every one used is defined
    defined = {e["name"] for e in c["env"]}
    assert {m for a in argv for m in re.findall(r"\$\((\w+)\)", a)} <= defined
    # the checkpoint is on the ReadWriteMany volume, at the same path in the driver and the executors
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    (ex,) = executor_template()["spec"]["containers"]
    ex_mounts = {m["name"]: m["mountPath"] for m in ex["volumeMounts"]}
    assert args.checkpoint.startswith(mounts["checkpoint"] + "/") and ex_mounts["checkpoint"] == mounts["checkpoint"]
    pvc = docs()["PersistentVolumeClaim/streamdrift-spark-checkpoint"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in executor_template()["spec"]["volumes"]
    }
    assert claims["checkpoint"] == pvc["metadata"]["name"]
    # the metrics port of the config is the one the Service and the probes use
    config = yaml.safe_load(
        next(d for d in yaml.safe_load_all((REPO / "deploy" / "k8s" / "configmap.yaml").read_text()))["data"][
            "monitor.yaml"
        ]
    )
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == config["metrics"]["port"] and config["metrics"]["address"] == "0.0.0.0"
    assert str(ports["driver-rpc"]) == confs()["spark.driver.port"]
    assert str(ports["blockmanager"]) == confs()["spark.driver.blockManager.port"]
    # the executors' command is the entrypoint shipped with the jobs
    assert ex["command"] == ["/opt/streamdrift/jobs/" + ENTRYPOINT.name]
    assert confs()["spark.kubernetes.executor.podTemplateFile"].startswith(
        next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "spark") + "/"
    )


def test_the_executor_entrypoint_follows_sparks_executor_contract(tmp_path: Path) -> None:
    script = ENTRYPOINT.read_text()
    backend = jar_strings(
        "spark-kubernetes_*.jar", "org/apache/spark/scheduler/cluster/k8s/KubernetesExecutorBackend$.class"
    )
    constants = jar_strings("spark-kubernetes_*.jar", "org/apache/spark/deploy/k8s/Constants$.class")
    assert "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend" in script
    for flag in set(re.findall(r"(--[A-Za-z-]+) \"\$", script)):
        assert flag in backend, f"the executor backend takes no {flag}"
    for var in set(re.findall(r"\$\{?(SPARK_[A-Z_]+)", script)) - {"SPARK_HOME"}:
        assert var.rstrip("_") in constants, f"Spark does not set {var}"
    # run it with a stand-in for java that prints what it was given
    java_home = tmp_path / "jdk"
    (java_home / "bin").mkdir(parents=True)
    (java_home / "bin" / "java").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (java_home / "bin" / "java").chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "JAVA_HOME": str(java_home),
        "SPARK_HOME": "/opt/spark",
        "SPARK_EXECUTOR_MEMORY": "1024m",
        "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@10.0.0.5:7078",
        "SPARK_EXECUTOR_ID": "3",
        "SPARK_EXECUTOR_CORES": "1",
        "SPARK_APPLICATION_ID": "spark-abc",
        "SPARK_EXECUTOR_POD_IP": "10.0.0.9",
        "SPARK_RESOURCE_PROFILE_ID": "0",
        "SPARK_EXECUTOR_POD_NAME": "streamdrift-exec-3",
        "SPARK_JAVA_OPT_10": "-Dlast=1",
        "SPARK_JAVA_OPT_2": "-Dsecond=1",
        "SPARK_JAVA_OPT_0": "-Dfirst=has space",
    }
    out = subprocess.run(["bash", str(ENTRYPOINT), "executor"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "-Dfirst=has space",
        "-Dsecond=1",
        "-Dlast=1",
        "-Xms1024m",
        "-Xmx1024m",
        "-cp",
        "/opt/spark/jars/*",
        "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend",
        "--driver-url",
        "spark://CoarseGrainedScheduler@10.0.0.5:7078",
        "--executor-id",
        "3",
        "--cores",
        "1",
        "--app-id",
        "spark-abc",
        "--hostname",
        "10.0.0.9",
        "--resourceProfileId",
        "0",
        "--podName",
        "streamdrift-exec-3",
    ]
