"""`unlearn`: the one command-line entry point."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from tasks.adapters.layout import PARAMS_FILE

app = typer.Typer(
    help="Prune first, then unlearn: make image classifiers forget on request.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


request_app = typer.Typer(help="Deletion requests: submit them to the inbox, see where they are.", no_args_is_help=True)
app.add_typer(request_app, name="request")
audit_app = typer.Typer(help="The membership audit: the champion's reference pool.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@app.callback()
def main(verbose: Annotated[bool, typer.Option(help="Print progress lines (one per epoch).")] = True) -> None:
    """Make trained image classifiers forget data on request, verifiably."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


def _model_and_gates(model: str | None, params: Path):
    """The registered model (default: params.yaml's preset) and the promotion gates of params.yaml."""
    from tasks.adapters.registry import default_model_name
    from tasks.production.promotion import load_gates

    return model or default_model_name(params), load_gates(params)


def _fail(error: Exception) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(1)


ModelOption = Annotated[
    str | None, typer.Option("--model", help="Registered model; default: from params.yaml's preset.")
]
ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml holding the promotion gates.")]


@app.command()
def review(
    version: Annotated[int | None, typer.Option(help="Version to review; default: the `candidate`.")] = None,
    model: ModelOption = None,
    params: ParamsOption = PARAMS_FILE,
) -> None:
    """Show a version against the champion (and Retrain) on UA, MIA-efficacy, RA, TA, RTE, with the gates."""
    from tasks.production.promotion import review as review_version
    from unlearn.errors import UnlearnError

    try:
        name, gates = _model_and_gates(model, params)
        typer.echo(review_version(version, name=name, gates=gates).render())
    except UnlearnError as error:
        raise _fail(error) from error


@app.command()
def promote(
    version: Annotated[int, typer.Option(help="Version to make champion.")],
    reviewer: Annotated[str, typer.Option(help="Who approves the promotion (recorded on the version).")],
    reason: Annotated[str | None, typer.Option(help="Why (required with --force).")] = None,
    force: Annotated[bool, typer.Option(help="Promote despite failed gates; recorded as forced.")] = False,
    model: ModelOption = None,
    params: ParamsOption = PARAMS_FILE,
) -> None:
    """Move the `champion` alias to a version that passes the gates; record reviewer, time and reason."""
    from tasks.production.promotion import promote as promote_version
    from unlearn.errors import UnlearnError

    try:
        name, gates = _model_and_gates(model, params)
        done = promote_version(version, reviewer, reason, force, name=name, gates=gates)
    except UnlearnError as error:
        raise _fail(error) from error
    previous = f"v{done.previous}" if done.previous else "none"
    forced = f" (FORCED: {done.reason})" if done.forced else ""
    typer.echo(f"{name}: champion {previous} -> v{done.version} by {done.reviewer} at {done.time}{forced}")
    for warning in done.warnings:
        typer.echo(f"  warning (recorded on the version): {warning}", err=True)
    for gate in done.gates:
        typer.echo(f"  {gate.line()}")


