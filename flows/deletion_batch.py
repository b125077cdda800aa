"""The `deletion_batch` flow: the production path that turns deletion requests into a candidate model.

claim (or resume) a batch -> reject bad requests -> extend the ledger -> write and validate
the split -> version it with DVC -> unlearn the champion -> evaluate -> audit each sample
against the champion's reference pool -> register the candidate -> attach its review
(markdown and plot, on the registered version) -> move the requests to done.

Never lose a request, never process one twice: every step is idempotent (see
`tasks.production.deletion`), requests stay claimed until the last step, and the next run resumes a
claimed batch first. Registration is keyed by the batch id, so a rerun after a crash
between registering and finishing does not register twice. At most one run works at a
time, and a run that dies (SIGKILL included) never blocks the next: see `single_flight`.
Before anything is claimed the pending entries that are no request are set aside, and the
ledger is checked against its chain and the registry (`tasks.production.deletion.verify_state`).

In Prefect the run is named after its batch once claimed (`deletion-batch-20250131T120000Z-1a2b3c4d`
for batch `batch-20250131T120000Z-1a2b3c4d`; `deletion-batch-<start>-empty` when there was
nothing to do), its logs hold the steps' own warnings (each rejection with its reason), and its
`deletion-batch` artefact the review's verdict and evidence and where the version is in MLflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from flows.deployments import capture_project_logs, rename_flow_run, thread_policy, utc_stamp
from tasks.adapters import registry, tracking
from tasks.adapters.batch_lock import BatchLockedError, batch_lock, prefect_server_configured
from tasks.adapters.params import PARAMS_FILE, Params, load_params
from tasks.adapters.requests import InboxError
from tasks.production import deletion
from unlearn.errors import UnlearnError

SINGLE_FLIGHT = "deletion-batch"
RUN_PREFIX = "deletion-batch"
REVIEW_ARTIFACTS_TAG = "review.artifacts"  # set by `deletion.attach_review` with the verdict and evidence

capture_project_logs()  # e.g. `rejected req-7: ...` of tasks.production.deletion, in the run's logs


def transient(task, task_run, state) -> bool:
    """Retry what a store out of reach raised; never bad input or tampered state (an UnlearnError)."""
    try:
        state.result()
    except (InboxError, tracking.TrackingError):
        return True
    except UnlearnError:
        return False
    except Exception:  # noqa: BLE001 - network and server errors of boto3, MLflow, DVC
        return True
    return False


# Transient failures only: the S3 inbox and MLflow over HTTP. Each of these steps is idempotent.
NETWORK_RETRIES = {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": transient, "cache_policy": NO_CACHE}
LOCAL = {"cache_policy": NO_CACHE}  # results are files and registry versions; nothing to cache


@task(name="sweep-inbox", **NETWORK_RETRIES)
def sweep_inbox(params: Params) -> dict[str, str]:
    return deletion.sweep_inbox(params)


@task(name="verify-state", **NETWORK_RETRIES)
def verify_state(params: Params):
    return deletion.verify_state(params)


@task(name="load-data", **LOCAL)
def load_data():
    return deletion.load_data()


@task(name="open-batch", **NETWORK_RETRIES)
def open_batch(params: Params, data):
    return deletion.open_batch(params, data)


@task(name="record-ledger", **LOCAL)
def record(params: Params, batch):
    return deletion.record(params, batch)


@task(name="write-split", **LOCAL)
def write_split(params: Params, batch, ledger, data):
    return deletion.write_split(params, batch, ledger, data)


@task(name="version-split", **NETWORK_RETRIES)
def version_split(params: Params, split):
    return deletion.version_split(params, split)


@task(name="existing-candidate", **NETWORK_RETRIES)
def existing_candidate(params: Params, batch):
    return deletion.existing_candidate(params, batch)


@task(name="unlearn-champion", tags=["gpu"], **LOCAL)
@thread_policy
def unlearn_champion(params: Params, batch, ledger, split):
    return deletion.unlearn_champion(params, batch, ledger, split)


@task(name="evaluate-candidate", tags=["gpu"], **LOCAL)
@thread_policy
def evaluate_candidate(params: Params, split, candidate):
    return deletion.evaluate_candidate(params, split, candidate)


@task(name="audit-candidate", tags=["gpu"], **NETWORK_RETRIES)
@thread_policy
def audit_candidate(params: Params, batch, ledger, split, candidate):
    return deletion.audit_batch(params, batch, ledger, split, candidate)


@task(name="retrain-reference", tags=["gpu"], **LOCAL)
@thread_policy
def retrain_reference(params: Params, split, candidate):
    return deletion.retrain_reference(params, split, candidate)


@task(name="register-candidate", **NETWORK_RETRIES)
def register_candidate(params: Params, batch, ledger, split, candidate, metrics, retrain_metrics, digests, audited):
    return deletion.register_candidate(
        params, batch, ledger, split, candidate, metrics, retrain_metrics, digests, audited
    )


@task(name="attach-review", **NETWORK_RETRIES)
def attach_review(params: Params, batch, version):
    return deletion.attach_review(params, batch, version)


@task(name="finish-batch", **NETWORK_RETRIES)
def finish(params: Params, batch) -> None:
    deletion.finish(params, batch)


def ensure_single_flight() -> None:
    """Create (or keep) the one-slot global concurrency limit that serialises batches."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(SINGLE_FLIGHT, 1)


