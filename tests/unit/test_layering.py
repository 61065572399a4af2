"""The layering rule of docs/architecture.md, checked on the imports in the source.

``detectors`` imports neither ``stream`` nor ``jobs``; ``jobs`` may import ``detectors`` and the
library modules at the top of ``stream`` but not its service, CLI, report or demo; the service
does not import the CLI, the report or the demo; the library modules import none of the four.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("stream.service", "stream.cli", "stream.report", "stream.demo")


def _imports(path: Path) -> set[str]:
    """Every module a file imports (including imports inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _modules(package: str) -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in sorted((ROOT / package).rglob("*.py"))}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(package: str, forbidden: tuple[str, ...], only: str | None = None) -> list[str]:
    return [
        f"{mod} imports {imp}"
        for mod, imps in _modules(package).items()
        if only is None or _under(mod, only) or (only == "library" and not any(_under(mod, r) for r in ROLES))
        for imp in imps
        if any(_under(imp, f) for f in forbidden)
    ]


def test_detectors_is_pure() -> None:
    assert _violations("detectors", ("stream", "jobs")) == []


def test_jobs_use_only_the_library_modules_of_stream() -> None:
    assert _violations("jobs", ROLES) == []
    assert any(_under(i, "stream.records") for imps in _modules("jobs").values() for i in imps)


def test_the_service_knows_nothing_of_cli_report_or_demo() -> None:
    assert _violations("stream", ("stream.cli", "stream.report", "stream.demo", "jobs"), only="stream.service") == []


def test_library_modules_import_no_role_package() -> None:
    assert _violations("stream", (*ROLES, "jobs"), only="library") == []


def test_the_rule_is_able_to_fail(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from stream.service.consumer import Consumer\n")
    assert "stream.service.consumer" in _imports(bad)
