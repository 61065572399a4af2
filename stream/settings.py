"""Loading the monitor YAML file (the consumer's settings extend it; see serve settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from detectors.config import MonitorConfig
from stream.exceptions import ConfigError


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of settings")
    return data


def load_monitor(path: str | Path) -> MonitorConfig:
    """The monitor part of a config file; the reference path is relative to the file."""
    p = Path(path)
    return MonitorConfig.from_mapping(load_yaml(p), base_dir=p.parent)