@app.command()
def history(
    request_id: Annotated[
        str | None, typer.Argument(help="A deletion request: which version forgot it, its audit, is it in service.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    model: ModelOption = None,
    params: ParamsOption = PARAMS_FILE,
) -> None:
    """List the champion's lineage with the requests each version forgot; or one request's history."""
    import json

    from tasks.adapters.ledger import DEFAULT_LEDGER
    from tasks.adapters.params import load_params
    from tasks.adapters.registry import history as lineage
    from tasks.adapters.registry import history_as_dict, render_history, render_request_history, request_history
    from unlearn.errors import UnlearnError

    try:
        name, _ = _model_and_gates(model, params)
        if request_id is None:
            entries = lineage(name)
            shown, text = history_as_dict(name, entries), render_history(name, entries)
        else:
            ledger = load_params(params).deletion.ledger if params.is_file() else DEFAULT_LEDGER
            found = request_history(name, request_id, ledger)
            shown, text = found.as_dict(), render_request_history(found)
    except UnlearnError as error:
        raise _fail(error) from error
    typer.echo(json.dumps(shown, indent=2, sort_keys=True) if as_json else text)


StudyParams = Annotated[Path, typer.Option("--params", help="The study's params file.")]


@app.command()
def study(
    params: StudyParams = PARAMS_FILE,
    task_runner: Annotated[str, typer.Option(help="threads, or dask (a LocalCluster, or --address).")] = "threads",
    address: Annotated[str | None, typer.Option(help="A Dask scheduler to run on (production).")] = None,
) -> None:
    """Run the paper's study as a Prefect flow (the same stages as `dvc repro`) and print its tables."""
    from flows.study import run_study
    from tasks.adapters.params import load_params
    from tasks.stages.findings import report_tables

    run_study(str(params), task_runner=task_runner, address=address)
    typer.echo(report_tables(load_params(params)))


@app.command()
def report(params: StudyParams = PARAMS_FILE) -> None:
    """Print the study's tables (the paper's Table 3 layout) and the findings checked on this run."""
    from tasks.adapters.params import load_params
    from tasks.stages.findings import report_tables

    typer.echo(report_tables(load_params(params)))


@app.command("train-original")
def train_original(params: StudyParams = PARAMS_FILE) -> None:
    """Train (and prune, per `deletion.sparsity`) the first champion and register it in MLflow."""
    from flows.train_original import train_original as flow

    summary = flow(str(params))
    typer.echo(
        f"{summary['model']}: champion v{summary['champion_version']} "
        f"(sparsity {summary['sparsity']:.0%}, dense original v{summary['dense_version']})"
    )


@audit_app.command("build")
def audit_build(
    params: StudyParams = PARAMS_FILE,
    version: Annotated[int | None, typer.Option(help="Version to build the pool for; default: the champion.")] = None,
    if_stale: Annotated[
        bool, typer.Option(help="Only if the champion has no pool or its deleted share reached the rebuild level.")
    ] = False,
    task_runner: Annotated[str | None, typer.Option(help="threads or dask; default: audit.task_runner.")] = None,
    address: Annotated[str | None, typer.Option(help="A Dask scheduler to run on (production).")] = None,
) -> None:
    """Train the audit's K reference models (seeded halves of the champion's data), keep their scores."""
    from flows.audit_pool import audit_pool
    from unlearn.errors import UnlearnError

    try:
        summary = audit_pool(str(params), None if version is None else str(version), if_stale, task_runner, address)
    except UnlearnError as error:
        raise _fail(error) from error
    if summary["status"] == "valid":
        typer.echo(f"reference pool {summary['pool']} is still valid: nothing built")
        return
    typer.echo(
        f"{summary['model']} v{summary['champion_version']}: reference pool {summary['pool']}, "
        f"{summary['references']} references in {summary['seconds']:.1f} s "
        f"(median {summary['reference_seconds_median']:.1f} s each), sha256 {summary['sha256'][:12]}"
    )


@app.command()
def batch(params: StudyParams = PARAMS_FILE) -> None:
    """Run one deletion batch now, outside any schedule, and print what it registered."""
    from flows.deletion_batch import deletion_batch
    from tasks.production.deletion import BATCH_METRICS

    summary = deletion_batch(str(params))
    typer.echo(f"deletion batch: {summary['status']}")
    if summary.get("resumed"):
        typer.echo("  resumed: an earlier run claimed this batch and did not finish it")
    for key in ("batch_id", "model", "version", "requests", "rejected", "set_aside"):
        if summary.get(key):
            typer.echo(f"  {key}: {summary[key]}")
    for name in BATCH_METRICS:
        if name in summary.get("metrics", {}):
            typer.echo(f"  {name}: {summary['metrics'][name]:.2f}")


@app.command()
def serve(params: StudyParams = PARAMS_FILE) -> None:
    """Serve `deletion-batch` (cron `deletion.schedule`) and `audit-pool` (daily, `--if-stale`) until stopped."""
    from flows.deployments import serve_deletion_batch

    serve_deletion_batch(str(params))


@app.command()
def demo(params: StudyParams = PARAMS_FILE) -> None:
    """The production path on the embedded default: champion, three requests (one bad), a batch, review."""
    from tasks.adapters import registry
    from tasks.adapters.ledger import Ledger
    from tasks.adapters.params import load_params
    from tasks.adapters.requests import submit_request
    from tasks.adapters.workspace import bundle
    from tasks.production.deletion import model_name

    settings = load_params(params)
    name = model_name(settings)
    if registry.version_by_alias(name, registry.CHAMPION) is None:
        train_original(params)
    deleted = Ledger.load(settings.deletion.ledger).deleted_ids()
    fresh = [i for i in bundle().train.ids if i not in deleted][:3]
    inbox = settings.deletion.inbox
    for ids, reason in (
        (fresh[:2], "demo: erasure request"),
        (fresh[2:], "demo: second subject"),
        (["digits/train/99999"], "demo: an id that does not exist"),
    ):
        request = submit_request(inbox, sample_ids=ids, reason=reason)
        typer.echo(f"submitted {request.request_id}: {', '.join(ids)}")
    batch(params)
    review(version=None, model=name, params=params)


def _columns(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: every column padded to its widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)  # fmt: skip


@app.command()
def cleanse(
    params: StudyParams = PARAMS_FILE,
    register: Annotated[bool, typer.Option(help="Register the Trojan model and its best cleanse in MLflow.")] = True,
) -> None:
    """Run the Trojan-model cleanse as a Prefect flow; print ASR and SA before and after."""
    from flows.backdoor_cleanse import backdoor_cleanse
    from tasks.adapters.params import load_params
    from tasks.stages.backdoor import load_rows
    from tasks.stages.findings import label, sparsity_label
    from unlearn.errors import UnlearnError

    try:
        summary = backdoor_cleanse(str(params), register_models=register)
        rows = load_rows(load_params(params))
    except UnlearnError as error:
        raise _fail(error) from error
    keys = ("ASR_before", "ASR", "SA_before", "SA", "RTE_seconds")
    table = [[label(method), sparsity_label(row["sparsity"]), *(f"{row[key]:.2f}" for key in keys)]
             for method, by_sparsity in rows.items() for row in by_sparsity]  # fmt: skip
    header = ["method", "sparsity", "ASR before", "ASR after", "SA before", "SA after", "RTE s"]
    typer.echo(_columns(header, table))
    typer.echo(f"report: {summary['report']}")
    done = summary.get("registered")
    if done:
        cleansed = f"v{done['cleansed_version']} ({label(done['method'])} cleanse, sparsity {done['sparsity']:g})"
        typer.echo(f"registered: {done['model_name']} v{done['trojan_version']} (Trojan model), {cleansed}")


@app.command()
def transfer(params: StudyParams = PARAMS_FILE) -> None:
    """Run transfer after unlearning as a Prefect flow; print target accuracy and times."""
    import json

    from flows.transfer import transfer as transfer_flow
    from unlearn.errors import UnlearnError

    try:
        summary = transfer_flow(str(params))
    except UnlearnError as error:
        raise _fail(error) from error
    result = json.loads(Path(summary["metrics"]).read_text())
    modes = {"linear_probe": "linear probe", "fine_tune": "fine-tune"}
    table = [[row["source"], modes.get(row["mode"], row["mode"]), f"{row['target_accuracy']:.2f}",
              f"{row['seconds']:.2f}", f"{row['unlearn_seconds']:.2f}"] for row in result["rows"]]  # fmt: skip
    source, target = result.get("source_dataset", "source"), result.get("target_dataset", "target")
    typer.echo(f"{source} -> {target}; source model test accuracy {result['source_test_accuracy']:.2f}%")
    typer.echo(_columns(["source model", "transfer", "target accuracy", "transfer s", "unlearning s"], table))
    typer.echo(f"report: {summary['report']}")


InboxOption = Annotated[
    str | None,
    typer.Option("--inbox", help="Inbox folder or s3://bucket/prefix/; default: params.yaml's deletion.inbox."),
]


def _inbox_uri(inbox: str | None, params: Path) -> str:
    from tasks.adapters.params import load_params

    return inbox or load_params(params).deletion.inbox


@request_app.command("submit")
def request_submit(
    ids: Annotated[list[str] | None, typer.Option("--ids", help="Sample ids to forget (repeatable).")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A JSON list of ids, or one id a line.")] = None,
    request_id: Annotated[str | None, typer.Option(help="Request id; default: generated.")] = None,
    subject: Annotated[str | None, typer.Option(help="Whose data it is (free text).")] = None,
    reason: Annotated[str | None, typer.Option(help="Why it must be forgotten.")] = None,
    inbox: InboxOption = None,
    params: StudyParams = PARAMS_FILE,
) -> None:
    """Write a deletion request to the inbox (it waits as pending for the next batch)."""
    from tasks.adapters.requests import submit_request
    from unlearn.errors import UnlearnError

    try:
        request = submit_request(
            _inbox_uri(inbox, params),
            sample_ids=ids,
            file=file,
            request_id=request_id,
            subject=subject,
            reason=reason,
        )
    except UnlearnError as error:
        raise _fail(error) from error
    typer.echo(f"{request.request_id}: {len(request.sample_ids)} sample id(s) pending")


@request_app.command("status")
def request_status(
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    inbox: InboxOption = None,
    params: StudyParams = PARAMS_FILE,
) -> None:
    """Where a request is: pending, claimed/<batch>, done/<batch> or rejected (with the reason)."""
    from tasks.adapters.requests import open_inbox
    from unlearn.errors import UnlearnError

    try:
        store = open_inbox(_inbox_uri(inbox, params))
        where = store.status(request_id)
    except UnlearnError as error:
        raise _fail(error) from error
    if where is None:
        raise _fail(LookupError(f"no request {request_id!r} in {store.uri}"))
    batch_note = f" (batch {where.batch_id})" if where.batch_id else ""
    typer.echo(f"{request_id}: {where.state}{batch_note}")
    if where.state == "rejected":
        typer.echo(f"  reason: {store.rejection_reason(request_id)}")


def _operator_lock(params: Path):
    """The batch lock (`tasks.adapters.batch_lock`), so an operator's change never races a running batch."""
    from tasks.adapters.batch_lock import batch_lock
    from tasks.adapters.params import load_params

    settings = load_params(params).deletion
    return batch_lock(settings.ledger, min(30.0, settings.lock_timeout_seconds), purpose="operator command")


def _ledger_refusal(batch_id: str | None, params: Path) -> str | None:
    """Why the operator may not change `batch_id`: the ledger records it already; None if it does not."""
    from tasks.adapters.ledger import Ledger
    from tasks.adapters.params import load_params

    if batch_id is None:
        return None
    ledger = Ledger.load(load_params(params).deletion.ledger)
    if batch_id not in ledger.batches():
        return None
    return (
        f"batch {batch_id} is already recorded in the deletion ledger {ledger.path}, which is append-only: "
        "only the next `unlearn batch` can finish it; nothing changed"
    )


@request_app.command("reject")
def request_reject(
    reason: Annotated[str, typer.Option("--reason", help="Why (stored as the rejection reason).")],
    request_id: Annotated[
        str | None, typer.Argument(help="The request to reject (pending or claimed); or give --batch.")
    ] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Reject every request this batch still claims.")] = None,
    inbox: InboxOption = None,
    params: StudyParams = PARAMS_FILE,
) -> None:
    """Reject a stuck request, or every request a stuck batch still claims (refused once the ledger has the batch)."""
    from tasks.adapters.requests import CLAIMED, InboxError, open_inbox
    from unlearn.errors import UnlearnError

    if (request_id is None) == (batch is None):
        raise _fail(InboxError("name either a request id or --batch BATCH, not both"))
    try:
        store = open_inbox(_inbox_uri(inbox, params))
        with _operator_lock(params):
            if batch is not None:
                refusal = _ledger_refusal(batch, params)
                if refusal:
                    raise InboxError(refusal)
                rejected = [(r, batch) for r in store.reject_batch(batch, reason)]
                if not rejected:
                    typer.echo(f"batch {batch} claims no requests: nothing changed")
            else:
                where = store.status(request_id)
                refusal = _ledger_refusal(where.batch_id if where and where.state == CLAIMED else None, params)
                if refusal:
                    raise InboxError(f"request {request_id}: {refusal}")
                rejected = [(request_id, store.reject_request(request_id, reason).batch_id)]
    except UnlearnError as error:
        raise _fail(error) from error
    for rejected_id, batch_id in rejected:
        typer.echo(f"{rejected_id}: rejected" + (f" (batch {batch_id})" if batch_id else ""))


@request_app.command("release")
def request_release(
    batch: Annotated[str, typer.Option("--batch", help="The batch whose claimed requests go back to pending.")],
    inbox: InboxOption = None,
    params: StudyParams = PARAMS_FILE,
) -> None:
    """Put every request a stuck batch still claims back in pending (refused once the ledger records the batch)."""
    from tasks.adapters.requests import InboxError, open_inbox
    from unlearn.errors import UnlearnError

    try:
        store = open_inbox(_inbox_uri(inbox, params))
        with _operator_lock(params):
            refusal = _ledger_refusal(batch, params)
            if refusal:
                raise InboxError(refusal)
            released = store.release(batch)
    except UnlearnError as error:
        raise _fail(error) from error
    if not released:
        typer.echo(f"batch {batch} claims no requests: nothing changed")
    for request_id in released:
        typer.echo(f"{request_id}: released from batch {batch}, pending again")


@app.command()
def tune(
    method: Annotated[str, typer.Option(help="The method to tune (ft, ga, rl, iu, ff, l1_sparse, salun).")],
    scenario: Annotated[str, typer.Option(help="A scenario of params.yaml's split.scenarios.")],
    sparsity: Annotated[float, typer.Option(help="Sparsity of the pruned original (0 = dense).")] = 0.0,
    trials: Annotated[int, typer.Option(help="Finished trials the study should hold (resumes).")] = 20,
    params: StudyParams = PARAMS_FILE,
    storage: Annotated[str, typer.Option(help="Optuna storage (resumable).")] = "sqlite:///optuna.db",
    task_runner: Annotated[str, typer.Option(help="threads, or dask (a LocalCluster, or --address).")] = "threads",
    address: Annotated[str | None, typer.Option(help="A Dask scheduler to run on.")] = None,
    parallel: Annotated[int | None, typer.Option(help="Trials at a time; default: 1 (threads), 2 (dask).")] = None,
    max_cost_share: Annotated[
        float | None, typer.Option(help="Budget: a trial's share of Retrain's time; default 0.2.")
    ] = None,
    folds: Annotated[int, typer.Option(help="Tuning problems (classes, random draws) per trial.")] = 3,
    write: Annotated[bool, typer.Option(help="Write the best values to params.yaml's `tuned`.")] = True,
) -> None:
    """Search a method's hyperparameters (Optuna) for the least gap to Retrain; write the best values."""
    from flows.tune import run_tune
    from tasks.production.tune import comparison_table
    from unlearn.errors import UnlearnError

    try:
        summary = run_tune(
            method, scenario, sparsity, trials, task_runner=task_runner, address=address, params_path=str(params),
            storage=storage, parallel=parallel, max_cost_share=max_cost_share, folds=folds, write=write,
        )  # fmt: skip
    except UnlearnError as error:
        raise _fail(error) from error
    typer.echo(comparison_table(storage, [summary["study"]]))
    if summary["written"]:
        typer.echo(f"tuned values written to {summary['written']}")


if __name__ == "__main__":
    app()
