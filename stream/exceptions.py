"""Exceptions of the ``stream`` package, under streamdrift's one root exception."""

from __future__ import annotations

from detectors.exceptions import ConfigError, StreamdriftError

__all__ = ["CheckpointError", "ConfigError", "InputFileError", "RegistryError", "StreamError", "StreamdriftError"]


class StreamError(StreamdriftError):
    """Root of the consumer service's own errors."""


class InputFileError(StreamError, ValueError):
    """An input or output file cannot be read, written or understood."""


class CheckpointError(StreamError):
    """A checkpoint cannot be written or is corrupt (a corrupt one is never loaded)."""


class RegistryError(StreamError):
    """A model registry (MLflow) or schema registry cannot answer; nothing was lost (offsets stay uncommitted)."""
