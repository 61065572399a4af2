"""Settings: the monitor YAML file, and the consumer's :class:`ServeConfig` that extends it.

``ServeConfig`` = the monitor config (:class:`detectors.config.MonitorConfig`) plus the
sections only ``streamdrift serve`` reads::

    kafka:    bootstrap_servers, topic, group_id, security_protocol, sasl_mechanism,
              sasl_username, sasl_password (a secret), ssl_ca_location,
              ssl_certificate_location, ssl_key_location, extra (allow-listed librdkafka keys),
              batch_size, poll_timeout, max_event_bytes
    outputs:  statistics_topic, alerts_topic, dead_letter_topic, statistics_file
    metrics:  address (default 127.0.0.1), port (default 9308; 0 = a free port), certfile and
              keyfile (PEM: HTTPS instead of HTTP)
    state:    dir, checkpoint_interval
    mlflow:   poll_interval (how often a models:/NAME@ALIAS reference is re-resolved)
    schema_registry: url, username, password (a secret), ssl_ca_location, ssl_certificate_location,
              ssl_key_location, timeout (for ``events.format: avro``)

Every setting can be overridden from the environment as ``STREAMDRIFT_<SECTION>__<KEY>``
(``STREAMDRIFT_KAFKA__SASL_PASSWORD``, ``STREAMDRIFT_METRICS__PORT``,
``STREAMDRIFT_KAFKA__EXTRA__FETCH.MAX.BYTES``); the environment wins over the file. Secrets
are :class:`pydantic.SecretStr`: they never appear in ``repr``, logs or error messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from detectors.config import MonitorConfig, format_validation_error, parse_duration_ms
from stream.exceptions import ConfigError

ENV_PREFIX = "STREAMDRIFT_"
SERVE_SECTIONS = ("kafka", "outputs", "metrics", "state", "mlflow", "schema_registry")

#: ``kafka.extra`` settings that shape the connection: the start-up broker check
#: (:mod:`stream.service.connect`) uses them as the consumer does
CONNECTION_EXTRA = (
    "client.id",
    "client.rack",
    "broker.address.family",
    "socket.timeout.ms",
    "api.version.request",
    "ssl.endpoint.identification.algorithm",
    "ssl.cipher.suites",
    "ssl.crl.location",
    "enable.ssl.certificate.verification",
    "sasl.kerberos.service.name",
    "sasl.kerberos.principal",
    "sasl.kerberos.keytab",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.oauthbearer.scope",
    "debug",
)

#: librdkafka settings a user may pass through ``kafka.extra`` (tuning and TLS/SASL details).
#: Keys that would break the consumer's guarantees (auto commit, offset store, group id,
#: callbacks) are not on the list; neither are secrets, which have their own typed fields.
ALLOWED_EXTRA = frozenset(
    {
        *CONNECTION_EXTRA,
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "group.instance.id",
        "auto.offset.reset",
        "isolation.level",
        "fetch.min.bytes",
        "fetch.max.bytes",
        "fetch.wait.max.ms",
        "fetch.queue.backoff.ms",
        "max.partition.fetch.bytes",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "receive.message.max.bytes",
        "socket.keepalive.enable",
        "reconnect.backoff.ms",
        "reconnect.backoff.max.ms",
        "metadata.max.age.ms",
        "topic.metadata.refresh.interval.ms",
        "statistics.interval.ms",
        "linger.ms",
        "compression.type",
        "message.max.bytes",
    }
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Section):
    bootstrap_servers: str = Field(min_length=1, description="host:port[,host:port...]")
    topic: str = Field(min_length=1, description="the topic of prediction events")
    group_id: str = Field("streamdrift", min_length=1)
    security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)
    batch_size: int = Field(10_000, ge=1, le=1_000_000, description="messages per consume() call")
    poll_timeout: int | str = Field("500ms", description="how long one consume() waits for a batch")
    max_event_bytes: int = Field(1 << 20, ge=64, description="larger messages are dead-lettered unparsed")
    connect_timeout: int | str = Field(
        "30s",
        description="at start, how long serve waits for the broker to answer (TLS and SASL included) before it "
        "exits with an error naming the setting to fix",
    )

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(k for k in v if k not in ALLOWED_EXTRA)
        if bad:
            raise ValueError(
                f"{bad} not allowed here (allowed: {', '.join(sorted(ALLOWED_EXTRA))}); "
                "credentials and TLS files have their own settings"
            )
        return v

    @field_validator("poll_timeout")
    @classmethod
    def _poll(cls, v: int | str) -> int | str:
        if parse_duration_ms(v, "kafka.poll_timeout") <= 0:
            raise ValueError("must be positive")
        return v

    @field_validator("connect_timeout")
    @classmethod
    def _connect(cls, v: int | str) -> int | str:
        if parse_duration_ms(v, "kafka.connect_timeout") <= 0:
            raise ValueError("must be positive")
        return v

    @property
    def poll_timeout_s(self) -> float:
        return parse_duration_ms(self.poll_timeout, "kafka.poll_timeout") / 1000.0

    @property
    def connect_timeout_s(self) -> float:
        return parse_duration_ms(self.connect_timeout, "kafka.connect_timeout") / 1000.0

    def librdkafka(self) -> dict[str, Any]:
        """Connection settings as librdkafka keys (secrets revealed: never log the result)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        if self.ssl_certificate_location:
            conf["ssl.certificate.location"] = self.ssl_certificate_location
        if self.ssl_key_location:
            conf["ssl.key.location"] = self.ssl_key_location
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf

    def consumer_conf(self) -> dict[str, Any]:
        """The consumer's librdkafka settings: manual commits after each checkpoint."""
        conf = self.librdkafka()
        conf.update(
            {
                "group.id": self.group_id,
                "auto.offset.reset": "earliest",
                "fetch.queue.backoff.ms": 10,
                "fetch.max.bytes": 64 << 20,
                "max.partition.fetch.bytes": 8 << 20,
            }
        )
        conf.update({k: v for k, v in self.extra.items() if k not in ("linger.ms", "compression.type")})
        conf.update({"enable.auto.commit": False, "enable.auto.offset.store": False})
        return conf

    def producer_conf(self) -> dict[str, Any]:
        conf = self.librdkafka()
        conf.update({"linger.ms": 5, "enable.idempotence": False, "acks": "all"})
        for k in ("linger.ms", "compression.type", "client.id", "message.max.bytes", "debug"):
            if k in self.extra:
                conf[k] = self.extra[k]
        return conf


