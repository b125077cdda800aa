"""`unlearn`: the one command-line entry point.

Scriptable: results on stdout (`--json` where a command has it), everything else on stderr; an
expected error (bad input or config, a missing champion, a locked batch: `unlearn.errors.UnlearnError`,
or a path that is missing or unreadable) is one line `error: ...` and exit 1 (`--debug`: the
traceback); `review` says NOT promotable with its exit code. Quiet by default: the project's
lines (one per step), warnings and errors; libraries' INFO lines and one line per epoch with
`--verbose`, a progress bar per training run on a terminal otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import fields, is_dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from tasks.adapters.layout import PARAMS_FILE

# DVC sets its loggers to INFO (printing to stdout) when first imported: import it now, set them per command.
with suppress(ImportError):  # without DVC (the learning core alone) there is nothing to quiet
    import dvc.logger  # noqa: F401

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from tasks.production.promotion import Review

# --- exit codes ----------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_ERROR = 1  # an expected error (one line on stderr), or `promote` refused by the gates
EXIT_USAGE = 2  # a usage error: Typer's own (unknown option, missing argument)
EXIT_NOT_PROMOTABLE = 3  # `review`: a gate fails on sufficient evidence
EXIT_INSUFFICIENT = 4  # `review`: only gates that the evidence cannot decide fail (more evidence, or --force)

EPILOG = (
    "Exit codes: 0 ok; 1 an expected error (one line `error: ...` on stderr; --debug for the traceback), "
    "or `promote` refused by the gates; 2 a usage error; 3 `review`: NOT promotable; "
    "4 `review`: NOT promotable because the evidence is insufficient (the audit's power is too low)."
)

# --- output: stderr for lines, stdout for results ------------------------------------------------

PROJECT_LOGGERS = ("cli", "flows", "tasks", "unlearn")
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")  # Prefect's per-run loggers (also sent to its API)
# Libraries kept at WARNING unless --verbose. Not `prefect`: its run loggers feed the Prefect API at INFO
# (the console drops their chatter instead, `CliLogHandler`).
QUIET_LOGGERS = (
    "alembic", "asyncio", "boto3", "botocore", "distributed", "dvc", "dvc_data", "dvc_objects", "filelock",
    "fsspec", "git", "great_expectations", "httpcore", "httpx", "matplotlib", "mlflow", "optuna", "s3transfer",
    "sqlalchemy", "urllib3",
)  # fmt: skip
# Libraries that configure their logging when first imported read these (only set where the user has not).
QUIET_ENVIRONMENT = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
DEBUG_KEY, HANDLER_KEY = "unlearn.debug", "unlearn.log_handler"


class TrainingBars:
    """`unlearn.train`'s per-epoch records as Rich progress bars on a terminal, one per training thread.

    Elsewhere (a pipe, a file) the records are dropped: `--verbose` prints them as lines.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = None
        self.bars: dict[int | None, Any] = {}

    def update(self, record: logging.LogRecord) -> bool:
        """Show an epoch record (True), or leave a record that is none to the caller (False)."""
        args = record.args
        if not (isinstance(record.msg, str) and record.msg.startswith("epoch %d/%d") and isinstance(args, tuple)):
            return False
        if not self.console.is_terminal or len(args) < 3:
            return True
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        done, total = int(args[0]), int(args[1])
        if self.progress is None:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                       TextColumn("{task.fields[loss]}"), TimeElapsedColumn())  # fmt: skip
            self.progress = Progress(*columns, console=self.console, transient=True, redirect_stdout=False)
            self.progress.start()
        if record.thread not in self.bars:
            self.bars[record.thread] = self.progress.add_task(_training_label(), total=total, loss="")
        bar = self.bars[record.thread]
        self.progress.update(bar, completed=done, total=total, loss=f"loss {float(args[2]):.3f}")
        if done >= total:
            self.progress.remove_task(self.bars.pop(record.thread))
            if not self.bars:
                self.stop()
        return True

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress, self.bars = None, {}


def _training_label() -> str:
    """`unlearn-champion: training` where the fit runs inside a Prefect task, else `training`."""
    context = sys.modules.get("prefect.context")
    run = context.TaskRunContext.get() if context is not None else None
    return f"{run.task.name}: training" if run is not None else "training"


