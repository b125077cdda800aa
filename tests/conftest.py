"""Shared fixtures of every tier: the digits data set, the CPU device, telemetry off, MLflow stores, S3, Prefect.

Tiers (folders): `unit/` the code and data checks (small tensors, files, schemas; `make test-unit`),
`behaviour/` forgetting really happens (methods, cleanse, transfer on digits), `pipeline/` the
stages, flows and stores end to end (DVC, Prefect, MLflow, S3, PostgreSQL). `make test` runs all.
"""

import os
import tempfile

import pytest
import torch

for key, value in {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "UNLEARN_DEVICE": "cpu",
    # Stages, flows and servers the tests start run beside the other xdist worker: two processes
    # of two OpenMP threads each on two cores spin-wait on each other (measured: a 5-epoch digits
    # fine-tune 0.8 s alone, 10-13 s beside a twin; 2-3 s with one thread each).
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(key, value)
# Prefect reads its home when first imported: a throw-away one, never the project's or ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="unlearn-test-prefect-")

torch.set_num_threads(1)  # tests use tiny models: a second thread only adds contention


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as a DataBundle (seed 0)."""
    from unlearn.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def cpu():
    return torch.device("cpu")


@pytest.fixture(scope="session")
def digits_original(digits, cpu):
    """The digits preset's original model, trained once per test session (~10 s)."""
    from unlearn.original import train_original
    from unlearn.presets import get_preset

    model, _ = train_original(get_preset("digits"), digits, digits.train, cpu, seed=0)
    return model.eval()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3-compatible server on 127.0.0.1 (a real HTTP server, not a mock object)."""
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on the moto server, named after the test."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def prefect_api():
    """Prefect's test harness: a temporary local API (sqlite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory):
    """An empty, migrated MLflow sqlite database; `store` copies it (0.3 s instead of 10-30 s)."""
    from mlflow_servers import migrated_database

    return migrated_database(tmp_path_factory.mktemp("mlflow-template"))


@pytest.fixture
def store(tmp_path, monkeypatch, mlflow_template):
    """A fresh sqlite tracking store and registry for this test (its URI); runs left open are ended."""
    from mlflow_servers import end_runs, sqlite_store

    yield sqlite_store(tmp_path, monkeypatch, mlflow_template)
    end_runs()


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh MLflow sqlite store and artefact folder for one test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("UNLEARN_ARTIFACT_ROOT", str(tmp_path / "mlartifacts"))
    return tmp_path
