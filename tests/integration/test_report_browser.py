"""The HTML report in a real browser: Debian's headless Chromium (``make system-deps`` installs it).

A report written by ``streamdrift report`` is loaded from a file with no network, Chromium runs its
scripts (``--virtual-time-budget``) and dumps the DOM. The test fails on any console message of the
page (plotly.js logs none when it draws; an uncaught exception is one) and on any figure whose div
holds no rendered SVG with one drawn group per trace of the figure. The same check run on a page
with a broken figure and a console error must fail, so the check is shown to be able to.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors.config import MonitorConfig
from detectors.engine import run_local
from detectors.events import decode_events
from detectors.histogram import Layout
from detectors.reference import ReferenceProfile
from stream.records import write_records

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
#: flags for a root user in a sandbox with a closed network (see the environment notes)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--enable-logging=stderr",
    "--v=0",
    "--window-size=1400,1000",
    "--virtual-time-budget=20000",
)
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def figures_of(page: str) -> dict[str, dict[str, Any]]:
    """div id -> the figure's data and layout, from the page's Plotly.newPlot calls."""
    out = {}
    dec = json.JSONDecoder()
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        data, end = dec.raw_decode(page, m.end())
        rest = page[end:].lstrip().removeprefix(",").lstrip()
        layout, _ = dec.raw_decode(rest)
        out[m.group(1)] = {"data": data, "layout": layout}
    return out


class Rendered(HTMLParser):
    """What Chromium drew inside each plotly div: SVG roots, trace groups, heatmap images, points."""

    VOID = frozenset({"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.divs: dict[str, dict[str, int]] = {}
        self._current: str | None = None
        self._depth = 0
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if self._current is None:
            if tag == "div" and "plotly-graph-div" in classes and a.get("id"):
                self._current = str(a["id"])
                self._depth = 1
                self.divs[self._current] = {"svg": 0, "trace": 0, "heatmap": 0, "point": 0}
            return
        counts = self.divs[self._current]
        counts["svg"] += tag == "svg" and "main-svg" in classes
        counts["trace"] += tag == "g" and "trace" in classes
        counts["heatmap"] += tag == "image"
        counts["point"] += "point" in classes  # (a marker path, or a bar's group)
        if tag not in self.VOID:
            self._depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # (self-closing SVG elements: counted, no depth)
        depth = self._depth
        self.handle_starttag(tag, attrs)
        self._depth = depth

    def handle_endtag(self, tag: str) -> None:
        if self._current is not None and tag not in self.VOID:
            self._depth -= 1
            if self._depth == 0:
                self._current = None


def load_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the console lines Chromium logged for the page."""
    assert CHROMIUM, "chromium is not installed: `make system-deps` (Debian's chromium package)"
    res = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    return res.stdout, console