def _from_prefect_engine(record: logging.LogRecord) -> bool:
    """A run logger's record written by Prefect's engine, not by the project (`get_run_logger`, a print)."""
    prefect = sys.modules.get("prefect")
    root = os.path.dirname(prefect.__file__) if prefect is not None and prefect.__file__ else None
    return root is not None and record.pathname.startswith(root) and record.funcName != "print_as_log"


class CliLogHandler(logging.Handler):
    """The CLI's stderr: the project's lines, a line per Prefect task (step), warnings and errors.

    With `verbose`, every record that reaches it (the root logger then lets libraries' INFO through);
    tracebacks only with `verbose` or `debug`.
    """

    STYLES = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}

    def __init__(self, verbose: bool = False, debug: bool = False) -> None:
        from rich.console import Console

        super().__init__()
        self.verbose, self.debug = verbose, debug
        # A formatter makes this a user handler, which Prefect's logging setup keeps on the root logger.
        self.setFormatter(logging.Formatter("%(message)s"))
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.training = TrainingBars(self.console)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.line(record)
            if line is not None:
                self.console.out(line, style=self.STYLES.get(record.levelno), highlight=False)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise
            self.handleError(record)

    def line(self, record: logging.LogRecord) -> str | None:
        """What to print for `record`; None: nothing."""
        if self.verbose:
            return self.text(record)
        if record.name.startswith(RUN_LOGGERS):
            return self.step(record) if _from_prefect_engine(record) else self.text(record)
        if record.name.split(".")[0] not in PROJECT_LOGGERS:
            return self.text(record) if record.levelno >= logging.WARNING else None
        if record.name == "unlearn.train" and record.levelno < logging.WARNING and self.training.update(record):
            return None
        return self.text(record)

    def step(self, record: logging.LogRecord) -> str | None:
        """Prefect's engine: `flow: task done` per task, the flow's start, retries and warnings; no chatter."""
        message = record.getMessage()
        flow, task = getattr(record, "flow_name", "flow"), getattr(record, "task_name", None)
        if message.startswith("Beginning"):
            return f"{flow}: started ({message.split(' for flow ')[0].removeprefix('Beginning ')})"
        if message.startswith("Finished in state"):  # a flow's own end: the command prints its result or error
            failed = record.levelno >= logging.WARNING
            return None if task is None else f"{flow}: {task} {'failed' if failed else 'done'}"
        if message.startswith("Encountered exception during execution") and not self.debug:
            return None  # the command prints the error
        if record.levelno >= logging.WARNING or " - Retry " in message:
            return f"{flow}: {task + ': ' if task else ''}{self.text(record)}"
        return None

    def text(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        if record.exc_info and (self.verbose or self.debug):
            message = f"{message}\n{self.formatter.formatException(record.exc_info)}"
        return message

    def close(self) -> None:
        self.training.stop()
        super().close()


def configure_output(verbose: bool = False, debug: bool = False) -> tuple[CliLogHandler, Callable[[], None]]:
    """Route log records through a `CliLogHandler` and quiet the libraries; the handler, and what undoes it all."""
    undo: list[Callable[[], Any]] = []
    root = logging.getLogger()
    handler = CliLogHandler(verbose, debug)
    root.addHandler(handler)
    undo += [partial(root.removeHandler, handler), handler.close]
    if not verbose:
        for key, value in QUIET_ENVIRONMENT.items():
            if key not in os.environ:
                os.environ[key] = value
                undo.append(partial(os.environ.pop, key, None))
    for name in ("dvc", "dvc_data", "dvc_objects"):  # DVC prints INFO on stdout (for results only) and again
        logger = logging.getLogger(name)  # through the root logger: let the root's handler alone print it
        undo.append(partial(setattr, logger, "handlers", logger.handlers))
        logger.handlers = []
    levels = dict.fromkeys(PROJECT_LOGGERS, logging.INFO)
    levels.update({"": logging.INFO} if verbose else dict.fromkeys(QUIET_LOGGERS, logging.WARNING))
    for name, level in levels.items():
        logger = logging.getLogger(name or None)
        undo.append(partial(logger.setLevel, logger.level))
        logger.setLevel(level)

    def restore() -> None:
        for step in reversed(undo):
            step()

    return handler, restore


def emit(obj: object, as_json: bool, text: str | RenderableType | None = None) -> None:
    """Print a command's result on stdout: `obj` as JSON with `--json`, else `text` (default `str(obj)`).

    `text` may be a Rich renderable (a table). Nothing else goes to stdout, so `--json` output parses.
    """
    if as_json:
        typer.echo(json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False))
    elif text is None or isinstance(text, str):
        typer.echo(str(obj) if text is None else text)
    else:
        stdout_console().print(text)


