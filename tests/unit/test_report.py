"""`streamdrift report`: render from a known records file and check what the page says.

The records come from ``detectors.engine.run_local`` on seeded events with an injected
drift (``x`` shifts from window 6, ``c`` changes its mix from window 7, ``y`` never
changes, window 3 is too small for a verdict). Every expectation is recomputed here from
the records or the events, never typed in.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors.config import MonitorConfig
from detectors.engine import run_local
from detectors.evaluate import SEVERITY_LEVEL, WINDOW_STATISTICS, iso_ms, segment_label
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.cli import main
from stream.records import write_records

pytestmark = pytest.mark.unit

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WINDOW_MS = 5 * 60_000
N_WINDOWS = 10
PER_WINDOW = 400
SMALL_WINDOW = 3  # holds only 60 events: no verdict
CONFIG = {
    "monitor": "report-test",
    "reference": "reference.json",
    "events": {"time_field": "ts", "segment_fields": ["region"]},
    "window": {"kind": "tumbling", "size": "5m"},
    "statistics": {
        "false_alarm_rate": 0.02,
        "psi": {"warning": 0.12, "critical": 0.3},
        "ks": {"critical_statistic": 0.25},
        "chi2": {"critical_cramers_v": 0.15},
    },
    "concept": {"detector": "none"},
}
CATS = ["a", "b", "c"]


def _events(rng: np.random.Generator) -> list[dict[str, Any]]:
    out = []
    for w in range(N_WINDOWS):
        n = 60 if w == SMALL_WINDOW else PER_WINDOW
        shift = 0.8 if w >= 6 else 0.0
        p = [0.2, 0.3, 0.5] if w >= 7 else [0.5, 0.3, 0.2]
        x = rng.normal(shift, 1.0, n)
        y = rng.uniform(0.0, 1.0, n)
        c = rng.choice(CATS, size=n, p=p)
        region = rng.choice(["north", "south"], size=n)
        ts = START_MS + w * WINDOW_MS + np.sort(rng.integers(0, WINDOW_MS, n))
        for i in range(n):
            out.append(
                {
                    "ts": int(ts[i]),
                    "region": str(region[i]),
                    "features": {"x": float(x[i]), "y": float(y[i]), "c": str(c[i])},
                }
            )
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(20261123)
    ref = ReferenceProfile.build(
        {
            "x": rng.normal(0.0, 1.0, 20_000),
            "y": rng.uniform(0.0, 1.0, 20_000),
            "c": np.array(rng.choice(CATS, size=20_000, p=[0.5, 0.3, 0.2]), dtype=object),
        },
        categorical=["c"],
        calibration_replicates=2000,
    )
    ref.save(d / "reference.json")
    (d / "monitor.yaml").write_text(json.dumps(CONFIG))  # JSON is YAML
    events = _events(rng)
    with (d / "events.jsonl").open("w") as fh:
        for ev in events:
            fh.write(json.dumps(ev) + "\n")
    config = MonitorConfig.from_mapping(CONFIG, base_dir=d)
    layout = Layout(ref, None)
    cols, errors = decode_events(events, config, ref, layout.features)
    assert not errors
    records = run_local(cols, config, ref, layout)
    write_records(d / "records.jsonl", records)
    return {"dir": d, "records": records, "events": events, "reference": ref, "config": config}


class Page(HTMLParser):
    """Collects what the tests look at: tags with attributes, inline scripts, table rows, text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self._table: str | None = None
        self._row: dict[str, Any] | None = None
        self._cell: list[str] | None = None
        self._script: list[str] | None = None
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self._script = []
        elif tag == "table":
            self._table = a.get("id") or ""
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": a, "cells": []}
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.scripts.append("".join(self._script))
            self._script = None
        elif tag == "td" and self._cell is not None and self._row is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            if self._row["cells"]:
                self.rows.setdefault(self._table, []).append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.append(data)
            return
        if self._cell is not None:
            self._cell.append(data)
        self.text.append(data)

    def figures(self) -> dict[str, dict[str, Any]]:
        """div id -> {"data": [...], "layout": {...}} from the inline Plotly.newPlot calls."""
        out = {}
        dec = json.JSONDecoder()
        for s in self.scripts:
            for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', s):
                data, end = dec.raw_decode(s, m.end())
                rest = s[end:].lstrip().removeprefix(",").lstrip()
                layout, _ = dec.raw_decode(rest)
                out[m.group(1)] = {"data": data, "layout": layout}
        return out


