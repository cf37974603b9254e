"""Fixtures for the end-to-end suite: real sluice binaries, real certificates, independent
readers (PyIceberg through the same SQLite catalog, DuckDB's iceberg_scan)."""

import pathlib

import pytest

import harness
from harness import Bins, make_certs


@pytest.fixture(autouse=True)
def reap():
    """Kill every process the test started, whether it passed or failed."""
    yield
    while harness.RUNNING:
        harness.RUNNING.pop().kill()


@pytest.fixture(scope="session")
def bins() -> Bins:
    return Bins.from_env()


@pytest.fixture(scope="session")
def certs(bins, tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("certs")
    # Agents sign their Kafka batches with their key, so every id a test uses has one.
    make_certs(bins, d, agents=["edge-01", "edge-02", "edge-03", "edge-04"])
    return d


@pytest.fixture
def workdir(tmp_path) -> pathlib.Path:
    return tmp_path
