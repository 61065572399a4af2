"""streamdrift's statistics: reference profiles, mergeable window histograms, PSI / KS /
chi-square with multiple-testing correction, and river-backed sequential detectors.

Pure code: numpy, scipy, river and pydantic only; no I/O beyond reading and writing a
reference file, no Kafka, no Spark, no Prometheus.
"""

from detectors.config import MonitorConfig
from detectors.evaluate import StatisticResult, evaluate_counts, make_alert, window_records
from detectors.exceptions import (
    ConfigError,
    InputError,
    ReferenceFormatError,
    ReferenceMismatchError,
    SnapshotError,
    StreamdriftError,
)
from detectors.histogram import Layout, WindowState
from detectors.reference import CategoricalProfile, NumericProfile, ReferenceProfile
from detectors.sequential import ConceptDetector, make_detector, restore

__version__ = "0.1.0"

__all__ = [
    "CategoricalProfile",
    "ConceptDetector",
    "ConfigError",
    "InputError",
    "Layout",
    "MonitorConfig",
    "NumericProfile",
    "ReferenceFormatError",
    "ReferenceMismatchError",
    "ReferenceProfile",
    "SnapshotError",
    "StatisticResult",
    "StreamdriftError",
    "WindowState",
    "evaluate_counts",
    "make_alert",
    "make_detector",
    "restore",
    "window_records",
]