@contextmanager
def single_flight(params: Params) -> Iterator[None]:
    """Hold the one batch slot: the ledger's kernel lock, and with a Prefect server its leased limit.

    Each wait is bounded by `deletion.lock_timeout_seconds`; see `tasks.adapters.batch_lock` for why a
    killed run frees both (the kernel at once, the server's lease after `deletion.lease_seconds`).
    """
    settings = params.deletion
    with batch_lock(settings.ledger, settings.lock_timeout_seconds):
        if not prefect_server_configured():
            yield
            return
        ensure_single_flight()
        acquired = False
        try:
            with concurrency(
                SINGLE_FLIGHT,
                occupy=1,
                strict=True,
                timeout_seconds=settings.lock_timeout_seconds,
                lease_duration=settings.lease_seconds,
            ):
                acquired = True
                yield
        except TimeoutError as error:
            if acquired:
                raise
            raise BatchLockedError(
                f"Prefect's concurrency limit {SINGLE_FLIGHT!r} stayed taken for {settings.lock_timeout_seconds:g} s "
                "(deletion.lock_timeout_seconds): a batch runs on another machine, or one died there and its "
                f"lease ({settings.lease_seconds:g} s) has not expired yet; the next run will try again"
            ) from error


def _unlearn_and_register(params: Params, batch, ledger, split, digests):
    """The champion unlearned, evaluated and registered; skipped when the batch already has a version."""
    version = existing_candidate(params, batch)
    if version is not None:
        get_run_logger().info("batch %s already registered as version %s", batch.batch_id, version.version)
        if deletion.REVIEW_TAG not in version.tags:  # the run died between registering and attaching
            attach_review(params, batch, version)
        return version, {}
    with tracking.run(params, "unlearn", f"deletion-{batch.batch_id}", **flow_run_tags(batch)) as tracker:
        candidate = unlearn_champion(params, batch, ledger, split)
        describe_run(tracker, params, batch, candidate)
        metrics = evaluate_candidate(params, split, candidate)
        batch_audit = audit_candidate(params, batch, ledger, split, candidate)
        reference = retrain_reference(params, split, candidate) if params.deletion.retrain_reference else None
        tracker.log_split(split.split, batch.batch_id)
        tracker.log_evaluation(metrics)
        if batch_audit is not None:
            tracker.log_evaluation(batch_audit.figures.as_dict(), prefix="audit_")
        version = register_candidate(params, batch, ledger, split, candidate, metrics, reference, digests, batch_audit)
        attach_review(params, batch, version)
        log_evidence(tracker, batch)
    return version, metrics


def describe_run(tracker, params: Params, batch, candidate) -> None:
    """The batch run's params (method and its config, champion, ledger range) and its description."""
    from tasks.adapters.params import flatten

    if not tracker.enabled:
        return
    config = candidate.config or flatten(deletion.batch_method_config(params, deletion.champion_version(params)))
    tracker.log_params({
        "method": candidate.method, "champion_version": candidate.parent_version,
        "ledger_batches": ",".join(candidate.batches), "requests": ",".join(batch.request_ids),
        **{f"method_config.{key}": value for key, value in config.items()},
    })  # fmt: skip
    tracker.set_tags({
        "mlflow.note.content": (
            f"Deletion batch {batch.batch_id}: {len(batch.request_ids)} request(s), unlearned with "
            f"{candidate.method} from champion v{candidate.parent_version}, forgetting ledger batches "
            f"{', '.join(candidate.batches) or batch.batch_id}. Artefacts: the split's validation (JSON, "
            "markdown, Great Expectations Data Docs) and the review (markdown, plot, per-sample audit)."
        )
    })  # fmt: skip


def log_evidence(tracker, batch) -> None:
    """The split's validation report and Data Docs, and the review, as artefacts of the batch run."""
    from tasks.adapters import layout
    from tasks.adapters.expectations import batch_data_docs

    if not tracker.enabled:
        return
    report = layout.batch_validation_report(batch.batch_id)
    tracker.log_artifacts([report, report.with_suffix(".md")], "validation")
    try:
        tracker.log_artifacts([batch_data_docs(batch.batch_id).site], "validation/data_docs")
    except FileNotFoundError as error:
        get_run_logger().warning("batch %s has no Data Docs to attach: %s", batch.batch_id, error)
    tracker.log_artifacts([layout.batch_audit_dir(batch.batch_id)], "review")


def flow_run_tags(batch) -> dict[str, str]:
    """Tags that lead from an MLflow run to the Prefect flow run (and the batch)."""
    from prefect.runtime import flow_run

    return {"prefect.flow_run_id": str(flow_run.id), "batch_id": batch.batch_id}


def run_name() -> str:
    """The flow run's name until its batch is known: `deletion-batch-<UTC timestamp>`."""
    return f"{RUN_PREFIX}-{utc_stamp()}"


