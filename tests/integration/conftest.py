"""Fixtures of the integration tests beyond the broker: an MLflow tracking server, started once per
test session when a test asks for it (SQLite backend store, artifacts proxied to a local directory,
loopback, a free port) and stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import MlflowServer


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server
