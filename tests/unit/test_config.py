"""The monitor configuration: the shipped example, defaults, and errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from detectors.config import FOREIGN_SECTIONS, MonitorConfig, parse_duration_ms
from detectors.exceptions import ConfigError

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "monitor.yaml"


def _cfg(**kw: Any) -> MonitorConfig:
    return MonitorConfig.from_mapping({"monitor": "m", "reference": "ref.json", **kw})


def test_shipped_example_is_valid_and_relative_reference_resolves() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    cfg = MonitorConfig.from_mapping(data, base_dir=EXAMPLE.parent)
    assert cfg.monitor == data["monitor"]
    assert Path(cfg.reference) == EXAMPLE.parent / data["reference"]
    assert cfg.window.size_ms == parse_duration_ms(data["window"]["size"])


def test_defaults() -> None:
    cfg = _cfg()
    assert cfg.window.kind == "tumbling" and cfg.window.size_ms == 300_000 and cfg.window.slide_ms == 300_000
    assert cfg.statistics.correction == "bonferroni" and cfg.statistics.min_events == 100
    assert cfg.statistics.psi.epsilon == 1e-4
    assert cfg.concept.detector == "adwin"
    assert not cfg.concept_active  # model_error needs prediction and label fields
    assert _cfg(events={"prediction_field": "s", "label_field": "y"}).concept_active
    assert _cfg(concept={"stream": "feature:x"}).concept_active
    assert not _cfg(concept={"detector": "none", "stream": "feature:x"}).concept_active


def test_foreign_sections_are_left_to_their_owners() -> None:
    cfg = _cfg(**{k: {"anything": 1} for k in FOREIGN_SECTIONS})
    assert cfg.monitor == "m"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"statistcs": {}}, "statistcs: unknown setting"),
        ({"statistics": {"psi": {"warnign": 0.2}}}, "statistics.psi.warnign: unknown setting"),
        ({"statistics": {"psi": {"warning": 0.3, "critical": 0.2}}}, "psi.critical"),
        ({"statistics": {"psi": {"warning": -1}}}, "statistics.psi.warning"),
        ({"statistics": {"ks": {"alpha": 1.5}}}, "statistics.ks.alpha"),
        ({"statistics": {"chi2": {"alpha": 0}}}, "statistics.chi2.alpha"),
        ({"statistics": {"correction": "holm"}}, "statistics.correction"),
        ({"statistics": {"min_events": 0}}, "statistics.min_events"),
        ({"window": {"kind": "sliding", "size": "10m"}}, "window.slide"),
        ({"window": {"kind": "sliding", "size": "10m", "slide": "3m"}}, "window.slide"),
        ({"window": {"kind": "count", "size": "5m"}}, "window.size"),
        ({"window": {"kind": "count", "size": 100, "slide": 10}}, "window.slide"),
        ({"window": {"kind": "count", "size": 0}}, "window.size"),
        ({"window": {"size": "5 minutes"}}, "window.size"),
        ({"window": {"size": "1.0005s"}}, "window.size"),
        ({"window": {"keep_raw": True}}, "window.keep_raw"),
        ({"window": {"allowed_lateness": "soon"}}, "window.allowed_lateness"),
        ({"window": {"kind": "hopping"}}, "window.kind"),
        ({"monitor": "has space"}, "\n  monitor: String should match pattern"),
        ({"events": {"time_unit": "micros"}}, "events.time_unit"),
        ({"events": {"min_time": "the eighties"}}, "events.min_time"),
        ({"events": {"max_future_skew": "0s"}}, "events.max_future_skew"),
        ({"events": {"max_future_skew": "an hour"}}, "events.max_future_skew"),
        ({"concept": {"stream": "score"}}, "concept.stream"),
        ({"concept": {"stream": "feature:"}}, "concept.stream"),
        ({"concept": {"detector": "cusum"}}, "concept.detector"),
        ({"concept": {"params": {"deltaa": 0.1}}}, "concept: params: ['deltaa']"),
        ({"concept": {"detector": "kswin", "params": {"window_size": 10}}}, "concept: kswin rejects"),
        ({"segments": {"max_segments": 0}}, "segments.max_segments"),
    ],
)
def test_malformed_config_error_names_the_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(**patch)
    msg = str(info.value)
    assert msg.startswith("invalid monitor config:")
    assert field in msg, msg


def test_missing_required_fields_and_non_mapping() -> None:
    with pytest.raises(ConfigError, match="reference"):
        MonitorConfig.from_mapping({"monitor": "m"})
    with pytest.raises(ConfigError, match="mapping"):
        MonitorConfig.from_mapping(["monitor"])  # type: ignore[arg-type]


def test_sliding_and_count_windows() -> None:
    w = _cfg(window={"kind": "sliding", "size": "10m", "slide": "2m"}).window
    assert (w.size_ms, w.slide_ms) == (600_000, 120_000)
    c = _cfg(window={"kind": "count", "size": "250", "keep_raw": True}).window
    assert c.count == 250 and c.keep_raw


@pytest.mark.parametrize(
    ("text", "ms"),
    [("250ms", 250), ("90s", 90_000), ("5m", 300_000), ("2h", 7_200_000), ("1d", 86_400_000), (0, 0), ("0", 0)],
)
def test_parse_duration(text: Any, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("bad", [True, "x", "5 weeks", None, "0.0001ms", 3, 2.5, "5"])
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"window\.size"):
        parse_duration_ms(bad, "window.size")


@pytest.mark.parametrize("size", [5, "5", 300])
def test_a_bare_number_is_not_a_time_window_size(size: Any) -> None:
    """``size: 5`` on a time window once meant 5 seconds (2,000 one-event windows): now an error that
    names the setting and suggests the units."""
    with pytest.raises(ConfigError) as err:
        _cfg(window={"kind": "tumbling", "size": size})
    text = str(err.value)
    assert "window.size" in text and f"'{size}s'" in text and f"'{size}m'" in text
    for setting in ("allowed_lateness", "idle_timeout"):
        with pytest.raises(ConfigError, match=rf"window\.{setting}.*'30s'"):
            _cfg(window={setting: 30})
    with pytest.raises(ConfigError, match=r"events\.max_future_skew"):
        _cfg(events={"max_future_skew": 3600})
    # count windows still count events; 0 needs no unit
    assert _cfg(window={"kind": "count", "size": size}).window.count == int(size)
    assert _cfg(window={"allowed_lateness": 0}).window.allowed_lateness_ms == 0


def test_event_fields_are_never_features_unless_listed() -> None:
    from detectors.config import reference_columns

    raw = {
        "events": {
            "time_field": "sold_at",
            "segment_fields": ["region"],
            "prediction_field": "pred",
            "label_field": "price",
            "id_field": "listing_id",
        }
    }
    columns = ["listing_id", "sold_at", "region", "pred", "price", "area", "rooms"]
    assert reference_columns(columns, None, [], raw) == (["area", "rooms"], [])
    assert _cfg(**raw).events.fields == {"sold_at", "features", "region", "pred", "price", "listing_id"}
    # listed, an event field is a feature
    assert reference_columns(columns, None, [], {**raw, "features": {"include": ["area", "price"]}})[0] == [
        "area",
        "price",
    ]
    assert reference_columns(columns, ["pred"], [], raw)[0] == ["pred"]
