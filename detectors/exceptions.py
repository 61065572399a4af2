"""Exceptions of the ``detectors`` package.

Every error raised on purpose by streamdrift derives from :class:`StreamdriftError`, so a
caller can catch the whole family with one clause. ``stream`` and ``jobs`` subclass it too.
"""

from __future__ import annotations


class StreamdriftError(Exception):
    """Root of every error streamdrift raises on purpose."""


class ConfigError(StreamdriftError, ValueError):
    """A setting is invalid; the message names the parameter and the consequence."""


class ReferenceError_(StreamdriftError):
    """Base for problems with a reference profile."""


class ReferenceFormatError(ReferenceError_, ValueError):
    """A reference file is malformed, of an unknown schema version, or its fingerprint does not match."""


class ReferenceMismatchError(ReferenceError_):
    """State or data was produced against a different reference (fingerprints differ)."""


class SnapshotError(StreamdriftError, ValueError):
    """A detector or window snapshot cannot be restored."""


class InputError(StreamdriftError, ValueError):
    """Input data cannot be used (wrong type, missing required field, unparseable time)."""