def problems(page: Path, profile: Path) -> list[str]:
    """Every way the page failed in the browser (empty: it rendered cleanly)."""
    figs = figures_of(page.read_text(encoding="utf-8"))
    dom, console = load_in_chromium(page, profile)
    out = [f"console: {line}" for line in console]
    drawn = Rendered(dom).divs
    if not figs:
        out.append("the page has no figure")
    for div, fig in figs.items():
        got = drawn.get(div)
        if got is None or got["svg"] == 0:
            out.append(f"{div}: nothing rendered")
            continue
        heatmaps = sum(1 for t in fig["data"] if t.get("type") == "heatmap")
        others = len(fig["data"]) - heatmaps
        if got["trace"] < others:
            out.append(f"{div}: {got['trace']} trace groups drawn for {others} traces")
        if heatmaps and got["heatmap"] < heatmaps:
            out.append(f"{div}: heatmap not drawn")
        if others and got["point"] == 0:
            out.append(f"{div}: no marker or bar drawn")
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of a stream whose x shifts and whose c changes its mix half-way, with histograms, and one
    p-value that underflowed to 0 (the "< 1e-300" marker)."""
    d = tmp_path_factory.mktemp("browser")
    rng = np.random.default_rng(20261130)
    ref = ReferenceProfile.build(
        {
            "x": rng.normal(size=20_000),
            "y": rng.uniform(size=20_000),
            "c": np.array(rng.choice(["a", "b", "c"], 20_000, p=[0.5, 0.3, 0.2]), dtype=object),
        },
        categorical=["c"],
        calibration_replicates=1000,
    )
    ref.save(d / "reference.json")
    cfg_doc = {
        "monitor": "browser",
        "reference": "reference.json",
        "events": {"time_field": "ts"},
        "window": {"kind": "tumbling", "size": "5m"},
        "concept": {"detector": "none"},
    }
    (d / "monitor.yaml").write_text(json.dumps(cfg_doc))
    events = []
    for w in range(8):
        late = w >= 4
        for i in range(400):
            events.append(
                {
                    "ts": START_MS + w * 300_000 + i * 700,
                    "features": {
                        "x": float(rng.normal(1.0 if late else 0.0)),
                        "y": float(rng.uniform()),
                        "c": str(rng.choice(["a", "b", "c"], p=[0.2, 0.3, 0.5] if late else [0.5, 0.3, 0.2])),
                    },
                }
            )
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    config = MonitorConfig.from_mapping(cfg_doc, base_dir=d)
    cols, errors = decode_events(events, config, ref, list(ref.features))
    assert not errors
    records = run_local(cols, config, ref, Layout(ref))
    strongest = max((r for r in records if r["statistic"] == "ks"), key=lambda r: r["value"] or 0)
    strongest["p_value_adjusted"] = 0.0
    write_records(d / "records.jsonl", records)
    res = subprocess.run(
        [sys.executable, "-m", "stream.cli", "report", "--records", "records.jsonl", "--config", "monitor.yaml",
         "--events", "events.jsonl", "--out", "report.html"],
        cwd=d, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return d / "report.html"


def test_the_report_renders_in_chromium_without_console_errors(report: Path, tmp_path: Path) -> None:
    figs = figures_of(report.read_text(encoding="utf-8"))
    # the drift map, a statistics figure per feature, a histogram per feature
    assert sorted(k for k in figs if not k.startswith(("stat-", "hist-"))) == ["drift-map"]
    assert len([k for k in figs if k.startswith("stat-")]) == 3 and len([k for k in figs if k.startswith("hist-")]) == 3
    assert problems(report, tmp_path / "profile") == []


def test_the_browser_check_catches_a_broken_page(report: Path, tmp_path: Path) -> None:
    """A console error and a figure whose drawing throws are both reported."""
    text = report.read_text(encoding="utf-8")
    first = next(iter(figures_of(text)))
    # one figure's data replaced by something plotly cannot draw, and a console error
    broken = re.sub(
        rf'Plotly\.newPlot\(\s*"{re.escape(first)}",\s*',
        f'document.getElementById("{first}").innerHTML = ""; null.draw; Plotly.newPlot("{first}", ',
        text,
        count=1,
    )
    broken = broken.replace("</body>", '<script>console.error("injected failure")</script></body>')
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    found = problems(page, tmp_path / "profile")
    assert any("injected failure" in p for p in found), found
    assert any(p.startswith("console:") and "Uncaught TypeError" in p for p in found), found
    assert f"{first}: nothing rendered" in found, found


def test_tied_count_windows_render_as_a_window_each(tmp_path: Path) -> None:
    """20 count windows whose events share one time: the charts put them on a category axis, a slot
    each (drifted ones shaded), and Chromium draws every figure without a console message."""
    rng = np.random.default_rng(18)
    ref = ReferenceProfile.build({"x": rng.normal(size=5000)}, calibration_replicates=500)
    ref.save(tmp_path / "reference.json")
    cfg_doc = {
        "monitor": "tied",
        "reference": "reference.json",
        "events": {"time_field": "ts"},
        "window": {"kind": "count", "size": "200"},
        "concept": {"detector": "none"},
    }
    x = rng.normal(size=4000)
    x[2400:] += 1.5  # windows 12..19 drift
    events = [{"ts": START_MS, "features": {"x": float(v)}} for v in x]
    config = MonitorConfig.from_mapping(cfg_doc, base_dir=tmp_path)
    cols, errors = decode_events(events, config, ref, list(ref.features))
    assert not errors
    write_records(tmp_path / "records.jsonl", run_local(cols, config, ref, Layout(ref)))
    res = subprocess.run(
        [sys.executable, "-m", "stream.cli", "report", "--records", "records.jsonl", "--out", "report.html"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    page = tmp_path / "report.html"
    figs = figures_of(page.read_text(encoding="utf-8"))
    assert len(set(figs["drift-map"]["data"][0]["x"])) == 20
    stat = figs["stat-0"]
    assert stat["layout"]["xaxis"]["type"] == "category"
    # the drifted windows' slots shaded (in each subplot): windows 12..19 of 0..19
    assert sorted({(s["x0"], s["x1"]) for s in stat["layout"]["shapes"]}) == [(k - 0.5, k + 0.5) for k in range(12, 20)]
    assert problems(page, tmp_path / "profile") == []
