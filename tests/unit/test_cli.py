"""The command line as scripts use it: --version, --json, exit codes, one-line errors, quiet logs (no servers).

The flows a command runs are stood in for by fake modules (`fake_module`): what is checked is the
command line around them, not the flows.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import types
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from cli import app
from unlearn.errors import ConfigError, UnlearnError

EPOCH = "epoch %d/%d loss %.4f acc %.4f lr %.4g %.2fs"  # unlearn.train's per-epoch line


def fake_module(monkeypatch, name: str, **attributes) -> types.ModuleType:
    """`name` in sys.modules for this test, so `from name import x` inside a command finds `attributes`."""
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def raising(error: BaseException):
    def run(*args, **kwargs):
        raise error

    return run


def invoke(*args: str, **kwargs):
    return CliRunner().invoke(app, list(args), **kwargs)


# --- version, help, usage ---------------------------------------------------------------------------


def test_version_prints_the_package_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"unlearn {version('unlearn')}\n"


def test_help_documents_the_exit_codes():
    result = invoke("--help")
    text = " ".join(result.stdout.split())
    assert result.exit_code == 0
    assert "Exit codes: 0 ok; 1 an expected error" in text and "2 a usage error" in text
    assert "3 `review`: NOT promotable" in text and "4 `review`: NOT promotable because the evidence" in text
    assert "--debug" in text and "--verbose" in text and "--version" in text


def test_a_usage_error_exits_2():
    assert invoke("review", "--no-such-option").exit_code == cli.EXIT_USAGE == 2


# --- expected errors: one line, exit 1 ----------------------------------------------------------


FLOWS = {  # command line -> (module, function) it runs
    ("train-original",): ("flows.train_original", "train_original"),
    ("batch",): ("flows.deletion_batch", "deletion_batch"),
    ("batch", "--json"): ("flows.deletion_batch", "deletion_batch"),
    ("study",): ("flows.study", "run_study"),
    ("audit", "build"): ("flows.audit_pool", "audit_pool"),
    ("cleanse",): ("flows.backdoor_cleanse", "backdoor_cleanse"),
    ("transfer",): ("flows.transfer", "transfer"),
    ("tune", "--method", "ft", "--scenario", "random"): ("flows.tune", "run_tune"),
}


@pytest.mark.parametrize("command", list(FLOWS), ids=" ".join)
def test_an_expected_error_is_one_line_on_stderr_and_exit_1(monkeypatch, command):
    module, function = FLOWS[command]
    fake_module(monkeypatch, module, **{function: raising(ConfigError("params.yaml: train.epochs: must be >= 1"))})
    result = invoke(*command)
    assert result.exit_code == cli.EXIT_ERROR == 1
    assert result.stderr == "error: params.yaml: train.epochs: must be >= 1\n"
    assert result.stdout == "" and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (FileNotFoundError(2, "No such file or directory", "ids.txt"), "error: No such file or directory: ids.txt"),
        (PermissionError(13, "Permission denied", "/data/ledger.csv"), "error: Permission denied: /data/ledger.csv"),
        (UnlearnError(), "error: UnlearnError"),
    ],
)
def test_a_missing_or_unreadable_path_is_an_expected_error(monkeypatch, error, line):
    fake_module(monkeypatch, "flows.train_original", train_original=raising(error))
    result = invoke("train-original")
    assert (result.exit_code, result.stderr.strip()) == (1, line)


def test_a_missing_params_file_is_one_line():
    result = invoke("report", "--params", "/nonexistent/params.yaml")
    assert result.exit_code == 1 and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and "/nonexistent/params.yaml" in result.stderr


def test_debug_lets_the_expected_error_through_with_its_traceback(monkeypatch):
    error = ConfigError("bad value")
    fake_module(monkeypatch, "flows.train_original", train_original=raising(error))
    result = invoke("--debug", "train-original")
    assert result.exception is error and "error: bad value" not in result.output


def test_an_unexpected_error_is_not_hidden(monkeypatch):
    error = RuntimeError("a bug")
    fake_module(monkeypatch, "flows.train_original", train_original=raising(error))
    result = invoke("train-original")
    assert result.exception is error and result.exit_code == 1  # CliRunner's code for an uncaught exception


def test_a_wrapped_expected_error_is_unwrapped():
    """Prefect 3 re-raises a task's own exception from a flow; a wrapper of Prefect's is looked through."""
    cause = ConfigError("deletion.method: unknown method 'x'")
    wrapper = type("FailedRun", (Exception,), {"__module__": "prefect.exceptions"})("flow run failed")
    wrapper.__cause__ = cause
    assert cli.expected_error(wrapper) is cause
    assert cli.expected_error(ExceptionGroup("one", [cause])) is cause
    unrelated = RuntimeError("a bug")
    unrelated.__cause__ = cause  # a bug while handling an expected error stays a bug
    assert cli.expected_error(unrelated) is None


# --- review: exit codes, --json, tables ---------------------------------------------------------------


def a_review(*gates: tuple[str, bool, bool]):
    """A Review with `gates` given as (name, passed, insufficient)."""
    from tasks.production.gates import Evidence, GateResult
    from tasks.production.promotion import Review

    results = tuple(
        GateResult(name, f"{name} rule", 1.5, 2.0, passed, f"{name} because", insufficient)
        for name, passed, insufficient in gates
    )
    metrics = {"UA": {"version": 4.0, "champion": 0.0, "retrain": None}, "TA": {"version": 96.0, "champion": 97.0,
               "retrain": float("nan")}}  # fmt: skip
    tags = {"method": "l1_sparse", "request_ids": "r1,r2", "request_count": "2", "batch_id": "b-1"}
    return Review("m", "3", "1", metrics, results, tags, Evidence("sample", {"UA": 4.0, "TA": 96.0}))


REVIEWS = {
    "promotable": (a_review(("TA_drop", True, False), ("audit_power", True, False)), 0),
    "a gate fails": (a_review(("TA_drop", False, False), ("audit_power", True, False)), 3),
    "weak evidence only": (a_review(("TA_drop", True, False), ("audit_power", False, True)), 4),
    "a gate fails and weak evidence": (a_review(("TA_drop", False, False), ("audit_power", False, True)), 3),
}


@pytest.fixture
def reviewing(monkeypatch, tmp_path):
    """`unlearn review` on a stand-in Review (no registry): set `reviewing.shown`; returns the invoker."""
    from tasks.production import promotion

    state = types.SimpleNamespace(shown=None)
    monkeypatch.setattr(promotion, "review", lambda version, *, name, gates: state.shown)
    no_params = str(tmp_path / "none.yaml")  # the default gates

    def run(shown, *args: str, **kwargs):
        state.shown = shown
        return invoke("review", "--model", "m", "--params", no_params, *args, **kwargs)

    return run


@pytest.mark.parametrize("case", list(REVIEWS))
def test_review_exit_code_says_whether_the_version_is_promotable(reviewing, case):
    shown, code = REVIEWS[case]
    result = reviewing(shown)
    assert result.exit_code == code == cli.review_exit_code(shown), result.output
    verdict = "verdict: promotable" if code == 0 else "verdict: NOT promotable"
    assert verdict in result.stdout and result.stdout.startswith("m: version 3 vs champion v1")
    assert result.stdout.strip() == shown.render()  # not a terminal: Review.render()'s plain text


@pytest.mark.parametrize("case", list(REVIEWS))
def test_review_json_is_the_review_as_a_dict(reviewing, case):
    shown, code = REVIEWS[case]
    result = reviewing(shown, "--json")
    assert result.exit_code == code
    answer = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert {"model", "version", "champion", "metrics", "gates", "tags", "evidence", "passed", "insufficient"} <= set(
        answer
    )
    assert (answer["passed"], answer["insufficient"], answer["exit_code"]) == (shown.passed, shown.insufficient, code)
    assert answer["verdict"] == ("promotable" if shown.passed else "not promotable")
    assert answer["gates"][1] == {"name": "audit_power", "rule": "audit_power rule", "value": 1.5, "threshold": 2.0,
                                  "passed": shown.gates[1].passed, "reason": "audit_power because",
                                  "insufficient": shown.gates[1].insufficient}  # fmt: skip
    assert answer["metrics"]["TA"] == {"version": 96.0, "champion": 97.0, "retrain": None}  # NaN: null
    assert answer["evidence"]["kind"] == "sample" and answer["tags"]["batch_id"] == "b-1"


def test_review_on_a_terminal_is_rich_tables(reviewing):
    shown, _ = REVIEWS["weak evidence only"]
    result = reviewing(shown, env={"TTY_COMPATIBLE": "1", "COLUMNS": "200"})
    assert result.exit_code == 4
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # the terminal's colours
    assert "gates (sample request)" in text and "verdict: NOT promotable" in text
    assert "FAIL (weak evidence)" in text and "audit_power because" in text
    assert "FAIL  audit_power" not in text  # Review.render()'s gate lines are the table's rows now
    assert "requests (2): r1, r2" in text and "\x1b[" in result.stdout


# --- batch: --json on stdout, quiet logs on stderr -----------------------------------------------


SUMMARY = {"status": "registered", "batch_id": "b-1", "model": "m", "version": "4", "requests": ["r1"],
           "rejected": {"r3": "unknown ids"}, "set_aside": {}, "resumed": False,
           "metrics": {"UA": 4.0, "TA": 96.25, "RTE_seconds": float("nan")}}  # fmt: skip


def noisy_batch(params_path: str) -> dict:
    """A stand-in deletion batch that logs what the real one does: libraries' INFO, a warning, epochs."""
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1:8000/api/logs/ 201")
    logging.getLogger("great_expectations.core").info("Skipping registering function get_context")
    logging.getLogger("dvc.repo.scm_context").info("To track the changes with git, run: git add x.dvc")
    logging.getLogger("tasks.production.deletion").warning("rejected r3: unknown ids")
    logging.getLogger("tasks.production.audit").info("reference pool p: 4 references")
    for epoch in (1, 2):
        logging.getLogger("unlearn.train").info(EPOCH, epoch, 2, 0.5, 0.9, 0.1, 1.0)
    return SUMMARY


