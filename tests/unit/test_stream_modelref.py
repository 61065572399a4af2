"""Pure logic of the MLflow layer: model URIs in the config, metric names and steps of a backfill, the
reference info series (the registry itself is exercised against a real server in tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from detectors.config import MonitorConfig, parse_model_uri
from detectors.evaluate import alert_id
from detectors.exceptions import ConfigError
from stream.metrics import Metrics
from stream.modelref import ModelVersion, metric_key, window_metrics

pytestmark = pytest.mark.unit


def test_model_uris_are_not_paths_and_bad_ones_fail_at_load(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    cfg = MonitorConfig.from_mapping({"monitor": "m", "reference": "models:/fraud@champion"}, base_dir=base)
    assert cfg.reference == "models:/fraud@champion"  # (not made relative to the config's directory)
    assert MonitorConfig.from_mapping({"monitor": "m", "reference": "r.json"}, base_dir=base).reference == str(
        base / "r.json"
    )
    assert parse_model_uri("models:/a.b-c/12") == ("a.b-c", "12", None)
    for bad in ("models:/fraud", "models:/fraud/Production", "models:/fraud@", "models:/fraud/1/2"):
        with pytest.raises(ConfigError, match="reference") as exc:
            MonitorConfig.from_mapping({"monitor": "m", "reference": bad})
        assert "models:/NAME/VERSION" in str(exc.value)


def _rec(start: str, end: str, feature: str, statistic: str, value: float | None, drift: bool | None, **seg: str):
    return {
        "segment": seg,
        "feature": feature,
        "statistic": statistic,
        "value": value,
        "drift": drift,
        "window_start": start,
        "window_end": end,
    }


def test_window_metrics_one_step_per_window_and_undefined_left_out() -> None:
    w1 = ("2026-01-01T00:00:00.000Z", "2026-01-01T00:05:00.000Z")
    w2 = ("2026-01-01T00:05:00.000Z", "2026-01-01T00:10:00.000Z")
    records = [
        _rec(*w2, "age", "psi", 0.3, True),  # (out of order: steps follow time, not input order)
        _rec(*w1, "age", "psi", 0.01, False),
        _rec(*w1, "age", "ks", None, None),  # too few events: no metric, never 0
        _rec(*w1, "plan/tier", "chi2", 4.5, False, country="de"),
    ]
    got = window_metrics(records)
    assert got == [
        ("all/age/psi", 0.3, 1767226200000, 1),
        ("all/age/psi/drift", 1.0, 1767226200000, 1),
        ("all/age/psi", 0.01, 1767225900000, 0),
        ("all/age/psi/drift", 0.0, 1767225900000, 0),
        ("country:de/plan_tier/chi2", 4.5, 1767225900000, 0),
        ("country:de/plan_tier/chi2/drift", 0.0, 1767225900000, 0),
    ]
    assert metric_key({"segment": {"a": "x y", "b": "é"}, "feature": "f", "statistic": "ks"}) == "a:x y,b:é/f/ks"
    # count windows whose times tie: a step each, in window_index order
    tied = [{**_rec(*w1, "age", "psi", 0.1 * k, False), "window_index": k} for k in (2, 0, 1)]
    assert [(v, step) for _k, v, _ts, step in window_metrics(tied) if _k == "all/age/psi"] == [
        (0.2, 2),
        (0.0, 0),
        (0.1, 1),
    ]


def test_reference_info_names_the_model_version_and_follows_a_switch() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, "mon")
    m.set_reference("sha256:aa")
    labels = {"monitor": "mon", "reference_fingerprint": "sha256:aa", "model_name": "", "model_version": ""}
    assert reg.get_sample_value("streamdrift_reference_info", labels) == 1
    m.set_reference("sha256:bb", ModelVersion("fraud", "7", "run1", "champion"))
    m.set_reference("sha256:cc", ModelVersion("fraud", "8", "run2", "champion"))
    series = [s for fam in reg.collect() for s in fam.samples if s.name == "streamdrift_reference_info"]
    # one series, the one in force: a switch does not pile up series
    assert [(s.labels["model_version"], s.labels["reference_fingerprint"], s.value) for s in series] == [
        ("8", "sha256:cc", 1.0)
    ]


def test_alert_ids_key_on_the_model_version_only_when_there_is_one() -> None:
    rec = {
        "monitor": "m",
        "segment": {},
        "feature": "x",
        "statistic": "psi",
        "window_start": "a",
        "window_end": "b",
        "reference_fingerprint": "sha256:1",
    }
    plain = alert_id(rec)
    assert alert_id(dict(rec, model_name=None, model_version=None)) == plain  # file references: ids as before
    v7 = alert_id(dict(rec, model_name="fraud", model_version="7"))
    v8 = alert_id(dict(rec, model_name="fraud", model_version="8"))
    assert len({plain, v7, v8}) == 3


class _FakeRegistry:
    """Resolves an alias to whatever version the test says (pure logic: no MLflow here)."""

    def __init__(self) -> None:
        self.version = "1"
        self.fetched: list[str] = []

    def resolve(self, uri: str) -> ModelVersion:
        return ModelVersion("fraud", self.version, f"run{self.version}", "champion")

    def fetch_reference(self, mv: ModelVersion) -> Any:
        self.fetched.append(mv.version)
        return f"profile of {mv.version}"


def test_the_alias_watcher_hands_over_each_move_once_and_ignores_a_move_back() -> None:
    from stream.modelref import AliasWatcher

    reg = _FakeRegistry()
    w = AliasWatcher(reg, "models:/fraud@champion", reg.resolve(""), interval_s=60)  # type: ignore[arg-type]
    w.poll_once()
    assert w.take() is None and reg.fetched == []  # not moved: nothing fetched
    reg.version = "2"
    w.poll_once()
    w.poll_once()  # (polled again before the loop took it: not fetched twice)
    got = w.take()
    assert got is not None and got[1].version == "2" and got[0] == "profile of 2" and reg.fetched == ["2"]
    assert w.take() is None
    reg.version = "3"
    w.poll_once()
    reg.version = "2"  # ... and back, before the loop looked: no switch at all
    w.poll_once()
    assert w.take() is None
    reg.version = "3"
    w.poll_once()
    got = w.take()
    assert got is not None and got[1].version == "3"
