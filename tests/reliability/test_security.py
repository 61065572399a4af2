"""Security settings of ``streamdrift serve``: SASL/TLS pass-through, secrets, the /metrics endpoint.

* SASL SCRAM against a real broker: tansu started with ``--authentication`` takes a SCRAM
  handshake from serve's start-up check (it answers ``unknown-user``: tansu's in-memory storage
  cannot hold users, so a successful login cannot be shown here; the handshake proves the
  mechanism, user and password reach librdkafka and the wire), and serve stops with an error
  that names the SASL settings;
* the rendered librdkafka configs carry every SASL and TLS setting, and a real librdkafka
  client accepts them (with certificate files made by openssl at test time);
* the secret (SASL password, TLS key password) never appears in serve's log (librdkafka
  debug on), its ``--check`` output or config errors;
* /metrics listens on loopback only by default, and serves HTTPS when a certificate is set.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, Producer

from stream.demo.broker import EmbeddedBroker
from stream.exceptions import ConfigError
from stream.settings import KafkaConfig, MetricsConfig, ServeConfig
from tests.conftest import create_topics
from tests.reliability import harness as h

pytestmark = pytest.mark.reliability


def self_signed(tmp: Path, name: str = "srv", key_password: str | None = None) -> tuple[Path, Path]:
    key, cert = tmp / f"{name}.key", tmp / f"{name}.crt"
    cmd = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    ]
    cmd += ["-passout", f"pass:{key_password}"] if key_password else ["-nodes"]
    subprocess.run(cmd, check=True, capture_output=True)
    return key, cert


def test_rendered_client_config_carries_sasl_and_tls(tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path, key_password=h.SECRET)
    kc = KafkaConfig(
        bootstrap_servers="127.0.0.1:1",
        topic="t",
        security_protocol="sasl_ssl",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="alice",
        sasl_password=h.SECRET,  # type: ignore[arg-type]
        ssl_ca_location=str(cert),
        ssl_certificate_location=str(cert),
        ssl_key_location=str(key),
        ssl_key_password=h.SECRET,  # type: ignore[arg-type]
        extra={"ssl.endpoint.identification.algorithm": "none"},
    )
    want = {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "alice",
        "sasl.password": h.SECRET,
        "ssl.ca.location": str(cert),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.key.password": h.SECRET,
        "ssl.endpoint.identification.algorithm": "none",
    }
    consumer_conf, producer_conf = kc.consumer_conf(), kc.producer_conf()
    missing = {k: v for k, v in want.items() if consumer_conf.get(k) != v}
    missing_p = {
        k: v for k, v in want.items() if k != "ssl.endpoint.identification.algorithm" and producer_conf.get(k) != v
    }
    # librdkafka itself accepts the settings (it loads the key with its password and the certificates)
    Consumer(consumer_conf).close()
    Producer(producer_conf).flush(0)
    print(
        f"\nSASL/TLS pass-through: {len(want)} settings in the consumer config, missing {sorted(missing)}; "
        f"producer missing {sorted(missing_p)}; librdkafka accepted both (key decrypted with its password)"
    )
    assert missing == {} and missing_p == {}
    for bad in ({"sasl.password": "x"}, {"ssl.key.password": "x"}, {"enable.auto.commit": True}):
        with pytest.raises(ValueError, match="not allowed"):
            KafkaConfig(bootstrap_servers="b:1", topic="t", extra=bad)  # type: ignore[arg-type]


def test_sasl_scram_handshake_reaches_the_broker_and_the_secret_stays_hidden(tmp_path: Path) -> None:
    """The broker refuses the credentials: serve stops at start (kafka.connect_timeout) with librdkafka's
    reason and the settings to check, instead of retrying forever; the secret appears nowhere, not even
    with librdkafka's security debug lines in the log."""
    broker = EmbeddedBroker(extra_args=["--authentication"]).start()
    port = broker.port
    try:
        h.build_reference(tmp_path / "ref.json")
        cfg = h.write_config(
            tmp_path,
            f"127.0.0.1:{port}",
            h.topics_for("sasl"),
            overrides={
                "kafka": {
                    "security_protocol": "sasl_plaintext",
                    "sasl_mechanism": "SCRAM-SHA-512",
                    "sasl_username": "alice",
                    "sasl_password": h.SECRET,
                    "connect_timeout": "5s",
                    "extra": {"debug": "security,broker,conf"},
                }
            },
        )
        log = tmp_path / "serve.log"
        proc = h.start_serve(cfg, log)
        try:
            code = proc.wait(timeout=120)
        finally:
            h.kill(proc)
    finally:
        broker.stop()
    text = log.read_text()
    mech = re.findall(r"SASL SCRAM authentication failed: ([^(]*)", text)
    last = text.strip().splitlines()[-1]
    print(
        f"\nSASL SCRAM-SHA-512 vs tansu --authentication: {len(mech)} handshakes, broker said {mech[0].strip()!r}; "
        f"secret in serve log (librdkafka debug=security,broker,conf; {len(text)} bytes): {h.SECRET in text}"
    )
    assert code == 2
    assert last.startswith("streamdrift serve: error: kafka: no answer from")
    assert "unknown-user" in last and "check kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password" in last
    assert "sasl_plaintext" in text and "unknown-user" in mech[0]
    assert h.SECRET not in text