@pytest.fixture
def batch_flow(monkeypatch):
    fake_module(monkeypatch, "flows.deletion_batch", deletion_batch=noisy_batch)
    fake_module(monkeypatch, "tasks.production.deletion", BATCH_METRICS=("UA", "TA", "RTE_seconds"))


def test_batch_json_is_the_summary_and_nothing_else_on_stdout(batch_flow):
    result = invoke("batch", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {**SUMMARY, "metrics": {"UA": 4.0, "TA": 96.25, "RTE_seconds": None}}
    assert result.stderr.splitlines() == ["warning: rejected r3: unknown ids", "reference pool p: 4 references"]


def test_batch_prints_its_summary_and_only_the_projects_lines(batch_flow):
    result = invoke("batch")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "deletion batch: registered",
        "  batch_id: b-1",
        "  model: m",
        "  version: 4",
        "  requests: ['r1']",
        "  rejected: {'r3': 'unknown ids'}",
        "  UA: 4.00",
        "  TA: 96.25",
        "  RTE_seconds: nan",
    ]
    assert "HTTP Request" not in result.stderr and "Skipping" not in result.stderr and "epoch" not in result.stderr
    assert "git add" not in result.output


def test_verbose_prints_every_line_on_stderr_and_keeps_stdout_for_the_result(batch_flow):
    result = invoke("--verbose", "batch", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["batch_id"] == "b-1"
    for line in ("HTTP Request", "Skipping registering", "git add x.dvc", "rejected r3", "epoch 1/2", "epoch 2/2"):
        assert line in result.stderr, line


def test_a_command_leaves_logging_as_it_found_it(batch_flow):
    names = ("", "httpx", "dvc", "mlflow", "tasks", "unlearn")
    before = [(logging.getLogger(n or None).level, list(logging.getLogger(n or None).handlers)) for n in names]
    for args in (("batch",), ("--verbose", "batch")):
        assert invoke(*args).exit_code == 0
        assert [(logging.getLogger(n or None).level, list(logging.getLogger(n or None).handlers)) for n in names] == (
            before
        )


# --- the console handler ----------------------------------------------------------------------------


def record(name: str, message: str, level: int = logging.INFO, pathname: str = "/project/x.py", **extra):
    return logging.makeLogRecord({"name": name, "msg": message, "levelno": level,
                                  "levelname": logging.getLevelName(level), "pathname": pathname, **extra})  # fmt: skip


RETRY = " - Retry 1/2 will start 5 second(s) from now"


def test_prefect_engine_lines_become_one_line_per_step():
    prefect = pytest.importorskip("prefect")
    engine = str(Path(prefect.__file__).parent / "task_engine.py")
    run = {"flow_name": "deletion-batch", "flow_run_name": "deletion-batch-p"}
    task = {**run, "task_name": "sweep-inbox"}
    handler = cli.CliLogHandler()
    shown = {
        "flow started": (
            record(
                "prefect.flow_runs",
                "Beginning flow run 'deletion-batch-p' for flow 'deletion-batch'",
                **run,
                pathname=engine,
            ),
            "deletion-batch: started (flow run 'deletion-batch-p')",
        ),
        "task done": (
            record("prefect.task_runs", "Finished in state Completed()", pathname=engine, **task),
            "deletion-batch: sweep-inbox done",
        ),
        "task failed": (
            record("prefect.task_runs", "Finished in state Failed('x')", logging.ERROR, engine, **task),
            "deletion-batch: sweep-inbox failed",
        ),
        "retry": (
            record("prefect.task_runs", f"Task run failed with InboxError: x{RETRY}", pathname=engine, **task),
            f"deletion-batch: sweep-inbox: Task run failed with InboxError: x{RETRY}",
        ),
        "flow done": (record("prefect.flow_runs", "Finished in state Completed()", pathname=engine, **run), None),
        "flow failed": (
            record("prefect.flow_runs", "Encountered exception during execution: x", logging.ERROR, engine, **run),
            None,
        ),
        "the project's get_run_logger": (
            record("prefect.flow_runs", "batch b-1 already registered as version 3", **run),
            "batch b-1 already registered as version 3",
        ),
        "a library's INFO": (record("prefect.server", "Starting temporary server on http://127.0.0.1:8"), None),
        "a library's WARNING": (record("mlflow", "store slow", logging.WARNING), "warning: store slow"),
        "the project's INFO": (record("unlearn.prune", "IMP round 1/3: sparsity 0.5"), "IMP round 1/3: sparsity 0.5"),
    }
    assert {case: handler.line(found) for case, (found, _) in shown.items()} == {
        case: line for case, (_, line) in shown.items()
    }
    verbose = cli.CliLogHandler(verbose=True)
    assert verbose.line(shown["flow done"][0]) == "Finished in state Completed()"
    assert verbose.line(shown["a library's INFO"][0]) == "Starting temporary server on http://127.0.0.1:8"


def test_epochs_are_a_progress_bar_on_a_terminal_and_nothing_elsewhere():
    from rich.console import Console

    epoch = record("unlearn.train", EPOCH, args=(1, 2, 0.5, 0.9, 0.1, 1.0))
    last = record("unlearn.train", EPOCH, args=(2, 2, 0.4, 0.95, 0.01, 1.0))
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    bars = cli.TrainingBars(terminal)
    assert bars.update(epoch) and bars.progress is not None
    assert bars.update(last) and bars.progress is None  # the last epoch ends the bar
    assert "training" in terminal.file.getvalue()
    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert cli.TrainingBars(pipe).update(epoch) and pipe.file.getvalue() == ""
    assert not bars.update(record("unlearn.train", "something else"))  # not an epoch: printed as a line


def test_jsonable_turns_dataclasses_and_non_finite_floats_into_json_values():
    from tasks.production.gates import GateResult

    gate = GateResult("UA", "rule", float("inf"), None, True)
    assert cli.jsonable({"gates": (gate,), "path": Path("a/b"), 1: {2.5, float("nan")} - {2.5}}) == {
        "gates": [
            {
                "name": "UA",
                "rule": "rule",
                "value": None,
                "threshold": None,
                "passed": True,
                "reason": "",
                "insufficient": False,
            }
        ],
        "path": "a/b",
        "1": [None],
    }