def jsonable(value: object) -> Any:
    """`value` as JSON values: dataclasses and mappings as objects, NaN and infinities as null."""
    if is_dataclass(value) and not isinstance(value, type):
        value = {field.name: getattr(value, field.name) for field in fields(value)}
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if hasattr(value, "item"):  # a numpy or torch scalar
        return jsonable(value.item())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def stdout_console() -> Console:
    """A Rich console on the current stdout: tables on a terminal; `is_terminal` False in a pipe."""
    from rich.console import Console

    return Console(highlight=False)


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (logs and errors go to stderr).")
]

# --- errors: one line and exit 1 for what the user can fix ---------------------------------------


# A path the user gave that is missing or unreadable: `error: No such file or directory: ids.txt`.
PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def expected_error(error: BaseException) -> BaseException | None:
    """The expected error behind `error`, or None: an UnlearnError, or a user's path that is missing or unreadable.

    Prefect 3 re-raises a task's exception from a flow called directly; where a wrapper of
    Prefect's (or an exception group of one) stands in front of it, its cause is taken.
    """
    from unlearn.errors import UnlearnError

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (UnlearnError, *PATH_ERRORS)):
            return error
        if isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        elif type(error).__module__.split(".")[0] in ("prefect", "distributed"):
            error = error.__cause__ or error.__context__
        else:
            return None
    return None


def error_line(error: BaseException) -> str:
    """`error: ...` naming the problem (an OSError as `No such file or directory: params.yaml`)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"error: {error.strerror}: {error.filename}"
    return f"error: {str(error) or type(error).__name__}"


class CliGroup(TyperGroup):
    """The root group: every command's expected error becomes one line and exit 1 (`--debug`: the traceback)."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            expected = expected_error(error)
            if expected is None or ctx.meta.get(DEBUG_KEY):
                raise
            handler = ctx.meta.get(HANDLER_KEY)
            if handler is not None:
                handler.training.stop()
            typer.echo(error_line(expected), err=True)
            raise typer.Exit(EXIT_ERROR) from error


def _fail(error: Exception) -> typer.Exit:
    typer.echo(error_line(error), err=True)
    return typer.Exit(EXIT_ERROR)


# --- the app ---------------------------------------------------------------------------------------

