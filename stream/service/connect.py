"""At start, make sure the broker answers with the configured security settings, or say which one is wrong.

librdkafka retries an unreachable broker (or a failing TLS/SASL handshake) forever and only logs
it; a consumer started with a wrong CA would sit there looking healthy. So ``serve`` first asks
for the cluster's metadata with a short-lived admin client on the same connection settings,
waiting at most ``kafka.connect_timeout``; if that fails it stops with an error that quotes what
librdkafka reported and names the setting to look at (``kafka.ssl_ca_location`` for a
certificate that does not verify, the SASL settings for an authentication failure, and so on).
Once running, a broker outage is librdkafka's to ride out, as before.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from stream.exceptions import ConfigError
from stream.settings import CONNECTION_EXTRA, KafkaConfig

log = logging.getLogger("streamdrift.connect")


def check_broker(kafka: KafkaConfig, topic: str) -> None:
    """Raise :class:`ConfigError` naming the setting to fix unless the broker returns metadata in time."""
    errors: list[KafkaError] = []
    conf: dict[str, Any] = kafka.librdkafka()
    for k in CONNECTION_EXTRA:
        if k in kafka.extra:
            conf[k] = kafka.extra[k]
    conf["error_cb"] = errors.append
    if "debug" in kafka.extra:  # (asked for: librdkafka's debug lines go to the log, as the consumer's do)
        conf["logger"] = log
    else:
        conf["log_level"] = 0  # (the error says it once; not a line per retry)
    try:
        admin = AdminClient(conf)
    except KafkaException as exc:  # a file librdkafka cannot read, a malformed setting
        raise ConfigError(f"kafka: {_explain(str(exc.args[0].str()), kafka)}") from None
    timeout = kafka.connect_timeout_s
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        admin.poll(0)  # (delivers the errors librdkafka met meanwhile to error_cb)
        detail = next((e.str() for e in reversed(errors) if e.code() != KafkaError._ALL_BROKERS_DOWN), None)
        raise ConfigError(
            f"kafka: no answer from {kafka.bootstrap_servers} within kafka.connect_timeout={kafka.connect_timeout} "
            f"({_explain(detail or str(exc.args[0].str()), kafka)})"
        ) from None
    if topic not in md.topics:
        log.warning("topic %s does not exist (yet) on %s: waiting for it", topic, kafka.bootstrap_servers)


def _explain(detail: str, kafka: KafkaConfig) -> str:
    """librdkafka's text plus the setting it points at."""
    low = detail.lower()
    if "ssl.ca.location" in low or "certificate verify failed" in low:
        where = kafka.ssl_ca_location or "(not set: the system's CA bundle)"
        return (
            f"{detail}; check kafka.ssl_ca_location={where}: it must hold the CA that signed the broker's certificate"
        )
    if "ssl.certificate.location" in low or "ssl.key.location" in low or "ssl.key.password" in low:
        return f"{detail}; check kafka.ssl_certificate_location, kafka.ssl_key_location and kafka.ssl_key_password"
    if "handshake" in low or "ssl" in low:
        return f"{detail}; check kafka.security_protocol={kafka.security_protocol} and the kafka.ssl_* settings"
    if "sasl" in low or "authentication" in low:
        return (
            f"{detail}; check kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password "
            f"(kafka.security_protocol={kafka.security_protocol})"
        )
    return f"{detail}; check kafka.bootstrap_servers and kafka.security_protocol={kafka.security_protocol}"
