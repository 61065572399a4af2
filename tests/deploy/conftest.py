"""Helpers for the deploy/ tests: repository paths, PromQL metric names, real Prometheus and
Alertmanager processes on free loopback ports.

Exposed as fixtures (the test modules are imported with ``--import-mode=importlib``).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "streamdrift.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamdrift.json"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(r"(?<![A-Za-z0-9_:])(streamdrift_[A-Za-z0-9_:]*)")


def promql_metric_names(expr: str) -> set[str]:
    """Names of ``streamdrift_*`` series an expression selects (string literals are ignored)."""
    return set(_NAME.findall(_STRING.sub('""', expr)))


_QUOTED = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\''
# a string literal (skipped) or a selector: name and label matchers
_SELECTOR = re.compile(
    r"(?:"
    + _QUOTED
    + r"|`[^`]*`)|(?<![A-Za-z0-9_:])(streamdrift_[A-Za-z0-9_:]*)\s*(?:\{((?:"
    + _QUOTED
    + r"|[^}\"'])*)\})?"
)
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(" + _QUOTED + r"|[^,]*?)\s*(?:,|$)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
#: labels Prometheus adds to every scraped series (``monitor`` also comes from the target label)
TARGET_LABELS = frozenset({"job", "instance", "monitor"})


def promql_selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """``(metric, {label: (operator, value)})`` of every ``streamdrift_*`` selector in ``expr``.

    Values are unquoted when quoted; a template placeholder (``%q``) stays as written.
    """
    out = []
    for m in _SELECTOR.finditer(expr):
        if m.group(1) is None:
            continue  # a string literal
        matchers: dict[str, tuple[str, str]] = {}
        body = m.group(2) or ""
        pos = 0
        while pos < len(body.rstrip()):
            mm = _MATCHER.match(body, pos)
            assert mm is not None, f"cannot parse the label matchers of {m.group(0)!r}"
            value = mm.group(3)
            if value[:1] in "\"'" and len(value) >= 2:
                value = value[1:-1]
            matchers[mm.group(1)] = (mm.group(2), value)
            pos = mm.end()
        out.append((m.group(1), matchers))
    return out


def promql_grouping_labels(expr: str) -> set[str]:
    """Labels named in ``by``/``without``/``on``/``ignoring``/``group_*`` clauses of ``expr``."""
    return {lbl.strip() for g in _GROUPING.findall(_STRING.sub('""', expr)) for lbl in g.split(",") if lbl.strip()}


def exported_sample_names(families: Any) -> set[str]:
    """Series names a scrape can contain, from collected metric families (``registry.collect()``)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for fam in families:
        for suffix in suffixes.get(fam.type, ("",)):
            names.add(fam.name + suffix)
    return names


def rule_exprs() -> dict[str, str]:
    """alert name -> PromQL expression of the shipped rules."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


_TEMPLATE_QUERY = re.compile(r'(?:printf\s+"((?:[^"\\]|\\.)*)"[^|}]*|"((?:[^"\\]|\\.)*)")\s*\|\s*query\b')


def rule_annotation_queries() -> list[tuple[str, str]]:
    """(alert and annotation, PromQL) of every ``query`` in the rules' annotation templates.

    A query built with ``printf`` keeps its placeholders (``%q``) where label values go.
    """
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    out = []
    for g in doc["groups"]:
        for r in g["rules"]:
            for key, text in r.get("annotations", {}).items():
                for m in _TEMPLATE_QUERY.finditer(text):
                    out.append((f"{r['alert']} {key}", m.group(1) or m.group(2)))
    return out


def dashboard_queries(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, template variable and annotation of the dashboard."""
    dash = dashboard if dashboard is not None else json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out: list[tuple[str, str]] = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} target {t['refId']}", t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']}", q))
    for a in dash.get("annotations", {}).get("list", []):
        if "expr" in a:
            out.append((f"annotation {a['name']!r}", a["expr"]))
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, data: Any = None, timeout: float = 5.0) -> Any:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_exc!r})")


@dataclass
class Service:
    """A started binary: its process, base URL and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_service(name: str, argv: list[str], url: str, ready_path: str, log: Path, timeout: float = 30.0) -> Service:
    """Start ``argv`` (output to ``log``) and wait until ``url + ready_path`` answers 200."""
    fh = log.open("wb")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    fh.close()
    svc = Service(name, proc, url, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{svc.log_tail()}")
        with urllib.request.urlopen(url + ready_path, timeout=2) as resp:
            return bool(resp.status == 200)

    try:
        wait_until(ready, timeout, f"{name} to be ready at {url}{ready_path}")
    except BaseException:
        svc.stop()
        raise
    return svc


def require_binary(name: str) -> str:
    """The path of a required binary; its absence is a broken environment, so fail (never skip)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run `make system-deps` (Debian prometheus / prometheus-alertmanager)")
    return path


def render_alertmanager(
    webhook_url: str, token_file: Path, group_wait: str = "1s", group_interval: str = "1s"
) -> dict[str, Any]:
    """The shipped Alertmanager config with receivers pointed at a test webhook and short timers.

    Routes, matchers, grouping and inhibitions stay as shipped: those are what the tests check.
    """
    cfg = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))

    def timers(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", group_wait), ("group_interval", group_interval)):
            if key in route:
                route[key] = value
        for child in route.get("routes", []):
            timers(child)

    timers(cfg["route"])
    for rcv in cfg["receivers"]:
        for wh in rcv.get("webhook_configs", []):
            path = urllib.parse.urlsplit(wh["url"]).path
            wh["url"] = webhook_url.rstrip("/") + path
            wh["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return cfg


@pytest.fixture
def deploy_paths() -> dict[str, Path]:
    return {"repo": REPO, "deploy": DEPLOY, "rules": RULES, "dashboard": DASHBOARD, "alertmanager": ALERTMANAGER}


@pytest.fixture
def promql() -> Any:
    """Namespace of the PromQL helpers."""

    class _Helpers:
        metric_names = staticmethod(promql_metric_names)
        selectors = staticmethod(promql_selectors)
        grouping_labels = staticmethod(promql_grouping_labels)
        target_labels = TARGET_LABELS
        rule_annotation_queries = staticmethod(rule_annotation_queries)
        exported_sample_names = staticmethod(exported_sample_names)
        rule_exprs = staticmethod(rule_exprs)
        dashboard_queries = staticmethod(dashboard_queries)

    return _Helpers


@pytest.fixture
def services() -> Iterator[Any]:
    """Start binaries that are stopped at the end of the test, whatever happens."""
    started: list[Service] = []

    class _Services:
        free_port = staticmethod(free_port)
        http_json = staticmethod(http_json)
        wait_until = staticmethod(wait_until)
        require_binary = staticmethod(require_binary)
        render_alertmanager = staticmethod(render_alertmanager)

        @staticmethod
        def start(name: str, argv: list[str], url: str, ready_path: str, log: Path, timeout: float = 30.0) -> Service:
            svc = start_service(name, argv, url, ready_path, log, timeout)
            started.append(svc)
            return svc

    yield _Services
    for svc in reversed(started):
        svc.stop()