class OutputsConfig(_Section):
    statistics_topic: str | None = None
    alerts_topic: str | None = None
    dead_letter_topic: str | None = None
    statistics_file: str | None = Field(None, description="JSON-lines file of every window statistic record")


class MetricsConfig(_Section):
    address: str = "127.0.0.1"
    port: int = Field(9308, ge=0, le=65535, description="0 = pick a free port (logged)")
    enabled: bool = True
    certfile: str | None = Field(None, description="PEM certificate: serve /metrics over HTTPS (with keyfile)")
    keyfile: str | None = Field(None, description="PEM private key of certfile")
    segment_ttl_windows: int = Field(
        3,
        ge=1,
        description="a segment without events in this many consecutive windows loses its verdict series "
        "(they come back with its next window)",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> MetricsConfig:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together: set both for HTTPS, or neither for HTTP")
        return self


class StateConfig(_Section):
    dir: str = Field(
        "state",
        description="where checkpoints live (relative paths: relative to the config file); every serve process of "
        "one monitor uses the same one: the one holding its lock is active, the others are standbys",
    )
    checkpoint_interval: int | str = "10s"

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "lock_timeout" in data:
            raise ValueError(
                "lock_timeout is no longer a setting: a serve process that finds state.dir locked is a standby and "
                "waits for the lock as long as it takes (it never exits on a slow or frozen owner); remove "
                "state.lock_timeout (or STREAMDRIFT_STATE__LOCK_TIMEOUT)"
            )
        return data

    @field_validator("checkpoint_interval")
    @classmethod
    def _interval(cls, v: int | str) -> int | str:
        if parse_duration_ms(v, "state.checkpoint_interval") <= 0:
            raise ValueError("must be positive")
        return v

    @property
    def checkpoint_interval_s(self) -> float:
        return parse_duration_ms(self.checkpoint_interval, "state.checkpoint_interval") / 1000.0


class MlflowConfig(_Section):
    """How serve follows a ``reference: models:/NAME@ALIAS`` (the server: ``MLFLOW_TRACKING_URI``)."""

    poll_interval: int | str = Field(
        "60s",
        description="how often the alias is resolved again; a move switches the reference (stream.service.consumer)",
    )

    @field_validator("poll_interval")
    @classmethod
    def _poll(cls, v: int | str) -> int | str:
        if parse_duration_ms(v, "mlflow.poll_interval") <= 0:
            raise ValueError("must be positive")
        return v

    @property
    def poll_interval_s(self) -> float:
        return parse_duration_ms(self.poll_interval, "mlflow.poll_interval") / 1000.0


class SchemaRegistryConfig(_Section):
    """The schema registry of ``events.format: avro`` (Confluent's REST API)."""

    url: str = Field(min_length=1, description="http(s)://host:port[,...] of the schema registry")
    username: str | None = Field(None, description="basic auth user (with password)")
    password: SecretStr | None = None
    ssl_ca_location: str | None = Field(None, description="CA bundle that signed the registry's certificate")
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    timeout: int | str = Field("10s", description="per request")

    @model_validator(mode="after")
    def _auth(self) -> SchemaRegistryConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together (basic auth): set both, or neither")
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("ssl_certificate_location and ssl_key_location go together: set both, or neither")
        parse_duration_ms(self.timeout, "schema_registry.timeout")
        return self

    def client_conf(self) -> dict[str, Any]:
        """``SchemaRegistryClient`` settings (the password revealed: never log the result)."""
        conf: dict[str, Any] = {
            "url": self.url,
            "timeout": parse_duration_ms(self.timeout, "schema_registry.timeout") / 1000.0,
        }
        if self.username is not None and self.password is not None:
            conf["basic.auth.user.info"] = f"{self.username}:{self.password.get_secret_value()}"
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        if self.ssl_certificate_location:
            conf["ssl.certificate.location"] = self.ssl_certificate_location
            conf["ssl.key.location"] = self.ssl_key_location
        return conf


class _ServeSections(_Section):
    kafka: KafkaConfig
    outputs: OutputsConfig = OutputsConfig()
    metrics: MetricsConfig = MetricsConfig()
    state: StateConfig = StateConfig()
    mlflow: MlflowConfig = MlflowConfig()
    schema_registry: SchemaRegistryConfig | None = None


class ServeConfig:
    """Everything ``streamdrift serve`` needs: the monitor plus kafka/outputs/metrics/state."""

    def __init__(
        self,
        monitor: MonitorConfig,
        kafka: KafkaConfig,
        outputs: OutputsConfig,
        metrics: MetricsConfig,
        state: StateConfig,
        mlflow: MlflowConfig | None = None,
        schema_registry: SchemaRegistryConfig | None = None,
    ) -> None:
        self.monitor = monitor
        self.kafka = kafka
        self.outputs = outputs
        self.metrics = metrics
        self.state = state
        self.mlflow = mlflow if mlflow is not None else MlflowConfig()
        self.schema_registry = schema_registry

    def __repr__(self) -> str:
        return (
            f"ServeConfig(monitor={self.monitor.monitor!r}, kafka={self.kafka!r}, outputs={self.outputs!r}, "
            f"metrics={self.metrics!r}, state={self.state!r}, mlflow={self.mlflow!r}, "
            f"schema_registry={self.schema_registry!r})"
        )

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], base_dir: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> ServeConfig:
        """Validate a parsed config mapping; ``env`` (default ``os.environ``) overrides it."""
        if not isinstance(data, Mapping):
            raise ConfigError("serve config must be a mapping at the top level")
        merged = apply_env(data, os.environ if env is None else env)
        base = Path(base_dir) if base_dir is not None else None
        monitor = MonitorConfig.from_mapping(merged, base_dir=base)
        own = {k: merged[k] for k in SERVE_SECTIONS if k in merged and merged[k] is not None}
        if "kafka" not in own:
            raise ConfigError("invalid serve config:\n  kafka: a kafka section is required (bootstrap_servers, topic)")
        try:
            sections = _ServeSections.model_validate(own)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "serve config")) from None
        state = sections.state
        if base is not None and not Path(state.dir).is_absolute():
            state = state.model_copy(update={"dir": str(base / state.dir)})
        outputs = sections.outputs
        if base is not None and outputs.statistics_file and not Path(outputs.statistics_file).is_absolute():
            outputs = outputs.model_copy(update={"statistics_file": str(base / outputs.statistics_file)})
        if monitor.events.format == "avro" and sections.schema_registry is None:
            raise ConfigError(
                "invalid serve config:\n  schema_registry: events.format avro needs a schema_registry section (url)"
            )
        return cls(monitor, sections.kafka, outputs, sections.metrics, state, sections.mlflow, sections.schema_registry)

    @classmethod
    def load(cls, path: str | Path, env: Mapping[str, str] | None = None) -> ServeConfig:
        p = Path(path)
        return cls.from_mapping(load_yaml(p), base_dir=p.parent, env=env)


def apply_env(data: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``STREAMDRIFT_KAFKA__BOOTSTRAP_SERVERS=x`` sets ``kafka.bootstrap_servers``; deeper keys use more ``__``.

    Section and setting names are lower-cased; keys under ``kafka.extra`` keep their spelling
    in lower case (``STREAMDRIFT_KAFKA__EXTRA__FETCH.MAX.BYTES``). Values stay strings
    and the typed settings convert them (``"9308"`` -> 9308, ``"true"`` -> True).
    """
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in path):
            raise ConfigError(f"environment variable {name}: empty setting name")
        value = env[name]
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"environment variable {name}: {where} is not a section")
            child = dict(child)
            node[part] = child
            node = child
        node[path[-1]] = value
    return out


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
