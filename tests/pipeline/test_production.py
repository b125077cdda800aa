"""The production shape of compose.yaml, for real, with local processes in place of containers.

An `mlflow server` on a PostgreSQL backend store with its artefacts on S3 (moto's server), a
`prefect server` on a PostgreSQL database behind HTTP basic auth, the deletion-request inbox on
S3, a DVC remote on S3, and one deletion batch run by a served deployment (`unlearn serve`,
the worker's command in compose.yaml). Every setting is the environment variable compose.yaml
sets; each test creates and drops its own databases.

Needs the PostgreSQL server on 127.0.0.1:5432 (trust auth, user postgres or root): without it
these tests skip, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow_servers import S3_ENV, end_runs, free_port, s3_keys

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
POSTGRES_USERS = ("postgres", "root")
AUTH_STRING = "admin:not-a-real-secret"  # PREFECT_SERVER_API_AUTH_STRING / PREFECT_API_AUTH_STRING
DEPLOYMENT = "deletion-batch/deletion-batch"
MODEL = "unlearn-digits-digits_resnet"
SERVER_START_SECONDS = 300  # `mlflow server` alone takes ~35 s on two loaded cores; migrations add more
RUN_SECONDS = 900
QUIET_ENV = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}


# --- PostgreSQL ------------------------------------------------------------------------------


def _connect(user: str, database: str = "postgres"):
    import psycopg2

    return psycopg2.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname=database, connect_timeout=5)


@pytest.fixture(scope="module")
def postgres_user() -> str:
    """A user of the local PostgreSQL server that may create databases; skip (fail under CI) without one."""
    import psycopg2

    problems = []
    for user in POSTGRES_USERS:
        try:
            with closing(_connect(user)) as connection, connection.cursor() as cursor:
                cursor.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
                if cursor.fetchone()[0]:
                    return user
                problems.append(f"{user}: may not create databases")
        except psycopg2.OperationalError as error:
            problems.append(f"{user}: {' '.join(str(error).split())}")
    reason = (
        f"no usable PostgreSQL server on {POSTGRES_HOST}:{POSTGRES_PORT} "
        f"(trust auth, user {' or '.join(POSTGRES_USERS)}): {'; '.join(problems)}"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI runs the production tests, but there is {reason}")
    pytest.skip(reason)


def _admin(user: str, statement: str) -> None:
    with closing(_connect(user)) as connection:
        connection.autocommit = True  # CREATE / DROP DATABASE refuse to run in a transaction
        with connection.cursor() as cursor:
            cursor.execute(statement)


def query(user: str, database: str, sql: str, *args) -> list[tuple]:
    """Rows of `sql` in `database`: what a store really holds, read past its server."""
    with closing(_connect(user, database)) as connection, connection.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchall()


@pytest.fixture
def database(postgres_user) -> Iterator[Callable[[str], str]]:
    """Creates a database of this test's own (`unlearn_<purpose>_<random>`); drops them all after it."""
    created: list[str] = []

    def create(purpose: str) -> str:
        name = f"unlearn_{purpose}_{uuid.uuid4().hex[:10]}"
        _admin(postgres_user, f'CREATE DATABASE "{name}"')
        created.append(name)
        return name

    yield create
    for name in created:
        _admin(postgres_user, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- server processes ------------------------------------------------------------------------


def _start(command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    with log.open("w") as output:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (servers and the runner start children), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log: Path, characters: int = 4000) -> str:
    return log.read_text(errors="replace")[-characters:] if log.exists() else "(no log)"


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = SERVER_START_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f} s:\n{_tail(log)}")


@contextmanager
def running(command: list[str], env: dict[str, str], log: Path, health_url: str, cwd: Path | None = None):
    """A process that is stopped on the way out, however the block ends."""
    process = _start(command, env, log, cwd)
    try:
        _wait_healthy(health_url, process, log)
        yield process
    finally:
        _stop(process)


@dataclass
class Stack:
    """The running servers and the environment a worker (or a client) needs to use them."""

    mlflow_url: str
    prefect_api: str
    s3_endpoint: str
    bucket: str
    mlflow_database: str
    prefect_database: str
    env: dict[str, str]  # what compose.yaml sets on the worker, with 127.0.0.1 addresses
    folder: Path