app = typer.Typer(
    cls=CliGroup,
    help="Prune first, then unlearn: make image classifiers forget on request.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


request_app = typer.Typer(help="Deletion requests: submit them to the inbox, see where they are.", no_args_is_help=True)
app.add_typer(request_app, name="request")
audit_app = typer.Typer(help="The membership audit: the champion's reference pool.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unlearn")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"unlearn {package_version()}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option(help="Also print libraries' INFO lines and one line per training epoch.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an expected error.")] = False,
    show_version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Make trained image classifiers forget data on request, verifiably."""
    from tasks.stages import wait_policy_before_torch

    wait_policy_before_torch(sys.argv[1:])  # params.yaml's compute.wait_policy, before a command loads torch
    handler, restore = configure_output(verbose, debug)
    ctx.meta.update({DEBUG_KEY: debug, HANDLER_KEY: handler})
    ctx.call_on_close(restore)


def _model_and_gates(model: str | None, params: Path):
    """The registered model (default: params.yaml's, `registry.params_model_name`) and the promotion gates."""
    from tasks.adapters.registry import default_model_name
    from tasks.production.promotion import load_gates

    return model or default_model_name(params), load_gates(params)


ModelOption = Annotated[
    str | None, typer.Option("--model", help="Registered model; default: from params.yaml's preset.")
]
ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml holding the promotion gates.")]


def review_exit_code(review: Review) -> int:
    """0 promotable; 3 a gate fails on sufficient evidence; 4 only gates the evidence cannot decide fail."""
    if review.passed:
        return EXIT_OK
    return EXIT_INSUFFICIENT if all(gate.insufficient for gate in review.failed) else EXIT_NOT_PROMOTABLE


def review_as_dict(review: Review) -> dict[str, Any]:
    """`unlearn review --json`: the Review's fields, `passed`, `insufficient`, the verdict and the exit code."""
    return {
        **jsonable(review),
        "passed": review.passed,
        "insufficient": review.insufficient,
        "verdict": "promotable" if review.passed else "not promotable",
        "exit_code": review_exit_code(review),
    }


def review_tables(review: Review) -> RenderableType:
    """The review for a terminal: `Review.render()`'s lines, its metrics and gates as Rich tables."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    lines = review.render().splitlines()
    notes = [line.strip() for line in lines if line.strip().startswith(("evidence:", "audit:", "warning:"))]
    metrics = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for column in ("metric", f"v{review.version}", "champion", "retrain"):
        metrics.add_column(column, justify="left" if column == "metric" else "right")
    for name, row in review.metrics.items():
        cells = (row[key] for key in ("version", "champion", "retrain"))
        metrics.add_row(Text(name), *("-" if value is None else f"{value:.2f}" for value in cells))
    kind = review.evidence.kind if review.evidence else "-"
    gates = Table(title=Text(f"gates ({kind} request)"), title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for column in ("gate", "verdict", "value", "rule", "why"):
        gates.add_column(column, justify="right" if column == "value" else "left", overflow="fold")
    for gate in review.gates:
        verdict = Text("PASS", style="green") if gate.passed else Text("FAIL", style="bold red")
        if gate.insufficient:
            verdict.append(" (weak evidence)", style="yellow")
        value = "n/a" if gate.value is None else f"{gate.value:.2f}"
        gates.add_row(Text(gate.name), verdict, value, Text(gate.rule), Text(gate.reason))  # Text: no markup
    verdict = Text(f"verdict: {'promotable' if review.passed else 'NOT promotable'}",
                   style="bold green" if review.passed else "bold red")  # fmt: skip
    notes_text = [Text(note, style="yellow" if note.startswith("warning:") else "") for note in notes]
    return Group(Text("\n".join(lines[:3]), style="bold"), metrics, gates, *notes_text, verdict)


def _review(version: int | None, model: str | None, params: Path) -> Review:
    from tasks.production.promotion import review as review_version

    name, gates = _model_and_gates(model, params)
    return review_version(version, name=name, gates=gates)


def _show_review(found: Review, as_json: bool = False) -> None:
    emit(review_as_dict(found), as_json, review_tables(found) if stdout_console().is_terminal else found.render())


@app.command()
def review(
    version: Annotated[int | None, typer.Option(help="Version to review; default: the `candidate`.")] = None,
    model: ModelOption = None,
    params: ParamsOption = PARAMS_FILE,
    as_json: JsonOption = False,
) -> None:
    """Show a version against the champion (and Retrain) on UA, MIA-efficacy, RA, TA, RTE, with the gates.

    Exit 0 if it is promotable, 3 if not, 4 if not because the evidence is insufficient.
    """
    found = _review(version, model, params)
    _show_review(found, as_json)
    code = review_exit_code(found)
    if code != EXIT_OK:
        raise typer.Exit(code)


@app.command()
def promote(
    version: Annotated[int, typer.Option(help="Version to make champion.")],
    reviewer: Annotated[str, typer.Option(help="Who approves the promotion (recorded on the version).")],
    reason: Annotated[str | None, typer.Option(help="Why (required with --force).")] = None,
    force: Annotated[bool, typer.Option(help="Promote despite failed gates; recorded as forced.")] = False,
    model: ModelOption = None,
    params: ParamsOption = PARAMS_FILE,
) -> None:
    """Move the `champion` alias to a version that passes the gates; record reviewer, time and reason.

    Exit 1 when refused (failed gates without --force, no reviewer, out-of-order lineage).
    """
    from tasks.adapters.params import load_params
    from tasks.production.promotion import promote as promote_version

    name, gates = _model_and_gates(model, params)
    settings = load_params(params) if params.is_file() else None  # its retention policy may purge after
    done = promote_version(version, reviewer, reason, force, name=name, gates=gates, params=settings)
    previous = f"v{done.previous}" if done.previous else "none"
    forced = f" (FORCED: {done.reason})" if done.forced else ""
    typer.echo(f"{name}: champion {previous} -> v{done.version} by {done.reviewer} at {done.time}{forced}")
    for warning in done.warnings:
        typer.echo(f"  warning (recorded on the version): {warning}", err=True)
    for gate in done.gates:
        typer.echo(f"  {gate.line()}")


def history_table(entries: list, text: str) -> RenderableType:
    """The lineage for a terminal: one row per version (`render_history`'s last line below)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(text.splitlines()[0]), title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for column in ("version", "kind", "method", "batch", "promoted", "requests"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        aliases = f" [{', '.join(entry.aliases)}]" if entry.aliases else ""
        promoted = (f"{entry.promoted_at} by {entry.reviewer}{' (FORCED)' if entry.forced else ''}"
                    if entry.promoted_at else "never")  # fmt: skip
        cells = (f"v{entry.version}{aliases}", entry.kind, entry.method or "-", entry.batch_id or "-", promoted,
                 ", ".join(entry.request_ids) or "-")  # fmt: skip
        table.add_row(*map(Text, cells))  # Text: `[champion]` is no markup
    return Group(table, Text(text.splitlines()[-1].strip()))


@app.command()
def history(
    request_id: Annotated[
        str | None, typer.Argument(help="A deletion request: which version forgot it, its audit, is it in service.")
    ] = None,
    as_json: JsonOption = False,
    model: ModelOption = None,
    params: ParamsOption = PARAMS_FILE,
) -> None:
    """List the champion's lineage with the requests each version forgot; or one request's history."""
    from tasks.adapters.ledger import DEFAULT_LEDGER
    from tasks.adapters.params import load_params
    from tasks.adapters.registry import history as lineage
    from tasks.adapters.registry import history_as_dict, render_history, render_request_history, request_history

    name, _ = _model_and_gates(model, params)
    if request_id is None:
        entries = lineage(name)
        text = render_history(name, entries)
        shown = history_table(entries, text) if entries and stdout_console().is_terminal else text
        emit(history_as_dict(name, entries), as_json, shown)
    else:
        ledger = load_params(params).deletion.ledger if params.is_file() else DEFAULT_LEDGER
        found = request_history(name, request_id, ledger)
        emit(found.as_dict(), as_json, render_request_history(found))


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
def train_original(
    params: StudyParams = PARAMS_FILE,
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Search the deletion method's settings on the champion (default: `calibrate.enabled`; "
            "skipped anyway where params.yaml has tuned values for the data set).",
        ),
    ] = None,
) -> None:
    """Train (and prune, per `deletion.sparsity`) the first champion, register it in MLflow, calibrate its method."""
    from flows.train_original import train_original as flow
    from tasks.adapters.params import values_text

    summary = flow(str(params), calibrate=calibrate)
    typer.echo(
        f"{summary['model']}: champion v{summary['champion_version']} "
        f"(sparsity {summary['sparsity']:.0%}, dense original v{summary['dense_version']})"
    )
    found = summary["calibrated_values"]
    values = "; ".join(f"{method} {values_text(settings) or '-'}" for method, settings in found.items())
    if summary["calibration"] == "calibrated":
        typer.echo(f"calibration: {values} ({summary['calibration_cost_retrains']:.1f} x Retrain)")
    else:
        typer.echo(f"calibration: skipped ({summary['calibration_reason']}); {values}")


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

    summary = audit_pool(str(params), None if version is None else str(version), if_stale, task_runner, address)
    if summary["status"] == "valid":
        typer.echo(f"reference pool {summary['pool']} is still valid: nothing built")
        return
    typer.echo(
        f"{summary['model']} v{summary['champion_version']}: reference pool {summary['pool']}, "
        f"{summary['references']} references in {summary['seconds']:.1f} s "
        f"(median {summary['reference_seconds_median']:.1f} s each), sha256 {summary['sha256'][:12]}"
    )


def batch_text(summary: Mapping[str, Any]) -> str:
    """What `unlearn batch` prints: the status, the batch, its requests and metrics, one a line."""
    from tasks.production.deletion import BATCH_METRICS

    lines = [f"deletion batch: {summary['status']}"]
    if summary.get("resumed"):
        lines.append("  resumed: an earlier run claimed this batch and did not finish it")
    keys = ("batch_id", "model", "version", "requests", "rejected", "set_aside")
    lines += [f"  {key}: {summary[key]}" for key in keys if summary.get(key)]
    metrics = summary.get("metrics") or {}
    lines += [f"  {name}: {metrics[name]:.2f}" for name in BATCH_METRICS if name in metrics]
    review = summary.get("review") or {}
    if review.get("verdict"):
        lines.append(f"  review: {review['verdict']} (evidence {review.get('evidence') or '-'})")
    return "\n".join(lines)


@app.command()
def batch(params: StudyParams = PARAMS_FILE, as_json: JsonOption = False) -> None:
    """Run one deletion batch now, outside any schedule, and print what it registered."""
    from flows.deletion_batch import deletion_batch

    summary = deletion_batch(str(params))
    emit(summary, as_json, None if as_json else batch_text(summary))


@app.command()
def purge(
    params: StudyParams = PARAMS_FILE,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be removed and what kept, and why.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (recorded on every purged version).")] = None,
    version: Annotated[list[int] | None, typer.Option(help="Purge only these superseded versions.")] = None,
) -> None:
    """Remove what still holds deleted samples: superseded models, pixels, old DVC objects (`retention:`)."""
    from tasks.production.purge import run_purge_command

    typer.echo(run_purge_command(str(params), dry_run, reason, [str(v) for v in version or ()]))


@app.command()
def restore(
    batch_id: Annotated[str, typer.Argument(help="The deletion batch to bring back.")],
    params: StudyParams = PARAMS_FILE,
    pull: Annotated[bool, typer.Option(help="Fetch the data from the DVC remote (else: the local cache).")] = True,
) -> None:
    """Bring a deletion batch's split back (and the ledger, if missing) from what its registry version records."""
    from tasks.adapters.params import load_params
    from tasks.production.deletion import restore_batch

    for path in restore_batch(load_params(params), batch_id, pull=pull):
        typer.echo(f"restored {path}")


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
    _show_review(_review(None, name, params))


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

    summary = backdoor_cleanse(str(params), register_models=register)
    rows = load_rows(load_params(params))
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
    from flows.transfer import transfer as transfer_flow

    summary = transfer_flow(str(params))
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

    request = submit_request(
        _inbox_uri(inbox, params),
        sample_ids=ids,
        file=file,
        request_id=request_id,
        subject=subject,
        reason=reason,
    )
    typer.echo(f"{request.request_id}: {len(request.sample_ids)} sample id(s) pending")


@request_app.command("status")
def request_status(
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    inbox: InboxOption = None,
    params: StudyParams = PARAMS_FILE,
    as_json: JsonOption = False,
) -> None:
    """A request's true state: pending, claimed, rejected (why), unlearned in candidate vN, forgotten by champion vM."""
    from tasks.adapters.params import load_params
    from tasks.adapters.requests import open_inbox
    from tasks.production.lifecycle import request_states

    settings = load_params(params)
    (state,) = request_states(settings, [request_id], inbox=open_inbox(_inbox_uri(inbox, params)))
    emit(state.as_dict(), as_json, state.line())


@request_app.command("list")
def request_list(
    state: Annotated[
        str | None,
        typer.Option(help="Only requests in this state: pending, claimed, rejected, unlearned, forgotten, done."),
    ] = None,
    inbox: InboxOption = None,
    params: StudyParams = PARAMS_FILE,
    as_json: JsonOption = False,
) -> None:
    """Every request the inbox has seen, with its true state (one line each)."""
    from tasks.adapters.params import load_params
    from tasks.adapters.requests import open_inbox
    from tasks.production.lifecycle import STATES, request_states
    from unlearn.errors import ConfigError

    if state is not None and state not in STATES:
        raise ConfigError(f"unknown state {state!r}; known: {', '.join(STATES)}")
    found = request_states(load_params(params), inbox=open_inbox(_inbox_uri(inbox, params)))
    chosen = [entry for entry in found if state is None or entry.state == state]
    emit([entry.as_dict() for entry in chosen], as_json, "\n".join(entry.line() for entry in chosen) or "no requests")


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

    if (request_id is None) == (batch is None):
        raise InboxError("name either a request id or --batch BATCH, not both")
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

    store = open_inbox(_inbox_uri(inbox, params))
    with _operator_lock(params):
        refusal = _ledger_refusal(batch, params)
        if refusal:
            raise InboxError(refusal)
        released = store.release(batch)
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

    summary = run_tune(
        method, scenario, sparsity, trials, task_runner=task_runner, address=address, params_path=str(params),
        storage=storage, parallel=parallel, max_cost_share=max_cost_share, folds=folds, write=write,
    )  # fmt: skip
    typer.echo(comparison_table(storage, [summary["study"]]))
    if summary["written"]:
        typer.echo(f"tuned values written to {summary['written']}")


if __name__ == "__main__":
    app()
