"""Reference profiles that belong to MLflow model versions (the optional ``mlflow`` extra).

A monitor's ``reference`` may name a registered model version instead of a file::

    reference: models:/fraud/7            # that version
    reference: models:/fraud@champion     # whatever version the alias points at (serve follows it)

The tracking server is the one MLflow users already configure: ``MLFLOW_TRACKING_URI`` (and
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_SERVER_CERT_PATH`` for a private CA: MLflow's own variables, read by its client).

Where the profile lives: ``streamdrift reference build --mlflow-model NAME --mlflow-version V``
logs it as an artifact of the version's run, ``streamdrift/reference-<first 16 hex digits of its
fingerprint>.json`` (named by content, so a rebuild never overwrites the profile another version
points at), and tags the version with ``streamdrift.reference_fingerprint`` and
``streamdrift.reference_artifact``. Resolving a version downloads that artifact and checks that
its fingerprint is the tagged one.

With an alias, ``serve`` polls it in a background thread every ``mlflow.poll_interval`` (so the
consume loop never waits for the tracking server) and, when it points at another version, hands
that version's profile to the loop, which switches between two batches (see
:mod:`stream.service.consumer`). A failed poll is logged and retried at the next interval; the current
version stays in force.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.config import is_model_uri, parse_model_uri
from detectors.exceptions import ReferenceMismatchError, StreamdriftError
from detectors.reference import ReferenceProfile
from stream.exceptions import ConfigError, RegistryError

log = logging.getLogger("streamdrift.mlflow")

ARTIFACT_DIR = "streamdrift"
TAG_FINGERPRINT = "streamdrift.reference_fingerprint"
TAG_ARTIFACT = "streamdrift.reference_artifact"
INSTALL_HINT = "install the mlflow extra: pip install 'streamdrift[mlflow]'"


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version (``alias``: the alias it was resolved through, if any)."""

    name: str
    version: str
    run_id: str | None
    alias: str | None = None
    tags: Mapping[str, str] | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return self.uri + (f" (@{self.alias})" if self.alias else "")