@pytest.fixture
def stack(tmp_path, database, postgres_user, s3_endpoint, s3_bucket) -> Iterator[Stack]:
    """MLflow (PostgreSQL + S3 artefacts) and Prefect (PostgreSQL, basic auth) servers, started together."""
    mlflow_db, prefect_db = database("mlflow"), database("prefect")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "UNLEARN_"))}
    s3 = {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    mlflow_port, prefect_port = free_port(), free_port()
    mlflow_env = {
        **base,
        **QUIET_ENV,
        **s3,
        "MLFLOW_BACKEND_STORE_URI": f"postgresql://{postgres_user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{mlflow_db}",
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{s3_bucket}/mlflow",
    }
    prefect_env = {
        **base,
        **QUIET_ENV,
        "PREFECT_HOME": str(tmp_path / "prefect-server"),
        "PREFECT_API_DATABASE_CONNECTION_URL": (
            f"postgresql+asyncpg://{postgres_user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{prefect_db}"
        ),
        "PREFECT_SERVER_API_AUTH_STRING": AUTH_STRING,
        "PREFECT_UI_ENABLED": "false",  # the UI's static files only cost start-up time here
    }
    mlflow_command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(mlflow_port),
        "--workers",
        "1",
    ]
    prefect_command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    mlflow_url, prefect_api = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}/api"
    mlflow_log, prefect_log = tmp_path / "mlflow-server.log", tmp_path / "prefect-server.log"
    # Both start at once (their migrations overlap); each is stopped however the test ends.
    mlflow_process = _start(mlflow_command, mlflow_env, mlflow_log)
    prefect_process = _start(prefect_command, prefect_env, prefect_log)
    try:
        _wait_healthy(f"{mlflow_url}/health", mlflow_process, mlflow_log)
        _wait_healthy(f"{prefect_api}/health", prefect_process, prefect_log)
        worker_env = {
            **base,
            **QUIET_ENV,
            **s3,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "PREFECT_HOME": str(tmp_path / "prefect-worker"),
            "PREFECT_API_URL": prefect_api,
            "PREFECT_API_AUTH_STRING": AUTH_STRING,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "MLFLOW_TRACKING_URI": mlflow_url,
            "UNLEARN_DEVICE": "cpu",
        }
        yield Stack(mlflow_url, prefect_api, s3_endpoint, s3_bucket, mlflow_db, prefect_db, worker_env, tmp_path)
    finally:
        end_runs()
        _stop(prefect_process)
        _stop(mlflow_process)


# --- the project folder ----------------------------------------------------------------------


def production_params(bucket: str) -> dict:
    """The project's params.yaml, shrunk (as in test_flow_deletion.py), with the inbox on S3.

    The cron fires once a year, so no scheduled run competes with the triggered one.
    """
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(seeds=[0], epochs=2)
    params["unlearn"]["settings"]["ft"] = {"epochs": 1}
    params["deletion"].update(
        method="ft", sparsity=0.5, dvc_push=True, inbox=f"s3://{bucket}/inbox/", schedule="0 0 1 1 *"
    )
    params["audit"].update(references=4, probe_size=50)  # a small pool: 4 two-epoch references
    params["calibrate"]["enabled"] = False  # digits has no tuned values at 50%: calibration has its own tests
    return params


def init_project(folder: Path, stack: Stack) -> None:
    """A git + DVC project whose default remote is an S3 prefix (endpoint: moto's server)."""
    folder.mkdir()
    for command in (
        ["git", "init", "-q"],
        [str(BIN / "dvc"), "init", "-q"],
        [str(BIN / "dvc"), "config", "core.analytics", "false"],
        [str(BIN / "dvc"), "remote", "add", "-d", "s3", f"s3://{stack.bucket}/dvc"],
        [str(BIN / "dvc"), "remote", "modify", "s3", "endpointurl", stack.s3_endpoint],
    ):
        subprocess.run(command, check=True, cwd=folder, env=stack.env, capture_output=True, timeout=120)
    (folder / "params.yaml").write_text(yaml.safe_dump(production_params(stack.bucket)))


