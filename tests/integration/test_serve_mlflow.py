"""Reference profiles of MLflow model versions, against a real ``mlflow server`` (SQLite backend store,
artifacts proxied to a local directory, loopback: the session's ``mlflow_server`` fixture)
and the real broker: ``reference build --mlflow-model``, ``backfill --mlflow-experiment``, and
``serve`` following ``models:/NAME@ALIAS`` while the alias moves (and while serve is down)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors.config import MonitorConfig
from detectors.engine import run_local
from detectors.evaluate import WINDOW_STATISTICS, alert_id, parse_iso_ms
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from tests.conftest import create_topics
from tests.integration.test_serve import (
    T0,
    WINDOW_MS,
    TopicReader,
    assert_same_records,
    build_reference,
    make_events,
    produce,
    scrape,
    topics_for,
    wait_for,
    window_key,
    write_config,
)
from tests.reliability.harness import kill, newest_checkpoint, read_panes, stop
from tests.servers import MlflowServer, TlsTerminator, make_certificates

pytestmark = pytest.mark.integration

STEP_MS = 20


@pytest.fixture
def mlflow_env(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """MLFLOW_TRACKING_URI for this process and the commands it starts."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def register_versions(uri: str, name: str, n: int) -> list[str]:
    """``n`` versions of a new registered model, each from its own run (with a stand-in model artifact)."""
    c = client(uri)
    exp = c.get_experiment_by_name("models") or None
    exp_id = exp.experiment_id if exp is not None else c.create_experiment("models")
    c.create_registered_model(name)
    versions = []
    for i in range(n):
        run = c.create_run(exp_id)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "MLmodel").write_text(f"stand-in model {i}\n")
            c.log_artifact(run.info.run_id, str(Path(tmp) / "MLmodel"), "model")
        c.set_terminated(run.info.run_id)
        mv = c.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        versions.append(str(mv.version))
    return versions