class ModelRegistry:
    """A thin layer over ``mlflow.MlflowClient``: resolve versions, fetch and log profiles.

    ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI``; without either it is an error (MLflow
    would otherwise fall back to a local ``./mlruns`` directory, which is never what a monitor
    that names a registered model means).
    """

    def __init__(self, tracking_uri: str | None = None, *, client: Any = None) -> None:
        if client is None:
            uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:
                raise ConfigError(
                    "reference: a models:/ reference needs the MLflow tracking server: set MLFLOW_TRACKING_URI"
                )
            try:
                from mlflow.tracking import MlflowClient
            except ModuleNotFoundError as exc:
                raise ConfigError(f"reference: a models:/ reference needs MLflow ({INSTALL_HINT})") from exc
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            client = MlflowClient(tracking_uri=uri)
            self.tracking_uri = uri
        else:
            self.tracking_uri = tracking_uri or "(injected client)"
        self.client = client

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ConfigError(
                    f"reference: {what}: not found in the MLflow registry at {self.tracking_uri}"
                ) from None
            raise RegistryError(f"MLflow at {self.tracking_uri}: {what}: {exc.message}") from None

    def resolve(self, uri: str) -> ModelVersion:
        """The model version ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` names now."""
        try:
            name, version, alias = parse_model_uri(uri)
        except ValueError as exc:
            raise ConfigError(f"reference: {exc}") from None
        if alias is not None:
            mv = self._call(f"alias {alias!r} of model {name!r}", self.client.get_model_version_by_alias, name, alias)
        else:
            mv = self._call(f"version {version} of model {name!r}", self.client.get_model_version, name, version)
        return ModelVersion(name, str(mv.version), mv.run_id or None, alias, dict(mv.tags or {}))

    def fetch_reference(self, mv: ModelVersion) -> ReferenceProfile:
        """The profile logged for ``mv`` (downloaded, its fingerprint checked against the version's tag)."""
        tags = mv.tags or {}
        fingerprint, artifact = tags.get(TAG_FINGERPRINT), tags.get(TAG_ARTIFACT)
        if not fingerprint or not artifact or not mv.run_id:
            raise ConfigError(
                f"reference: {mv} has no streamdrift reference profile (no {TAG_FINGERPRINT} tag): log one with "
                f"`streamdrift reference build ... --mlflow-model {mv.name} --mlflow-version {mv.version}`"
            )
        with tempfile.TemporaryDirectory(prefix="streamdrift-ref-") as tmp:
            local = self._call(
                f"artifact {artifact} of run {mv.run_id} ({mv})",
                self.client.download_artifacts,
                mv.run_id,
                artifact,
                tmp,
            )
            ref = ReferenceProfile.load(local)
        if ref.fingerprint != fingerprint:
            raise ReferenceMismatchError(
                f"reference: {mv}: the artifact {artifact} hashes to {ref.fingerprint}, the version is tagged with "
                f"{fingerprint}; refusing a profile that is not the one the version names"
            )
        return ref

    def load(self, uri: str) -> tuple[ReferenceProfile, ModelVersion]:
        mv = self.resolve(uri)
        return self.fetch_reference(mv), mv

    def log_reference(self, uri: str, path: str | Path, reference: ReferenceProfile) -> ModelVersion:
        """Log the profile saved at ``path`` to the run of the version ``uri`` names and tag the version."""
        mv = self.resolve(uri)
        if not mv.run_id:
            raise ConfigError(
                f"--mlflow-model: {mv} was registered without a run, so there is no run to log the profile to; "
                "register the version from a run (mlflow.register_model('runs:/<run id>/...', name))"
            )
        name = f"reference-{reference.fingerprint.removeprefix('sha256:')[:16]}.json"
        with tempfile.TemporaryDirectory(prefix="streamdrift-ref-") as tmp:
            local = Path(tmp) / name
            local.write_bytes(Path(path).read_bytes())
            self._call(f"log {name} to run {mv.run_id}", self.client.log_artifact, mv.run_id, str(local), ARTIFACT_DIR)
        for key, value in ((TAG_FINGERPRINT, reference.fingerprint), (TAG_ARTIFACT, f"{ARTIFACT_DIR}/{name}")):
            self._call(f"tag {mv}", self.client.set_model_version_tag, mv.name, mv.version, key, value)
        tags = {**(mv.tags or {}), TAG_FINGERPRINT: reference.fingerprint, TAG_ARTIFACT: f"{ARTIFACT_DIR}/{name}"}
        return ModelVersion(mv.name, mv.version, mv.run_id, mv.alias, tags)

    # -- backfill -----------------------------------------------------------------------
    def run_for(self, run_id: str | None, experiment: str | None) -> str:
        """``run_id`` if given (it must exist), else a new run in ``experiment`` (created if needed)."""
        if run_id:
            self._call(f"run {run_id}", self.client.get_run, run_id)
            return run_id
        assert experiment
        got = self._call(f"experiment {experiment!r}", self._experiment_id, experiment)
        run = self._call(f"new run in experiment {experiment!r}", self.client.create_run, got)
        return str(run.info.run_id)

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        return str(exp.experiment_id if exp is not None else self.client.create_experiment(name))

    def log_window_metrics(self, run_id: str, records: Sequence[Mapping[str, Any]]) -> int:
        """Window statistics as MLflow metrics, one step per window; returns how many were logged."""
        from mlflow.entities import Metric

        metrics = [Metric(key, value, ts, step) for key, value, ts, step in window_metrics(records)]
        for i in range(0, len(metrics), 1000):  # (MLflow takes at most 1000 metrics per batch)
            self._call(f"log metrics to run {run_id}", self.client.log_batch, run_id, metrics[i : i + 1000])
        return len(metrics)

    def log_file(self, run_id: str, path: str | Path, artifact_dir: str = ARTIFACT_DIR) -> None:
        self._call(f"log {Path(path).name} to run {run_id}", self.client.log_artifact, run_id, str(path), artifact_dir)