@contextmanager
def as_worker(stack: Stack, folder: Path, monkeypatch: pytest.MonkeyPatch):
    """This process configured as the worker is (environment, Prefect settings, working folder)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    for key in ("UNLEARN_ARTIFACT_ROOT", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    for key, value in stack.env.items():
        if key.startswith(("MLFLOW_", "AWS_", "UNLEARN_")):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(folder)
    # Prefect reads its settings once per process: point this one at the server explicitly.
    # Its event and log senders keep the API they started with: restart them on either side.
    _drain_prefect_senders()
    try:
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api, PREFECT_API_AUTH_STRING: AUTH_STRING}):
            yield
    finally:
        _drain_prefect_senders()


def _drain_prefect_senders() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for sender in (EventsWorker, APILogWorker):
        sender.drain_all(timeout=30, at_exit=False)


def prefect_refuses_anonymous_calls(api: str) -> bool:
    anonymous = urllib.request.Request(f"{api}/deployments/filter", data=b"{}", method="POST")
    anonymous.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(anonymous, timeout=30):
            return False
    except urllib.error.HTTPError as error:
        return error.code == 401


# --- the test --------------------------------------------------------------------------------


def test_a_served_deletion_batch_runs_on_postgres_and_s3(stack, postgres_user, monkeypatch):
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    from flows.train_original import train_original
    from tasks.adapters.ledger import Ledger
    from tasks.adapters.registry import BATCH_TAG, CANDIDATE, LEDGER_TAG, REQUEST_IDS_TAG
    from tasks.adapters.requests import open_inbox, submit_request

    project = stack.folder / "project"
    init_project(project, stack)
    inbox_uri = f"s3://{stack.bucket}/inbox/"
    assert prefect_refuses_anonymous_calls(stack.prefect_api)  # basic auth is really on

    with as_worker(stack, project, monkeypatch):
        champion = train_original("params.yaml")  # `docker compose run --rm worker train-original`
        submit_request(inbox_uri, sample_ids=["digits/train/00001", "digits/train/00002"], request_id="req-prod")
        runner_port = free_port()
        serve_env = {
            **stack.env,
            "PREFECT_RUNNER_SERVER_ENABLE": "true",
            "PREFECT_RUNNER_SERVER_HOST": "127.0.0.1",
            "PREFECT_RUNNER_SERVER_PORT": str(runner_port),
        }
        serve_log = stack.folder / "serve.log"
        serve = [str(BIN / "unlearn"), "serve", "--params", "params.yaml"]
        # The worker's command and health check in compose.yaml; stopped before the servers.
        with running(serve, serve_env, serve_log, f"http://127.0.0.1:{runner_port}/health", cwd=project):
            flow_run = run_deployment(DEPLOYMENT, timeout=RUN_SECONDS, poll_interval=2)
            assert flow_run.state is not None and flow_run.state.is_completed(), (
                f"flow run {flow_run.id} ended {flow_run.state}:\n{_tail(serve_log)}"
            )

        where = open_inbox(inbox_uri).status("req-prod")
        ledger_digest = Ledger.load(production_params(stack.bucket)["deletion"]["ledger"]).digest()

    assert where is not None and where.state == "done"
    registry = MlflowClient(tracking_uri=stack.mlflow_url)
    candidate = registry.get_model_version_by_alias(MODEL, CANDIDATE)
    assert candidate.tags[REQUEST_IDS_TAG] == "req-prod"
    assert candidate.tags[BATCH_TAG] == where.batch_id
    assert candidate.tags[LEDGER_TAG] == ledger_digest
    assert int(candidate.version) > int(champion["champion_version"])

    # The stores behind the servers really are PostgreSQL and S3.
    mlflow_aliases = "SELECT alias, version FROM registered_model_aliases WHERE name = %s"
    assert ("candidate", int(candidate.version)) in query(postgres_user, stack.mlflow_database, mlflow_aliases, MODEL)
    prefect_state = "SELECT state_type FROM flow_run WHERE id = %s"
    assert query(postgres_user, stack.prefect_database, prefect_state, str(flow_run.id)) == [("COMPLETED",)]
    assert s3_keys(stack.s3_endpoint, stack.bucket, "mlflow/"), "no MLflow artefact reached S3"
    assert s3_keys(stack.s3_endpoint, stack.bucket, "dvc/"), "the batch's split is not on the DVC remote"
    done = s3_keys(stack.s3_endpoint, stack.bucket, f"inbox/done/{where.batch_id}/")
    assert done == [f"inbox/done/{where.batch_id}/req-prod.json"]

    # A batch killed on the worker (SIGKILL, mid-registration) holds Prefect's slot on the server
    # until its lease expires; the next batch takes over within a bounded time, with no manual step.
    submit_request(inbox_uri, sample_ids=["digits/train/00003"], request_id="req-killed")
    flag = project / "registering.flag"
    killed = _batch_process(stack, project, stack.folder / "killed.log", slow_register=True)
    deadline = time.monotonic() + RUN_SECONDS
    while not flag.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert flag.exists(), _tail(stack.folder / "killed.log")
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    started = time.monotonic()
    second = _batch_process(stack, project, stack.folder / "resumed.log")
    assert second.wait(timeout=RUN_SECONDS) == 0, _tail(stack.folder / "resumed.log")
    waited = time.monotonic() - started
    output = (stack.folder / "resumed.log").read_text()
    assert "deletion batch: registered" in output and "resumed" in output, output[-3000:]
    resumed = open_inbox(inbox_uri).status("req-killed")
    assert resumed.state == "done"
    versions = registry.search_model_versions(f"name = '{MODEL}' and tags.{BATCH_TAG} = '{resumed.batch_id}'")
    assert len(versions) == 1
    print(f"the batch after the killed one completed {waited:.0f} s after it started (lease 60 s)")


def _batch_process(stack: Stack, project: Path, log: Path, slow_register: bool = False) -> subprocess.Popen:
    """`unlearn batch` as the worker runs it; `slow_register`: it stalls in registration (to be killed)."""
    code = "import sys; from cli import app\n"
    if slow_register:
        code += (
            "import time; from pathlib import Path; from tasks.adapters import registry\n"
            "def stall(*args, **kwargs):\n    Path('registering.flag').touch(); time.sleep(3600)\n"
            "registry.register_version = stall\n"
        )
    code += "app(['batch', '--params', 'params.yaml'])\n"
    return _start([sys.executable, "-c", code], {**stack.env, "PYTHONUNBUFFERED": "1"}, log, cwd=project)