def baseline(path: Path, seed: int, x_mean: float) -> Path:
    """Flat baseline rows (x, y, c), the shape `reference build` reads."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for x, y, c in zip(
            rng.normal(x_mean, 1, 6000),
            rng.normal(5, 2, 6000),
            rng.choice(["a", "b", "c"], 6000, p=[0.5, 0.3, 0.2]),
            strict=True,
        ):
            f.write(json.dumps({"x": float(x), "y": float(y), "c": str(c)}) + "\n")
    return path


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def build_for(env: dict[str, str], tmp: Path, name: str, version: str, seed: int, x_mean: float) -> ReferenceProfile:
    out = tmp / f"ref-v{version}.json"
    r = cli(
        env,
        "reference",
        "build",
        "--input",
        str(baseline(tmp / f"baseline-{version}.jsonl", seed, x_mean)),
        "--out",
        str(out),
        "--categorical",
        "c",
        "--fine-bins",
        "40",
        "--coarse-bins",
        "8",
        "--mlflow-model",
        name,
        "--mlflow-version",
        version,
    )
    assert f"mlflow: logged to models:/{name}/{version}" in r.stdout
    return ReferenceProfile.load(out)


def serve(config: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "--log-level", "INFO", "serve", "--config", str(config)],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def with_model(records: list[dict[str, Any]], name: str, version: str) -> list[dict[str, Any]]:
    return [dict(r, model_name=name, model_version=version) for r in records]


def local_records(events: list[dict[str, Any]], data: dict[str, Any], ref: ReferenceProfile) -> list[dict[str, Any]]:
    mc = MonitorConfig.from_mapping({**data, "reference": "unused.json"})
    layout = Layout(ref, mc.features.include)
    cols, errors = decode_events(events, mc, ref, layout.features)
    assert not errors
    return [r for r in run_local(cols, mc, ref, layout) if r["statistic"] in WINDOW_STATISTICS]


def shifted(events: list[dict[str, Any]], offset_ms: int) -> list[dict[str, Any]]:
    return [dict(e, timestamp=e["timestamp"] + offset_ms) for e in events]


# -- reference build and backfill --------------------------------------------------------------
def test_reference_build_logs_the_profile_and_backfill_logs_metrics_and_the_report(
    mlflow_server: MlflowServer, mlflow_env: dict[str, str], tmp_path: Path
) -> None:
    name = f"fraud-{uuid.uuid4().hex[:8]}"
    v1, v2 = register_versions(mlflow_server.uri, name, 2)
    ref = build_for(mlflow_env, tmp_path, name, v1, seed=1, x_mean=0.0)
    mv = client(mlflow_server.uri).get_model_version(name, v1)
    assert mv.tags["streamdrift.reference_fingerprint"] == ref.fingerprint
    artifact = mv.tags["streamdrift.reference_artifact"]
    assert artifact == f"streamdrift/reference-{ref.fingerprint.removeprefix('sha256:')[:16]}.json"

    events = make_events(3000, drift_at=1500, seed=8)
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    data = {
        "monitor": "bf",
        "reference": f"models:/{name}/{v1}",
        "events": {"segment_fields": ["country"], "prediction_field": "score", "label_field": "label"},
        "window": {"kind": "tumbling", "size": f"{WINDOW_MS}ms"},
        "statistics": {"min_events": 50},
        "concept": {"detector": "none"},
    }
    config = tmp_path / "monitor.yaml"
    config.write_text(json.dumps(data))
    out = tmp_path / "records.jsonl"
    r = cli(
        mlflow_env,
        "backfill",
        "--config",
        str(config),
        "--input",
        str(tmp_path / "events.jsonl"),
        "--output",
        str(out),
        "--quiet",
        "--mlflow-experiment",
        f"backfills-{name}",
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    want = with_model(local_records(events, data, ref), name, v1)
    assert_same_records(records, want)
    run_id = next(line for line in r.stdout.splitlines() if "-> run " in line).rsplit("-> run ", 1)[1]
    assert client(mlflow_server.uri).get_run(run_id).info.status == "FINISHED"
    c = client(mlflow_server.uri)
    # one step per window, in time order; the value is the record's
    windows = sorted({(x["window_end"], x["window_start"]) for x in records})
    psi = sorted(
        (x for x in records if x["feature"] == "x" and x["statistic"] == "psi" and not x["segment"]),
        key=lambda x: x["window_end"],
    )
    history = sorted(c.get_metric_history(run_id, "all/x/psi"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(len(windows)))
    assert [m.value for m in history] == pytest.approx([x["value"] for x in psi], rel=1e-12)
    assert [m.timestamp for m in history] == [parse_iso_ms(x["window_end"]) for x in psi]
    drift = sorted(c.get_metric_history(run_id, "all/x/psi/drift"), key=lambda m: m.step)
    assert [m.value for m in drift] == [float(x["drift"]) for x in psi]
    assert any(m.value == 1.0 for m in drift) and any(m.value == 0.0 for m in drift)
    de = c.get_metric_history(run_id, "country:de/x/ks")
    assert len(de) == len(windows)
    arts = [a.path for a in c.list_artifacts(run_id, "streamdrift")]
    assert arts == ["streamdrift/drift-report.html"]
    html = Path(c.download_artifacts(run_id, "streamdrift/drift-report.html", str(tmp_path))).read_text()
    assert "<title>Drift report: bf</title>" in html and f"model models:/{name}/{v1}" in html

    # a version without a profile: an error that says how to make one
    data["reference"] = f"models:/{name}/{v2}"
    config.write_text(json.dumps(data))
    backfill = ["backfill", "--config", str(config), "--input", str(tmp_path / "events.jsonl"), "--output", str(out)]
    r = cli(mlflow_env, *backfill, check=False)
    assert r.returncode == 2
    assert f"--mlflow-model {name} --mlflow-version {v2}" in r.stderr and "no streamdrift reference profile" in r.stderr
    # an alias that does not exist
    data["reference"] = f"models:/{name}@nope"
    config.write_text(json.dumps(data))
    r = cli(mlflow_env, *backfill, check=False)
    assert r.returncode == 2 and "alias 'nope'" in r.stderr and "not found" in r.stderr


# -- serve follows an alias -------------------------------------------------------------------------
def test_serve_follows_the_alias_and_never_mixes_versions(
    mlflow_server: MlflowServer, mlflow_env: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    name = f"churn-{uuid.uuid4().hex[:8]}"
    v1, v2 = register_versions(mlflow_server.uri, name, 2)
    ref1 = build_for(mlflow_env, tmp_path, name, v1, seed=1, x_mean=0.0)
    ref2 = build_for(mlflow_env, tmp_path, name, v2, seed=2, x_mean=1.0)  # the new model's inputs moved
    assert ref1.fingerprint != ref2.fingerprint
    c = client(mlflow_server.uri)
    c.set_registered_model_alias(name, "champion", v1)

    topics = topics_for(f"alias-{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, *topics.values())
    path, data = write_config(tmp_path, kafka_bootstrap, topics, concept={"detector": "none"})
    data["reference"] = f"models:/{name}@champion"
    data["mlflow"] = {"poll_interval": "500ms"}
    path.write_text(json.dumps(data))
    span = 1500 * STEP_MS  # 30 s of event time per phase: 3 windows, the last one still open at its end
    phase_a = make_events(1500, drift_at=1500, seed=21)
    phase_b = shifted(make_events(1500, drift_at=0, seed=22), span)
    phase_c = shifted(make_events(1500, drift_at=1500, seed=23), 2 * span)
    t_b, t_c = T0 + span, T0 + 2 * span

    log = tmp_path / "serve.log"
    stats = TopicReader(kafka_bootstrap, topics["stats"])
    env = dict(mlflow_env)
    proc = serve(path, log, env)

    def window_recs(version: str, before_ms: int | None = None, after_ms: int = 0) -> list[dict[str, Any]]:
        stats.poll(0.2)
        got = {}
        for r in stats.records():
            if r["statistic"] in WINDOW_STATISTICS and r["model_version"] == version:
                end = parse_iso_ms(r["window_end"])
                if end > after_ms and (before_ms is None or end <= before_ms):
                    got[window_key(r)] = r
        return list(got.values())

    try:
        # phase A under version 1: the windows the watermark closes
        produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in phase_a])
        want_a = with_model(local_records(phase_a, data, ref1), name, v1)
        closed_a = [r for r in want_a if parse_iso_ms(r["window_end"]) <= phase_a[-1]["timestamp"]]
        wait_for(lambda: len(window_recs(v1)) >= len(closed_a), proc, log, timeout=120)
        port = data["metrics"]["port"]
        wait_for(lambda: scrape(port)[("streamdrift_events_total", (("monitor", "it"), ("outcome", "valid")))] == 1500,
                 proc, log)  # fmt: skip
        assert len(window_recs(v1)) == len(closed_a)  # the last window is open

        # the alias moves: the open window of version 1 is closed and published as version 1
        c.set_registered_model_alias(name, "champion", v2)
        wait_for(lambda: len(window_recs(v1)) >= len(want_a), proc, log, timeout=60)
        assert_same_records(window_recs(v1), want_a)  # all of phase A's windows, the cut one included
        assert f"model switch: models:/{name}/{v1} (@champion) -> models:/{name}/{v2} (@champion)" in log.read_text()
        info = {k: v for k, v in scrape(port).items() if k[0] == "streamdrift_reference_info"}
        assert info == {
            (
                "streamdrift_reference_info",
                (
                    ("model_name", name),
                    ("model_version", v2),
                    ("monitor", "it"),
                    ("reference_fingerprint", ref2.fingerprint),
                ),
            ): 1.0
        }
        doc = newest_checkpoint(tmp_path / "state")
        assert doc is not None
        assert doc["state"]["reference"] == {"fingerprint": ref2.fingerprint, "model_name": name, "model_version": v2}
        assert doc["panes"]["fingerprint"] == ref2.fingerprint
        assert read_panes(tmp_path / "state", doc) == {}  # nothing of version 1 carried over

        # phase B under version 2, against its own profile
        produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in phase_b])
        want_b = with_model(local_records(phase_b, data, ref2), name, v2)
        closed_b = [r for r in want_b if parse_iso_ms(r["window_end"]) <= phase_b[-1]["timestamp"]]
        wait_for(lambda: len(window_recs(v2)) >= len(closed_b), proc, log, timeout=120)
        assert_same_records(window_recs(v2), closed_b)
        assert all(r["reference_fingerprint"] == ref2.fingerprint for r in window_recs(v2))
        assert all(parse_iso_ms(r["window_start"]) >= t_b for r in window_recs(v2))

        # serve stops with version 2's last window open; the alias moves back while it is down
        assert stop(proc) == 0
        c.set_registered_model_alias(name, "champion", v1)
        proc = serve(path, log, env)
        # at start, the checkpoint of version 2 is closed with version 2's profile: phase B complete
        wait_for(lambda: len(window_recs(v2)) >= len(want_b), proc, log, timeout=120)
        assert_same_records(window_recs(v2), want_b)
        assert f"checkpoint of models:/{name}/{v2}, now models:/{name}/{v1} (@champion): closing its" in log.read_text()
        # then phase C under version 1 again, from where phase B left off
        produce(kafka_bootstrap, topics["events"], [json.dumps(e).encode() for e in phase_c])
        want_c = with_model(local_records(phase_c, data, ref1), name, v1)
        closed_c = [r for r in want_c if parse_iso_ms(r["window_end"]) <= phase_c[-1]["timestamp"]]
        wait_for(lambda: len(window_recs(v1, after_ms=t_c)) >= len(closed_c), proc, log, timeout=120)
        assert_same_records(window_recs(v1, after_ms=t_c), closed_c)
        # nothing else: every record belongs to one phase and its version, and is keyed by its version
        stats.poll(1.0)
        everything = {(*window_key(r), r["model_version"]) for r in stats.records()}
        assert len(everything) == len(want_a) + len(want_b) + len(closed_c)
        assert all(m.key().decode() == alert_id(json.loads(m.value())) for m in stats.messages)
        assert stop(proc) == 0
    finally:
        kill(proc)
        stats.close()


def test_mlflow_over_https(mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MLflow client's own TLS settings (MLFLOW_TRACKING_SERVER_CERT_PATH) work for serve's look-ups."""
    from stream.exceptions import RegistryError
    from stream.modelref import ModelRegistry

    name = f"tls-{uuid.uuid4().hex[:8]}"
    (v1,) = register_versions(mlflow_server.uri, name, 1)
    certs = make_certificates(tmp_path / "tls")
    ref = build_reference(tmp_path / "ref.json")
    with TlsTerminator(mlflow_server.port, certs) as tls:
        https = f"https://127.0.0.1:{tls.port}"
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(certs.ca))
        reg = ModelRegistry(https)
        reg.log_reference(f"models:/{name}/{v1}", tmp_path / "ref.json", ref)
        got, mv = reg.load(f"models:/{name}/{v1}")
        assert got.fingerprint == ref.fingerprint and mv.version == v1
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(certs.other_ca))
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        with pytest.raises(RegistryError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            ModelRegistry(https).resolve(f"models:/{name}/{v1}")