def _render(d: Path, *args: str, out: str = "report.html") -> tuple[int, Page, str]:
    code = main(["report", *args, "--out", str(d / out)])
    text = (d / out).read_text(encoding="utf-8") if code == 0 else ""
    return code, Page(text), text


def _segment(records: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    return [r for r in records if segment_label(r["segment"]) == label and r["statistic"] in WINDOW_STATISTICS]


def _display(iso: str) -> str:
    return iso.replace("T", " ")[:19]


def _expected_runs(recs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """Consecutive drifted windows, recomputed from the records: (first start, the windows' starts)."""
    runs: list[tuple[str, list[str]]] = []
    prev = False
    for w in sorted({r["window_start"] for r in recs}):
        hit = any(r["drift"] for r in recs if r["window_start"] == w)
        if hit and not prev:
            runs.append((w, []))
        if hit:
            runs[-1][1].append(w)
        prev = hit
    return runs


@pytest.fixture(scope="module")
def full(data: dict[str, Any]) -> tuple[Page, str]:
    d = data["dir"]
    code, page, text = _render(
        d,
        "--records",
        str(d / "records.jsonl"),
        "--config",
        str(d / "monitor.yaml"),
        "--events",
        str(d / "events.jsonl"),
        out="full.html",
    )
    assert code == 0
    return page, text


def test_every_feature_and_drifted_window_in_the_summary(data: dict[str, Any], full: tuple[Page, str]) -> None:
    page, _ = full
    recs = _segment(data["records"], "__all__")
    features = sorted({r["feature"] for r in recs})
    assert features == ["c", "x", "y"]
    summary = {row["attrs"]["data-feature"]: row["cells"] for row in page.rows["feature-summary"]}
    assert sorted(summary) == features
    for f in features:
        fr = [r for r in recs if r["feature"] == f]
        worst = max((r["severity"] for r in fr), key=lambda s: SEVERITY_LEVEL[s])
        drifted = sorted({r["window_start"] for r in fr if r["drift"]})
        cells = summary[f]
        assert cells[1] == worst
        assert cells[2] == (_display(drifted[0]) if drifted else "–")
        n_windows = len({r["window_start"] for r in fr})
        assert cells[3] == f"{len(drifted)} / {n_windows}"
        psi_max = max(r["value"] for r in fr if r["statistic"] == "psi" and r["value"] is not None)
        assert float(cells[4]) == pytest.approx(psi_max, rel=1e-3)
        no_verdict = len({r["window_start"] for r in fr if r["severity"] == "insufficient_data"})
        assert cells[8] == str(no_verdict)
    # the injected drift is found, and only there
    assert summary["x"][1] in ("warning", "critical") and summary["c"][1] in ("warning", "critical")
    # the drifted windows: runs of consecutive ones, each with what drifted in it (plain text, no badges)
    expected = _expected_runs(recs)
    assert expected, "the injected drift must produce drifted windows"
    runs = page.rows["drift-runs"]
    assert [(r["attrs"]["data-window-start"], int(r["attrs"]["data-windows"])) for r in runs] == [
        (start, len(ws)) for start, ws in expected
    ]
    for row, (_start, ws) in zip(runs, expected, strict=True):
        assert row["attrs"]["data-starts"].split() == ws
        feats_hit = {r["feature"] for r in recs if r["window_start"] in ws and r["drift"]}
        for f in features:
            assert (f"{f} (" in row["cells"][4]) == (f in feats_hit), row
        assert row["cells"][2] == str(len(ws))
    assert "sev sev-" not in str(runs)
    # and the map: one cell per feature and window, its worst verdict's level
    grid = page.figures()["drift-map"]["data"][0]
    starts = sorted({r["window_start"] for r in recs})
    assert grid["type"] == "heatmap" and grid["x"] == [_display(w) for w in starts]
    level = {"insufficient_data": 0, "ok": 1, "warning": 2, "critical": 3}
    for i, f in enumerate(grid["y"]):
        for j, w in enumerate(starts):
            sev = [r["severity"] for r in recs if r["feature"] == f and r["window_start"] == w]
            assert grid["z"][i][j] == max(level[x] for x in sev)
    # every feature has its chart
    ids = {a.get("id") for _t, a in page.tags}
    assert {f"feature-{f}" for f in features} <= ids


def test_charts_draw_statistics_thresholds_and_gaps(data: dict[str, Any], full: tuple[Page, str]) -> None:
    page, _ = full
    cfg = data["config"].statistics
    figs = page.figures()
    recs = _segment(data["records"], "__all__")
    stat_figs = {k: v for k, v in figs.items() if k.startswith("stat-")}
    assert len(stat_figs) == 3
    by_feature = {}
    for fig in stat_figs.values():
        # which feature: the one whose PSI series (from the records) the figure draws
        feature = None
        psi_trace = next(t for t in fig["data"] if t.get("name") == "PSI")
        for f in ("x", "y", "c"):
            want = [
                r["value"]
                for r in sorted(recs, key=lambda r: r["window_start"])
                if r["feature"] == f and r["statistic"] == "psi"
            ]
            if psi_trace["y"] == want:
                feature = f
        assert feature is not None
        by_feature[feature] = fig
    assert sorted(by_feature) == ["c", "x", "y"]
    for f, fig in by_feature.items():
        lines = {t["name"]: t["y"] for t in fig["data"] if t.get("line", {}).get("dash") == "dash"}
        assert lines[f"PSI critical {cfg.psi.critical:g}"] == [cfg.psi.critical] * 2
        rate = f"false-alarm rate {cfg.false_alarm_rate:g}"
        assert lines[rate] == [cfg.false_alarm_rate] * 2
        if f == "c":
            assert lines[f"critical Cramér's V {cfg.chi2.critical_cramers_v:g}"] == [cfg.chi2.critical_cramers_v] * 2
        else:
            assert lines[f"KS critical D {cfg.ks.critical_statistic:g}"] == [cfg.ks.critical_statistic] * 2
        # each window's own threshold (calibrated at its size), from the records, in the first row
        first = [
            r["threshold"]
            for r in sorted(recs, key=lambda r: r["window_start"])
            if r["feature"] == f and r["statistic"] == "psi"
        ]
        threshold = next(t for t in fig["data"] if t.get("name") == "threshold")
        assert threshold["y"][: len(first)] == first
        # no verdict is a gap, never 0
        psi = next(t for t in fig["data"] if t.get("name") == "PSI")
        small = iso_ms(START_MS + SMALL_WINDOW * WINDOW_MS)
        starts = sorted(r["window_start"] for r in recs if r["feature"] == f and r["statistic"] == "psi")
        assert psi["y"][starts.index(small)] is None
        # one shaded band per drifted window of the feature
        drifted = {r["window_start"] for r in recs if r["feature"] == f and r["drift"]}
        bands = {(sh["x0"], sh["x1"]) for sh in fig["layout"].get("shapes", [])}
        assert {x0[:19].replace(" ", "T") + ".000Z" for x0, _ in bands} == drifted
    # Cramér's V drawn for chi-square: the size-balanced sqrt(X² / (4 n_e)), as the verdict uses it
    cv = next(t for t in by_feature["c"]["data"] if t.get("name") == "Cramér's V")
    chi = sorted((r for r in recs if r["feature"] == "c" and r["statistic"] == "chi2"), key=lambda r: r["window_start"])
    for got, r in zip(cv["y"], chi, strict=True):
        if r["value"] is None:
            assert got is None
        else:
            n, m = r["n_window"], r["n_reference"]
            assert got == pytest.approx((r["value"] * (n + m) / (4 * n * m)) ** 0.5)


def test_self_contained_no_network(full: tuple[Page, str]) -> None:
    page, text = full
    assert not re.search(r"<script[^>]*\bsrc=", text)
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            v = attrs.get(key)
            if v is not None:
                assert not re.match(r"^(https?:)?//", v), f"<{tag} {key}={v}> needs the network"
                assert tag != "script", "scripts must be inline"
    assert not any(tag == "link" for tag, _ in page.tags)
    bundles = [s for s in page.scripts if "plotly.js v" in s[:300]]
    assert len(bundles) == 1, "plotly.js must be inlined exactly once"
    # every figure is drawn into a div of the page
    ids = {a.get("id") for _t, a in page.tags if _t == "div"}
    figs = page.figures()
    assert figs and set(figs) <= ids


def test_histograms_of_the_most_drifted_window(data: dict[str, Any], full: tuple[Page, str]) -> None:
    page, _ = full
    recs = _segment(data["records"], "__all__")
    # the most drifted window: most severity points, then the largest PSI
    score: dict[str, tuple[int, float]] = {}
    for r in recs:
        if r["drift"]:
            lvl, psi = score.get(r["window_start"], (0, 0.0))
            score[r["window_start"]] = (
                lvl + SEVERITY_LEVEL[r["severity"]],
                max(psi, r["value"] if r["statistic"] == "psi" else 0.0),
            )
    want = min(score, key=lambda w: (-score[w][0], -score[w][1], w))
    h2 = next(a for t, a in page.tags if t == "h2" and a.get("id") == "histograms")
    assert h2["data-window-start"] == want
    # recompute that window's histogram independently from the events
    ref: ReferenceProfile = data["reference"]
    lo = int(np.datetime64(want.rstrip("Z"), "ms").astype(np.int64))
    evs = [e for e in data["events"] if lo <= e["ts"] < lo + WINDOW_MS]
    figs = page.figures()
    hist = [f for k, f in figs.items() if k.startswith("hist-")]
    assert len(hist) == 3
    x = np.array([e["features"]["x"] for e in evs])
    px = ref.features["x"]
    coarse_edges = np.array([px.edges[s - 1] for s in px.coarse_starts[1:]])
    wx = np.bincount(np.searchsorted(coarse_edges, x, side="right"), minlength=px.n_coarse)
    rx = np.add.reduceat(np.array(px.counts), np.array(px.coarse_starts))
    x_fig = next(
        f for f in hist if "coarse" in f["layout"]["title"]["text"] and f["layout"]["title"]["text"].startswith("x")
    )
    traces = {t["name"]: t for t in x_fig["data"]}
    assert traces["window"]["y"] == pytest.approx((wx / wx.sum()).tolist())
    assert traces["reference"]["y"] == pytest.approx((rx / rx.sum()).tolist())
    # overlaid on one pair of labelled axes, not side by side
    assert traces["window"]["type"] == "bar" and x_fig["layout"]["barmode"] == "overlay"
    assert traces["window"].get("xaxis", "x") == traces["reference"].get("xaxis", "x") == "x"
    assert 0 < traces["reference"]["opacity"] < 1 and traces["window"]["marker"]["line"]["width"] > 0
    assert x_fig["layout"]["yaxis"]["title"]["text"] == "share of events"
    assert "coarse PSI bin" in x_fig["layout"]["xaxis"]["title"]["text"]
    c_fig = next(f for f in hist if f["layout"]["title"]["text"].startswith("c"))
    assert c_fig["layout"]["barmode"] == "group"
    assert c_fig["layout"]["yaxis"]["title"]["text"] == "share of events"
    counts = Counter(e["features"]["c"] for e in evs)
    ctr = {t["name"]: t for t in c_fig["data"]}
    buckets = list(ref.features["c"].buckets)
    assert ctr["window"]["x"] == buckets
    assert ctr["window"]["y"] == pytest.approx([counts.get(b, 0) / len(evs) for b in buckets])


def test_records_only_draws_what_it_knows(data: dict[str, Any]) -> None:
    d = data["dir"]
    code, page, text = _render(d, "--records", str(d / "records.jsonl"), out="bare.html")
    assert code == 0
    note = next(a for t, a in page.tags if a.get("id") == "histogram-note")
    assert note is not None
    assert not [k for k in page.figures() if k.startswith("hist-")]
    # each window's threshold comes from the records; critical levels and the rate are unknown, so not drawn
    names = {t.get("name", "") for f in page.figures().values() for t in f["data"]}
    assert "threshold" in names
    assert not any("critical" in n or "false-alarm" in n for n in names)
    assert "pass --config to draw the critical levels" in text


def test_reference_without_events_shows_reference_only(data: dict[str, Any]) -> None:
    d = data["dir"]
    code, page, text = _render(
        d, "--records", str(d / "records.jsonl"), "--reference", str(d / "reference.json"), out="ref.html"
    )
    assert code == 0
    hist = [f for k, f in page.figures().items() if k.startswith("hist-")]
    assert len(hist) == 3
    assert all({t["name"] for t in f["data"]} == {"reference"} for f in hist)
    assert "--events and --config not given" in text


def test_segment_window_and_parquet(data: dict[str, Any]) -> None:
    d = data["dir"]
    write_records(d / "records.parquet", data["records"])
    recs = _segment(data["records"], "region=south")
    start = iso_ms(START_MS + 2 * WINDOW_MS)
    code, page, _ = _render(
        d,
        "--records",
        str(d / "records.parquet"),
        "--config",
        str(d / "monitor.yaml"),
        "--events",
        str(d / "events.jsonl"),
        "--segment",
        "region=south",
        "--window",
        start,
        out="south.html",
    )
    assert code == 0
    listed = [row["attrs"]["data-window-start"] for row in page.rows.get("drift-runs", [])]
    assert listed == [start for start, _ws in _expected_runs(recs)]
    h2 = next(a for t, a in page.tags if t == "h2" and a.get("id") == "histograms")
    assert h2["data-window-start"] == start
    # the recomputed window holds exactly the segment's events the records counted
    n_window = next(r["n_window"] for r in recs if r["window_start"] == start and r["feature"] == "x")
    text = " ".join(page.text)
    assert f"{n_window} events of segment region=south" in text
    n_south = sum(
        1
        for e in data["events"]
        if e["region"] == "south" and START_MS + 2 * WINDOW_MS <= e["ts"] < START_MS + 3 * WINDOW_MS
    )
    assert n_south == n_window


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--segment", "region=east"], "--segment"),
        (["--segment", "region"], "--segment"),
        (["--window", "2030-01-01T00:00:00Z"], "--window"),
        (["--window", "yesterday"], "--window"),
        (["--monitor", "nope"], "--monitor"),
    ],
)
def test_bad_options_name_the_parameter(
    data: dict[str, Any], args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    d = data["dir"]
    code, _, _ = _render(d, "--records", str(d / "records.jsonl"), *args, out="bad.html")
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err


def test_reference_mismatch_is_refused(data: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    d = data["dir"]
    other = ReferenceProfile.build({"x": np.arange(500.0), "y": np.arange(500.0)})
    other.save(d / "other.json")
    code, _, _ = _render(d, "--records", str(d / "records.jsonl"), "--reference", str(d / "other.json"), out="mm.html")
    assert code == 2
    assert "fingerprint" in capsys.readouterr().err


def test_p_values_are_drawn_where_they_are(data: dict[str, Any]) -> None:
    """Strong drift has tiny p-values: they are drawn as they are on the log axis (once floored at
    1e-12, a flat line), and one that underflowed to 0 is a marker "< 1e-300", never 0 or a floor."""
    d = data["dir"]
    recs = [dict(r) for r in data["records"]]
    psi_x = sorted(
        (r for r in recs if r["feature"] == "x" and r["statistic"] == "psi" and r["segment"] == {}),
        key=lambda r: r["window_start"],
    )
    tiny = {7: 0.0, 8: 1e-20, 9: 3e-250}
    for w, p in tiny.items():
        psi_x[w]["p_value_adjusted"] = p
    write_records(d / "tiny.jsonl", recs)
    code, page, _ = _render(d, "--records", str(d / "tiny.jsonl"), out="tiny.html")
    assert code == 0
    summary = {row["attrs"]["data-feature"]: row["cells"] for row in page.rows["feature-summary"]}
    assert summary["x"][7] == "< 1e-300"
    fig = next(
        f
        for k, f in page.figures().items()
        if k.startswith("stat-") and next(t for t in f["data"] if t.get("name") == "PSI")["y"][7] == psi_x[7]["value"]
    )
    p = next(t for t in fig["data"] if t.get("name") == "p PSI")
    assert p["y"][7] == 1e-300 and p["text"][7] == "< 1e-300" and p["marker"]["symbol"][7] == "triangle-down"
    assert p["y"][8] == 1e-20 and p["y"][9] == 3e-250 and p["marker"]["symbol"][8] == "circle"
    prow = [k for k in fig["layout"] if k.startswith("yaxis")]
    p_axis = fig["layout"][max(prow, key=lambda k: int(k[5:] or 1))]
    assert p_axis["type"] == "log" and "range" not in p_axis  # (autorange: down to the smallest)


def test_count_windows_with_tied_times_are_each_their_own_window(tmp_path: Path) -> None:
    """20 count windows whose events all carry one time: the records differ only by window_index,
    and the page shows 20 windows (it stacked them into one before)."""
    cfg_window = {"kind": "count", "size": "200"}
    cfg = MonitorConfig.from_mapping(
        {**CONFIG, "events": {"time_field": "ts"}, "window": cfg_window}, base_dir=tmp_path
    )
    rng = np.random.default_rng(18)
    ref = ReferenceProfile.build(
        {"x": rng.normal(0.0, 1.0, 5000), "y": rng.uniform(0.0, 1.0, 5000)}, calibration_replicates=500
    )
    x = rng.normal(0.0, 1.0, 4000)
    x[2400:] += 2.0  # windows 12..19 (events in input order, 200 a window) drift
    events = [
        {"ts": START_MS, "features": {"x": float(v), "y": float(u)}}
        for v, u in zip(x, rng.uniform(0.0, 1.0, 4000), strict=True)
    ]
    layout = Layout(ref, None)
    cols, errors = decode_events(events, cfg, ref, layout.features)
    assert not errors
    records = run_local(cols, cfg, ref, layout)
    assert {(r["window_start"], r["window_end"]) for r in records} == {(iso_ms(START_MS), iso_ms(START_MS + 1))}
    assert sorted({r["window_index"] for r in records}) == list(range(20))
    write_records(tmp_path / "records.jsonl", records)
    code, page, text = _render(tmp_path, "--records", str(tmp_path / "records.jsonl"))
    assert code == 0
    assert " · 20 windows from " in text
    grid = page.figures()["drift-map"]["data"][0]
    assert len(grid["x"]) == len(set(grid["x"])) == 20
    assert len(grid["z"][0]) == 20
    summary = {row["attrs"]["data-feature"]: row["cells"] for row in page.rows["feature-summary"]}
    for f in ("x", "y"):
        drifted = len({r["window_index"] for r in records if r["feature"] == f and r["drift"]})
        assert summary[f][3] == f"{drifted} / 20"
    drifted_x = sorted({r["window_index"] for r in records if r["feature"] == "x" and r["drift"]})
    assert drifted_x == list(range(12, 20))
    (run,) = page.rows["drift-runs"]
    assert run["attrs"]["data-windows"] == "8"
    # each feature's chart has a point per window: 20 distinct x positions
    charts = [page.figures()[f"stat-{i}"] for i in range(2)]
    psi = next(t for c in charts for t in c["data"] if t.get("name") == "PSI")
    assert len(psi["x"]) == len(set(psi["x"])) == 20
    # the histograms are of the most drifted window itself (by index), recomputed from its own events
    ref.save(tmp_path / "reference.json")
    (tmp_path / "monitor.yaml").write_text(json.dumps({**CONFIG, "events": {"time_field": "ts"}, "window": cfg_window}))
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(ev) + "\n" for ev in events))
    code, page, _text = _render(
        tmp_path,
        "--records",
        str(tmp_path / "records.jsonl"),
        "--config",
        str(tmp_path / "monitor.yaml"),
        "--events",
        str(tmp_path / "events.jsonl"),
        out="with-events.html",
    )
    assert code == 0
    score: dict[int, tuple[int, float]] = {}
    for r in records:
        if r["drift"]:
            lvl, top = score.get(r["window_index"], (0, 0.0))
            score[r["window_index"]] = (
                lvl + SEVERITY_LEVEL[r["severity"]],
                max(top, r["value"] if r["statistic"] == "psi" else 0.0),
            )
    want = min(score, key=lambda k: (-score[k][0], -score[k][1], k))
    h2 = next(a for t, a in page.tags if t == "h2" and a.get("id") == "histograms")
    assert h2["data-window-index"] == str(want)
    px = ref.features["x"]
    coarse_edges = np.array([px.edges[s - 1] for s in px.coarse_starts[1:]])
    wx = np.bincount(
        np.searchsorted(coarse_edges, x[want * 200 : (want + 1) * 200], side="right"), minlength=px.n_coarse
    )
    x_fig = next(
        f for k, f in page.figures().items() if k.startswith("hist-") and f["layout"]["title"]["text"].startswith("x")
    )
    assert {t["name"]: t for t in x_fig["data"]}["window"]["y"] == pytest.approx((wx / wx.sum()).tolist())
