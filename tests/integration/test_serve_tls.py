"""TLS for real: ``streamdrift serve`` with ``security_protocol: ssl`` against a broker behind a real
TLS endpoint (certificates made by openssl here, ``socat`` terminating TLS in front of the embedded
broker, which advertises the TLS port), end to end; and a wrong CA or protocol stops serve at start
with an error that names the setting, instead of a consumer that retries forever."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from detectors.evaluate import WINDOW_STATISTICS
from tests.integration.test_serve import (
    assert_same_records,
    build_reference,
    expected_records,
    make_events,
    start_serve,
    topics_for,
    wait_for,
    window_key,
    write_config,
)
from tests.reliability.harness import stop
from tests.servers import Certificates, TlsBroker, make_certificates

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_broker(certs: Certificates) -> Any:
    with TlsBroker(certs) as broker:
        yield broker


def ssl_conf(bootstrap: str, ca: Path) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "security.protocol": "ssl", "ssl.ca.location": str(ca)}


def test_serve_over_tls_end_to_end(tls_broker: TlsBroker, certs: Certificates, tmp_path: Path) -> None:
    conf = ssl_conf(tls_broker.bootstrap, certs.ca)
    topics = topics_for(f"tls-{uuid.uuid4().hex[:8]}")
    admin = AdminClient(conf)
    for f in admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()]).values():
        f.result(timeout=20)
    ref = build_reference(tmp_path / "ref.json")
    events = make_events(2000, drift_at=1000, seed=12)
    p = Producer({**conf, "linger.ms": 5})
    for e in events:
        p.produce(topics["events"], json.dumps(e).encode())
    assert p.flush(30) == 0
    path, data = write_config(
        tmp_path,
        tls_broker.bootstrap,
        topics,
        kafka={"security_protocol": "ssl", "ssl_ca_location": str(certs.ca)},
    )
    want = [
        r for r in expected_records(events, data, ref, events[-1]["timestamp"]) if r["statistic"] in WINDOW_STATISTICS
    ]
    assert len(want) > 20
    log = tmp_path / "serve.log"
    proc = start_serve(path, log)
    reader = Consumer({**conf, "group.id": f"r-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    reader.assign([TopicPartition(topics["stats"], 0, OFFSET_BEGINNING)])
    got: list[dict[str, Any]] = []
    try:

        def done() -> bool:
            got.extend(json.loads(m.value()) for m in reader.consume(1000, 0.2) if m.error() is None)
            return len({window_key(r) for r in got if r["statistic"] in WINDOW_STATISTICS}) >= len(want)

        wait_for(done, proc, log, timeout=90)
        assert_same_records([r for r in got if r["statistic"] in WINDOW_STATISTICS], want)
        assert stop(proc) == 0
    finally:
        reader.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the committed offsets went over TLS too
    c = Consumer({**conf, "group.id": data["kafka"]["group_id"]})
    try:
        assert c.committed([TopicPartition(topics["events"], 0)], timeout=20)[0].offset == len(events)
    finally:
        c.close()


def _serve_fails(tmp_path: Path, bootstrap: str, kafka: dict[str, Any]) -> tuple[int, str, float]:
    topics = topics_for(f"tlsbad-{uuid.uuid4().hex[:8]}")
    build_reference(tmp_path / "ref.json")
    path, _data = write_config(tmp_path, bootstrap, topics, kafka={"connect_timeout": "4s", **kafka})
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "stream.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return r.returncode, r.stderr, time.monotonic() - t0


def test_a_wrong_ca_stops_serve_at_start_naming_the_setting(
    tls_broker: TlsBroker, certs: Certificates, tmp_path: Path
) -> None:
    code, err, took = _serve_fails(
        tmp_path, tls_broker.bootstrap, {"security_protocol": "ssl", "ssl_ca_location": str(certs.other_ca)}
    )
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("streamdrift serve: error: kafka: no answer from")
    assert f"kafka.ssl_ca_location={certs.other_ca}" in last and "certificate verify failed" in last
    assert "kafka.connect_timeout=4s" in last
    assert took < 60
    assert not list((tmp_path / "state").glob("manifest-*"))


def test_plaintext_against_a_tls_port_and_a_missing_ca_file_are_named_too(
    tls_broker: TlsBroker, certs: Certificates, tmp_path: Path
) -> None:
    code, err, _took = _serve_fails(tmp_path, tls_broker.bootstrap, {"security_protocol": "plaintext"})
    assert code == 2, err
    assert "kafka.security_protocol=plaintext" in err.strip().splitlines()[-1]
    code, err, _took = _serve_fails(
        tmp_path, tls_broker.bootstrap, {"security_protocol": "ssl", "ssl_ca_location": str(tmp_path / "nope.pem")}
    )
    assert code == 2, err
    assert "kafka.ssl_ca_location" in err.strip().splitlines()[-1] and "nope.pem" in err