def batch_run_name(batch_id: str) -> str:
    """`deletion-batch-20250131T120000Z-1a2b3c4d` for batch `batch-20250131T120000Z-1a2b3c4d`."""
    return f"deletion-{batch_id}" if batch_id.startswith("batch-") else f"{RUN_PREFIX}-{batch_id}"


def name_run(batch) -> None:
    """Rename the flow run after what it works on: its batch (claimed or resumed), or `...-empty`."""
    from prefect.runtime import flow_run

    rename_flow_run(batch_run_name(batch.batch_id) if batch is not None else f"{flow_run.name}-empty")


@flow(name="deletion-batch", flow_run_name=run_name, log_prints=True)
def deletion_batch(params_path: str = str(PARAMS_FILE)) -> dict:
    """Unlearn every pending deletion request as one batch and register the candidate model."""
    params = load_params(params_path)
    with single_flight(params):
        set_aside = sweep_inbox(params)
        verify_state(params)
        data = load_data()
        batch = open_batch(params, data)
        name_run(batch)
        if batch is None:
            return publish({"status": "empty", **({"set_aside": set_aside} if set_aside else {})})
        if not batch.accepted:
            finish(params, batch)
            return publish(
                {
                    "status": "all rejected",
                    "batch_id": batch.batch_id,
                    "rejected": batch.rejected,
                    "set_aside": set_aside,
                }
            )
        ledger = record(params, batch)
        split = write_split(params, batch, ledger, data)
        digests = version_split(params, split)
        version, metrics = _unlearn_and_register(params, batch, ledger, split, digests)
        finish(params, batch)
    return publish(
        {
            "status": "registered",
            "batch_id": batch.batch_id,
            "version": str(version.version),
            "model": version.name,
            "requests": batch.request_ids,
            "rejected": batch.rejected,
            "set_aside": set_aside,
            "resumed": batch.resumed,
            "metrics": metrics,
        },
        version,
    )


def review_of(version) -> dict[str, str | None]:
    """The review `attach_review` recorded on the version: verdict, evidence, where its files are.

    The version in hand was read before its review was attached (or, for a resumed batch, may
    lack it), so its tags are read again; values the registry does not have are None.
    """
    tags = dict(version.tags or {})
    if deletion.REVIEW_TAG not in tags:
        try:
            tags = dict(registry.get_version(version.name, version.version).tags or {})
        except Exception as error:  # noqa: BLE001 - the batch is done; the artefact says what is missing
            get_run_logger().warning("could not read the review of %s v%s: %s", version.name, version.version, error)
    return {
        "verdict": tags.get(deletion.REVIEW_TAG),
        "evidence": tags.get(registry.REVIEW_EVIDENCE_TAG),
        "artifacts": tags.get(REVIEW_ARTIFACTS_TAG),
    }


def mlflow_url(name: str, version: str, uri: str | None = None) -> str | None:
    """The model version's page in the MLflow UI of an http(s) tracking server (no user name or password in it).

    None for other tracking URIs (sqlite, a folder): they have no UI to link to.
    """
    parts = urlsplit(tracking.display_uri(uri))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    base = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
    return f"{base}/#/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}"


def render(summary: dict) -> str:
    """The run's markdown artefact: what was registered and its review, the metrics, the rejections."""
    lines = [f"# Deletion batch: {summary['status']}"]
    for key in ("batch_id", "model", "version", "requests", "resumed"):
        if key in summary:
            lines.append(f"- **{key}**: {summary[key]}")
    if "review" in summary:
        review = summary["review"]
        if review["verdict"]:
            lines.append(f"- **review**: {review['verdict']} (evidence {review['evidence'] or 'not recorded'})")
        else:
            lines.append(
                f"- **review**: not recorded on version {summary['version']} "
                f"(`unlearn review --version {summary['version']}` shows it)"
            )
        if review["artifacts"]:
            lines.append(f"- **review files**: `{review['artifacts']}`")
    for request_id, reason in summary.get("rejected", {}).items():
        lines.append(f"- rejected `{request_id}`: {reason}")
    for label, reason in summary.get("set_aside", {}).items():
        lines.append(f"- set aside `{label}`: {reason}")
    if summary.get("metrics"):
        lines += ["", "| metric | value |", "|---|---|"]
        metrics = summary["metrics"]
        lines += [f"| {name} | {metrics[name]:.2f} |" for name in deletion.BATCH_METRICS if name in metrics]
    if "version" in summary:
        model = f"registered model `{summary['model']}` version {summary['version']}"
        url = mlflow_url(summary["model"], summary["version"])
        where = f"[{model}]({url}) (alias `candidate`)" if url else f"{model} (alias `candidate`)"
        lines.append(f"\nMLflow: {where}; tracking URI `{tracking.display_uri()}`.")
    return "\n".join(lines)


def publish(summary: dict, version=None) -> dict:
    """The run's markdown artefact (`render`); with the registered `version`, its review joins the summary."""
    if version is not None:
        summary = {**summary, "review": review_of(version)}
    create_markdown_artifact(render(summary), key="deletion-batch", description="deletion batch summary")
    return summary
