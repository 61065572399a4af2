"""Real servers for the tests that need more than the broker: TLS in front of a TCP service (Debian's
``openssl`` for the certificates, ``socat`` as the terminator), and an MLflow tracking server.

The embedded broker's own TLS did not complete a handshake with librdkafka (ENVIRONMENT.md), so a
TLS endpoint here is ``socat OPENSSL-LISTEN`` forwarding to the plain port, with the broker
advertising the TLS port. Each server runs in its own process group, stopped by its id.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from stream.demo.broker import EmbeddedBroker, free_port, wait_for_port


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise RuntimeError(f"{tool} is not installed: `make system-deps` installs it (Debian package {tool})")
    return found


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA that signed the server's certificate
    other_ca: Path  # a CA that did not
    server: Path  # the server's certificate and key in one PEM file (socat's cert=)


def make_certificates(directory: Path, host: str = "127.0.0.1") -> Certificates:
    """A CA, a server certificate for ``host`` signed by it, and an unrelated CA."""
    openssl = need("openssl")
    d = directory
    d.mkdir(parents=True, exist_ok=True)

    def run(command: str) -> None:
        subprocess.run([openssl, *shlex.split(command)], cwd=d, check=True, capture_output=True)

    for name, subject in (("ca", "streamdrift test CA"), ("other", "some other CA")):
        run(f"req -x509 -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.pem -days 2 -subj '/CN={subject}'")
    run(f"req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN={host}")
    (d / "san.cnf").write_text(f"subjectAltName=IP:{host},DNS:localhost\n")
    run("x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.cnf")
    bundle = d / "server-bundle.pem"
    bundle.write_bytes((d / "server.pem").read_bytes() + (d / "server.key").read_bytes())
    return Certificates(d / "ca.pem", d / "other.pem", bundle)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group this test started (its id is the process's), then SIGKILL if needed."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class TlsTerminator:
    """``socat`` accepting TLS on a free loopback port and forwarding to ``target_port`` in plain TCP."""

    def __init__(self, target_port: int, certs: Certificates, port: int | None = None) -> None:
        self.target_port = target_port
        self.certs = certs
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TlsTerminator:
        listen = f"OPENSSL-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,cert={self.certs.server},verify=0"
        self.proc = subprocess.Popen(
            [need("socat"), listen, f"TCP:127.0.0.1:{self.target_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # (every refused handshake of the wrong-CA tests is logged there)
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.proc is not None:
            _stop_group(self.proc)


class TlsBroker:
    """The embedded broker behind a TLS terminator: ``bootstrap`` is the TLS endpoint."""

    def __init__(self, certs: Certificates) -> None:
        self.tls_port = free_port()
        self.broker = EmbeddedBroker(advertised_port=self.tls_port)
        self.tls = TlsTerminator(self.broker.port, certs, self.tls_port)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    @property
    def plain_bootstrap(self) -> str:
        return self.broker.bootstrap

    def __enter__(self) -> TlsBroker:
        self.broker.start()
        try:
            self.tls.__enter__()
        except BaseException:
            self.broker.stop()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.tls.__exit__(t, e, tb)
        finally:
            self.broker.stop()


class MlflowServer:
    """``mlflow server`` on a free loopback port: SQLite backend store, artifacts proxied to a local
    directory (clients upload and download them over HTTP, as with a remote server)."""

    def __init__(self, directory: Path, startup_timeout: float = 240.0) -> None:
        self.dir = directory
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "mlflow-server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MlflowServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).parent / "mlflow"
        cmd = [
            str(mlflow if mlflow.exists() else need("mlflow")),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.dir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                self.__exit__(None, None, None)
                raise RuntimeError(f"mlflow server did not come up (exit {self.proc.returncode}):\n{tail}")
            time.sleep(0.5)

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.proc is not None:
            _stop_group(self.proc, timeout=20)