def metric_key(record: Mapping[str, Any], field: str = "value") -> str:
    """The MLflow metric name of one record's statistic: ``<segment>/<feature>/<statistic>[/<field>]``,
    ``all`` for the overall segment; characters MLflow does not allow become ``_``.

    >>> metric_key({"segment": {}, "feature": "age", "statistic": "psi"})
    'all/age/psi'
    >>> metric_key({"segment": {"country": "de"}, "feature": "x", "statistic": "ks"}, "drift")
    'country:de/x/ks/drift'
    """
    seg = dict(record["segment"])
    parts = [",".join(f"{k}:{v}" for k, v in sorted(seg.items())) if seg else "all", record["feature"]]
    parts.append(record["statistic"])
    if field != "value":
        parts.append(field)
    return "/".join("".join(c if c.isalnum() or c in "_-. :," else "_" for c in p) for p in parts)


def window_metrics(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step) of each defined statistic and verdict: step = the window's
    index in time order (0, 1, ...), timestamp = its end. A statistic without a verdict (too few
    events) is left out, never logged as 0."""
    from detectors.evaluate import parse_iso_ms

    def window(r: Mapping[str, Any]) -> tuple[str, str, int]:  # (count windows with tied times: by index)
        index = r.get("window_index")
        return (r["window_end"], r["window_start"], -1 if index is None else int(index))

    windows = sorted({window(r) for r in records})
    step = {w: i for i, w in enumerate(windows)}
    out = []
    for r in records:
        if r["value"] is None:
            continue
        s = step[window(r)]
        ts = parse_iso_ms(r["window_end"])
        out.append((metric_key(r), float(r["value"]), ts, s))
        if r["drift"] is not None:
            out.append((metric_key(r, "drift"), float(bool(r["drift"])), ts, s))
    return out


def load_reference(
    reference: str, registry: ModelRegistry | None = None
) -> tuple[ReferenceProfile, ModelVersion | None]:
    """The profile a ``reference`` setting names: a file, or a model version through MLflow."""
    if not is_model_uri(reference):
        return ReferenceProfile.load(reference), None
    reg = registry or ModelRegistry()
    return reg.load(reference)


class AliasWatcher:
    """Polls ``models:/NAME@ALIAS`` every ``interval_s`` in a daemon thread; when the alias points at
    another version, fetches its profile and keeps it for :meth:`take` (the loop's thread).

    The current version is the one the loop runs: :meth:`take` moves it on, so a version the loop
    has not taken yet is not fetched twice.
    """

    def __init__(self, registry: ModelRegistry, uri: str, current: ModelVersion, interval_s: float) -> None:
        self.registry = registry
        self.uri = uri
        self.interval_s = interval_s
        self._current = current.version
        self._pending: tuple[ReferenceProfile, ModelVersion] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamdrift-mlflow-alias", daemon=True)
        self.polls = 0
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def take(self) -> tuple[ReferenceProfile, ModelVersion] | None:
        """The profile of the version the alias moved to, once; None if it did not move."""
        with self._lock:
            got, self._pending = self._pending, None
            if got is None or got[1].version == self._current:  # (it moved away and back before the loop looked)
                return None
            self._current = got[1].version
            return got

    def poll_once(self) -> None:
        mv = self.registry.resolve(self.uri)
        with self._lock:
            known = self._pending[1].version if self._pending is not None else self._current
        if mv.version == known:
            return
        ref = self.registry.fetch_reference(mv)
        log.info("%s now points at version %s (was %s)", self.uri, mv.version, known)
        with self._lock:
            self._pending = (ref, mv)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.polls += 1
            try:
                self.poll_once()
            except (StreamdriftError, OSError) as exc:
                # the current version stays in force; the next poll tries again
                self.failures += 1
                log.warning("cannot follow %s (keeping version %s): %s", self.uri, self._current, exc)
