"""Real stores for the MLflow tests: sqlite copies, an `mlflow server` process on 127.0.0.1, S3 reads.

moto's S3 server itself comes from conftest.py (`s3_endpoint`, `s3_bucket`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
QUIET_ENV = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def migrated_database(folder: Path) -> Path:
    """An empty MLflow sqlite database: copies of it are fresh stores in 0.3 s instead of 10-30 s."""
    from mlflow import MlflowClient

    path = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # runs the migrations
    return path


def sqlite_store(folder: Path, monkeypatch: pytest.MonkeyPatch, template: Path) -> str:
    """Point tracking at a fresh sqlite store in `folder` (a copy of `template`, artefacts beside it)."""
    shutil.copyfile(template, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    for key, value in {**QUIET_ENV, "MLFLOW_TRACKING_URI": uri}.items():
        monkeypatch.setenv(key, value)
    for key in ("UNLEARN_ARTIFACT_ROOT", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    return uri


def end_runs() -> None:
    """End any run a failed test left active, so the next test starts clean."""
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def mlflow_server(
    folder: Path, template: Path, artifacts_destination: str | None = None, env: dict | None = None
) -> Iterator[str]:
    """`mlflow server` on a free port of 127.0.0.1 (a copy of `template` as its store); yields its URL.

    Artefacts are proxied (`mlflow-artifacts:`) to `artifacts_destination`, by default a folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, folder / "server.db")
    port = free_port()
    destination = artifacts_destination or (folder / "server-artifacts").as_uri()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination",
        destination,
    ]
    log = folder / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **QUIET_ENV, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _boto_credentials() -> dict:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def s3_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object key under `prefix` in `bucket`."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]
