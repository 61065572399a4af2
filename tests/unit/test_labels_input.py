"""The labels section of the monitor config (errors name the setting) and the decoding of label events
and prediction ids."""

from __future__ import annotations

import pytest

from detectors.config import MonitorConfig, reference_columns
from detectors.events import decode_events, decode_labels
from detectors.exceptions import ConfigError
from detectors.reference import ReferenceProfile
from stream.decode import reason_code

pytestmark = pytest.mark.unit

BASE = {"monitor": "m", "reference": "r.json", "events": {"prediction_field": "score"}}
NOW = 1_767_225_600_000


def cfg(**labels: object) -> MonitorConfig:
    return MonitorConfig.from_mapping({**BASE, "labels": {"max_delay": "1h", **labels}})


def test_defaults() -> None:
    lab = cfg().labels
    assert lab is not None
    assert (lab.id_field, lab.label_field, lab.task, lab.threshold, lab.budget) == (
        "id",
        "label",
        "classification",
        0.5,
        10_000_000,
    )
    assert (lab.max_delay_ms, lab.clock_skew_ms, lab.min_coverage) == (3_600_000, 60_000, 0.95)
    assert lab.chosen_metrics == ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier")
    assert cfg(task="regression").labels.chosen_metrics == ("mae", "rmse", "mape", "bias")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"labels": {}}, "labels.max_delay: Field required"),
        ({"labels": {"max_delay": "0s"}}, "labels.max_delay: '0s' is not positive"),
        ({"labels": {"max_delay": "soon"}}, "labels.max_delay: 'soon' is not a duration"),
        ({"labels": {"max_delay": "1h", "threshold": 1.0}}, "labels.threshold: Input should be less than 1"),
        ({"labels": {"max_delay": "1h", "metrics": ["mae"]}}, "labels.metrics: ['mae'] are not metrics of task"),
        ({"labels": {"max_delay": "1h", "min_drop": {"rate": 0.2}}}, "labels.critical_drop.rate (0.05) must be >="),
        ({"labels": {"max_delay": "1h", "budjet": 5}}, "labels.budjet: unknown setting"),
        ({"labels": {"max_delay": "1h", "task": "ranking"}}, "labels.task: Input should be 'classification'"),
    ],
)
def test_errors_name_the_setting(section: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        MonitorConfig.from_mapping({**BASE, **section})
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"events": {}}, "labels: needs events.prediction_field"),
        ({"events": {"prediction_field": "s", "label_field": "y"}}, "events.label_field (labels inside the"),
        ({"window": {"kind": "count", "size": 100}}, "use tumbling or sliding windows"),
    ],
)
def test_labels_need_a_score_time_windows_and_no_inline_labels(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        MonitorConfig.from_mapping({**BASE, **change, "labels": {"max_delay": "1h"}})
    assert message in str(err.value)


def test_concept_detection_runs_on_joined_labels() -> None:
    c = cfg()
    assert c.concept_active and c.concept_on_labels
    plain = MonitorConfig.from_mapping(BASE)
    assert not plain.concept_active and not plain.concept_on_labels


def test_reference_build_skips_the_id_and_label_columns() -> None:
    feats, _ = reference_columns(["ts", "id", "y", "score", "x"], None, [], {**BASE, "labels": {"label_field": "y"}})
    assert feats == ["x"]


def test_decode_labels() -> None:
    c = cfg(time_field="at")
    rows = [
        {"id": "a", "label": 1, "at": NOW},
        {"id": 7, "label": True, "at": "2026-01-01T00:00:01Z"},
        {"id": "b", "label": 2, "at": NOW},
        {"label": 0, "at": NOW},
        {"id": "c", "at": NOW},
        {"id": "d", "label": 0},
        {"id": "e", "label": "yes", "at": NOW},
        "nonsense",
        {"id": "f", "label": 0, "at": 1980},
    ]
    cols, errors = decode_labels(rows, c, now_ms=NOW)
    assert cols.ids == ["a", "7"] and cols.label.tolist() == [1.0, 1.0] and cols.time_ms.tolist() == [NOW, NOW + 1000]
    reasons = dict(errors)
    assert "is not 0 or 1" in reasons[2]
    assert reasons[3].startswith("label event without a usable id field 'id'")
    assert reasons[4].startswith("label event without its label field 'label'")
    assert reasons[5] == "missing label time field 'at'"
    assert "expected a number, got str" in reasons[6]
    codes = [reason_code(r) for _i, r in errors]
    assert codes == [
        "bad_type",
        "missing_field",
        "missing_field",
        "missing_field",
        "bad_type",
        "not_object",
        "implausible_time",
    ]
    reg, errors = decode_labels([{"id": "a", "label": -3.5, "timestamp": NOW}], cfg(task="regression"), now_ms=NOW)
    assert reg.label.tolist() == [-3.5] and not errors


def test_prediction_ids_are_decoded_with_a_labels_section() -> None:
    import numpy as np

    ref = ReferenceProfile.build({"x": np.arange(200.0)}, calibrate=False)
    rows = [
        {"timestamp": NOW, "id": "a", "score": 0.3, "features": {"x": 1.0}},
        {"timestamp": NOW, "id": 12, "score": 0.3, "features": {"x": 1.0}},
        {"timestamp": NOW, "score": 0.3, "features": {"x": 1.0}},
        {"timestamp": NOW, "id": 1.5, "score": 0.3, "features": {"x": 1.0}},
    ]
    cols, errors = decode_events(rows, cfg(), ref, ["x"], now_ms=NOW)
    assert not errors and cols.ids == ["a", "12", None, None]  # a missing or unusable id is no rejection
    plain, _ = decode_events(rows, MonitorConfig.from_mapping(BASE), ref, ["x"], now_ms=NOW)
    assert plain.ids is None


def test_the_example_config_documents_every_labels_setting() -> None:
    from pathlib import Path

    import yaml

    from detectors.config import LabelsConfig

    text = (Path(__file__).resolve().parents[2] / "deploy" / "examples" / "monitor.yaml").read_text()
    block = [line[1:] for line in text.splitlines() if line.startswith("#labels:") or line.startswith("#  ")]
    doc = yaml.safe_load("\n".join(block))
    assert set(doc["labels"]) == set(LabelsConfig.model_fields)
    example = yaml.safe_load(text)
    del example["events"]["label_field"]
    example.update(doc)
    config = MonitorConfig.from_mapping({k: v for k, v in example.items()})
    defaults = LabelsConfig(max_delay="1d")
    assert config.labels == defaults.model_copy(update={"topic": "labels"})  # every value shown is the default


def test_serve_takes_a_labels_section_with_a_topic(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from stream.cli import main

    doc = {**BASE, "labels": {"max_delay": "1h"}, "kafka": {"bootstrap_servers": "127.0.0.1:1", "topic": "t"}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    assert main(["serve", "--config", str(tmp_path / "m.yaml"), "--check"]) == 2
    assert "labels.topic: serve reads the labels from a topic; name it" in capsys.readouterr().err
    doc["labels"]["topic"] = "t"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    assert main(["serve", "--config", str(tmp_path / "m.yaml"), "--check"]) == 2
    assert "labels.topic: 't' is kafka.topic" in capsys.readouterr().err
    doc["labels"]["topic"] = "labels"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    assert main(["serve", "--config", str(tmp_path / "m.yaml"), "--check"]) == 0
    assert "config ok" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("labels", "task"),
    [
        ([0, 1, 1, None, 0.0, float("nan")], "classification"),
        ([True, False], "classification"),
        ([0, 1, 2], "regression"),
        ([0.5, 1.0], "regression"),
        ([None, None], "regression"),
        (["yes", "no"], "regression"),
    ],
)
def test_the_task_of_a_baseline_without_labels_task_comes_from_its_labels(labels: list[object], task: str) -> None:
    from stream.cli.labels import _infer_task

    assert _infer_task(labels) == task
