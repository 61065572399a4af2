"""ServeConfig: env overrides, librdkafka rendering, secrets never shown, errors that name the field."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream.exceptions import ConfigError
from stream.settings import ServeConfig

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-Pa55w0rd"


def _data(**kafka: object) -> dict[str, object]:
    k: dict[str, object] = {"bootstrap_servers": "127.0.0.1:9092", "topic": "events"}
    k.update(kafka)
    return {"monitor": "m", "reference": "ref.json", "kafka": k, "state": {"dir": "st"}}


def test_defaults_and_base_dir(tmp_path: Path) -> None:
    cfg = ServeConfig.from_mapping(_data(), base_dir=tmp_path, env={})
    assert cfg.metrics.address == "127.0.0.1"
    assert cfg.metrics.port == 9308
    assert cfg.state.dir == str(tmp_path / "st")
    assert cfg.monitor.reference == str(tmp_path / "ref.json")
    conf = cfg.kafka.consumer_conf()
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert conf["bootstrap.servers"] == "127.0.0.1:9092" and conf["group.id"] == "streamdrift"


def test_env_overrides_win() -> None:
    env = {
        "STREAMDRIFT_KAFKA__BOOTSTRAP_SERVERS": "broker:9093",
        "STREAMDRIFT_METRICS__PORT": "0",
        "STREAMDRIFT_KAFKA__EXTRA__SESSION.TIMEOUT.MS": "6000",
        "STREAMDRIFT_WINDOW__SIZE": "30s",
        "STREAMDRIFT_KAFKA__SASL_PASSWORD": SECRET,
        "OTHER_VAR": "ignored",
    }
    cfg = ServeConfig.from_mapping(_data(), env=env)
    assert cfg.kafka.bootstrap_servers == "broker:9093"
    assert cfg.metrics.port == 0
    assert cfg.monitor.window.size_ms == 30_000
    assert cfg.kafka.consumer_conf()["session.timeout.ms"] == "6000"
    assert cfg.kafka.librdkafka()["sasl.password"] == SECRET


def test_sasl_and_tls_render_to_librdkafka_keys() -> None:
    cfg = ServeConfig.from_mapping(
        _data(
            security_protocol="sasl_ssl",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="u",
            sasl_password=SECRET,
            ssl_ca_location="/ca.pem",
        ),
        env={},
    )
    conf = cfg.kafka.librdkafka()
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u",
        "sasl.password": SECRET,
        "ssl.ca.location": "/ca.pem",
    }


def test_secret_never_in_repr_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    cfg = ServeConfig.from_mapping(_data(sasl_password=SECRET), env={})
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.kafka)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").info("config %r", cfg)
    assert SECRET not in caplog.text
    with pytest.raises(ConfigError) as exc:
        ServeConfig.from_mapping(_data(sasl_password=SECRET, security_protocol="bogus"), env={})
    assert SECRET not in str(exc.value)
    assert "kafka.security_protocol" in str(exc.value)


def test_check_command_masks_secret(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(_data()))
    out = subprocess.run(
        [sys.executable, "-m", "stream.cli", "serve", "--config", str(path), "--check"],
        capture_output=True,
        text=True,
        env={"STREAMDRIFT_KAFKA__SASL_PASSWORD": SECRET, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "config ok" in out.stdout and "**********" in out.stdout
    assert SECRET not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_data(topic=""), "kafka.topic"),
        (_data(extra={"enable.auto.commit": True}), "kafka.extra"),
        (_data(batch_size=0), "kafka.batch_size"),
        (_data(poll_timeout="soon"), "kafka.poll_timeout"),
        ({**_data(), "metrics": {"port": 70000}}, "metrics.port"),
        ({**_data(), "metrics": {"adress": "0.0.0.0"}}, "metrics.adress"),
        ({**_data(), "state": {"checkpoint_interval": "0s"}}, "state.checkpoint_interval"),
        ({**_data(), "outputs": {"alert_topic": "a"}}, "outputs.alert_topic"),
        ({"monitor": "m", "reference": "r.json"}, "kafka"),
        ({**_data(), "window": {"kind": "hourly"}}, "window.kind"),
    ],
)
def test_bad_config_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        ServeConfig.from_mapping(data, env={})
    assert field in str(exc.value)


def test_bad_env_names_the_field() -> None:
    with pytest.raises(ConfigError) as exc:
        ServeConfig.from_mapping(_data(), env={"STREAMDRIFT_METRICS__PORT": "ninety"})
    assert "metrics.port" in str(exc.value)