def test_secret_never_in_check_output_or_errors(tmp_path: Path) -> None:
    h.build_reference(tmp_path / "ref.json")
    cfg = h.write_config(
        tmp_path,
        "127.0.0.1:1",
        h.topics_for("chk"),
        overrides={
            "kafka": {
                "security_protocol": "sasl_ssl",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "bob",
                "sasl_password": h.SECRET,
            }
        },
    )
    env = {**os.environ, "STREAMDRIFT_KAFKA__SSL_KEY_PASSWORD": h.SECRET}
    check = subprocess.run(
        [sys.executable, "-m", "stream.cli", "serve", "--config", str(cfg), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    # invalid configs whose error messages must not echo the secret
    data = yaml.safe_load(cfg.read_text())
    bad_cases = {
        "bad port": {**data, "metrics": {"port": h.SECRET}},
        "unknown key": {**data, "kafka": {**data["kafka"], "sasl_pasword": h.SECRET}},
        "bad password type": {**data, "kafka": {**data["kafka"], "sasl_password": {"v": h.SECRET}}},
        "bad extra": {**data, "kafka": {**data["kafka"], "extra": {"sasl.password": h.SECRET}}},
    }
    leaks: dict[str, bool] = {}
    for name, bad in bad_cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        run = subprocess.run(
            [sys.executable, "-m", "stream.cli", "serve", "--config", str(path), "--check"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2, (name, run.stdout, run.stderr)
        leaks[name] = h.SECRET in run.stdout + run.stderr
        with pytest.raises(ConfigError) as info:
            ServeConfig.from_mapping(bad, env={})
        leaks[name + " (exception)"] = h.SECRET in str(info.value) or h.SECRET in repr(info.value)
    conf = ServeConfig.from_mapping(data, env={"STREAMDRIFT_KAFKA__SSL_KEY_PASSWORD": h.SECRET})
    print(
        f"\nsecrets: --check output has the secret: {h.SECRET in check.stdout + check.stderr}; repr: "
        f"{h.SECRET in repr(conf)}; config errors leaking it: {[k for k, v in leaks.items() if v]}"
    )
    assert "**********" in check.stdout
    assert h.SECRET not in check.stdout + check.stderr
    assert h.SECRET not in repr(conf) and h.SECRET not in str(conf.kafka)
    assert not any(leaks.values()), leaks


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) of LISTEN sockets on ``port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, _remote, state = line.split()[1:4]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                out.add(addr)
    return out


def test_metrics_loopback_by_default_and_https_when_configured(kafka_bootstrap: str, tmp_path: Path) -> None:
    assert MetricsConfig().address == "127.0.0.1"
    topics = h.topics_for(f"mt-{time.monotonic_ns() % 10**9}")
    create_topics(kafka_bootstrap, *topics.values())
    h.build_reference(tmp_path / "ref.json")
    key, cert = self_signed(tmp_path)
    data = yaml.safe_load(h.write_config(tmp_path, kafka_bootstrap, topics).read_text())
    del data["metrics"]["address"]  # the default
    data["metrics"].update({"certfile": str(cert), "keyfile": str(key)})
    cfg = tmp_path / "tls.yaml"
    cfg.write_text(yaml.safe_dump(data))
    log = tmp_path / "serve.log"
    proc = h.start_serve(cfg, log)
    try:
        h.wait_for(lambda: h.metrics_port(log) is not None, "the metrics endpoint", 30, proc, log)
        port = h.metrics_port(log)
        assert port is not None
        addrs = listening_addresses(port)
        ctx = ssl.create_default_context(cafile=str(cert))
        page = h.scrape(port, "https", ctx)
        with pytest.raises(OSError):  # plain HTTP is not served
            h.scrape(port)
        assert h.stop(proc) == 0
    finally:
        h.kill(proc)
    print(
        f"\n/metrics: listening on {sorted(addrs)} (0100007F = 127.0.0.1), HTTPS with a self-signed cert verified: "
        f"{'streamdrift_build_info' in page}, plain HTTP refused"
    )
    assert addrs == {"0100007F"}
    assert "streamdrift_build_info" in page
