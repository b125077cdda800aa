"""`unlearn tune`: search spaces, the tuning split, the search (improves, resumes, budgets), params.yaml."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tasks.adapters import layout
from tasks.adapters.params import load_params, method_config, parse_params
from tasks.production.tune import (
    PRESET_SEARCH_SPACES,
    REFERENCE_ATTR,
    SEARCH_SPACES,
    comparison_table,
    make_problem,
    open_study,
    retrain_reference,
    run_inline,
    run_trial,
    search,
    search_ranges,
    search_space,
    tune,
    tuning_classes,
    tuning_splits,
    write_tuned,
)
from unlearn.errors import ConfigError
from unlearn.methods import METHODS, default_config
from unlearn.methods.space import EPOCHS, FT_LR, LogUniform, Recipe, Share, share_of
from unlearn.presets import get_preset
from unlearn.splits import class_wise, random_fraction

ROOT = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- search spaces and the tuning split (fast) -----------------------------------------------


@pytest.mark.parametrize("preset", ["digits", "cifar10"])
@pytest.mark.parametrize("method", sorted(SEARCH_SPACES))
def test_defaults_lie_in_the_search_space(method, preset):
    """The defaults trial is enqueued first: its values must be points of the space (a share of the recipe's)."""
    config, train = default_config(method, preset), get_preset(preset).train
    recipe = Recipe.of(train.lr, train.epochs, train.batch_size, 10_000, 9_000)
    ranges = search_ranges(method, preset)
    for name, distribution in search_space(method, preset).items():
        point = share_of(ranges[name], getattr(config, name), recipe, getattr(config, "batch_size", 1))
        assert distribution.low <= point <= distribution.high, (name, getattr(config, name), point)


def test_digits_ranges_widen_the_papers_except_l1_gamma_which_moves_up():
    absolute = {"lr": FT_LR, "epochs": EPOCHS}  # the paper's, which the base spaces now state as shares
    for method, overrides in PRESET_SEARCH_SPACES["digits"].items():
        for name, digits_range in overrides.items():
            base = METHODS[method].search_space[name]
            paper = ({"ga": LogUniform(1e-5, 1e-1)}.get(method) or absolute[name]) if isinstance(base, Share) else base
            if digits_range is None:  # dropped: FT's and l1-sparse's one digits epoch
                assert name not in search_space(method, "digits") and name in search_space(method, "cifar10")
            elif (method, name) == ("l1_sparse", "gamma"):
                assert digits_range.low > paper.low and digits_range.high > 100 * paper.high
            else:
                assert digits_range.low <= paper.low and digits_range.high >= paper.high, (method, name)
    ga = PRESET_SEARCH_SPACES["digits"]["ga"]["lr"]
    assert ga.low == 1e-5 and ga.high == 1e-1
    with pytest.raises(ConfigError, match="no search space"):
        search_space("retrain", "digits")


def test_tuning_classes_are_the_next_ones_and_never_the_reported():
    assert tuning_classes([0], 10) == [[1]]
    assert tuning_classes([0], 10, folds=3) == [[1], [2], [3]]
    assert tuning_classes([9], 10, folds=2) == [[0], [1]]
    assert tuning_classes([0, 1], 10, folds=2) == [[2, 3], [4, 5]]
    assert tuning_classes([3, 7], 10) == [[8, 9]]
    with pytest.raises(ConfigError, match="disjoint"):
        tuning_classes(list(range(6)), 10)
    with pytest.raises(ConfigError, match="3 fold"):
        tuning_classes([0, 1, 2], 10, folds=3)


def test_tuning_splits_are_disjoint_from_the_reported_forget_set(digits):
    params = parse_params({})
    class_scenario, random_scenario = params.split.scenarios["class_wise"], params.split.scenarios["random"]

    reported = class_wise(digits, class_scenario.classes)
    folds = tuning_splits(digits, class_scenario, folds=3)
    assert [fold.forgotten_classes for fold in folds] == [(1,), (2,), (3,)]
    for fold in folds:
        assert set(fold.forget.labels) == set(fold.forgotten_classes)
        assert not set(fold.forget.indices) & set(reported.forget.indices)
        assert 0 in fold.retain.labels and fold.forgotten_classes[0] not in fold.test.labels

    reported = random_fraction(digits, random_scenario.fraction, random_scenario.seed)
    folds = tuning_splits(digits, random_scenario, folds=2)
    assert folds[0].forget.indices != folds[1].forget.indices
    for fold in folds:
        assert fold.scenario == "random" and len(fold.forget) == len(reported.forget)
        assert set(fold.forget.indices) <= set(reported.retain.indices)
        assert set(reported.forget.indices) <= set(fold.retain.indices)
        assert len(fold.test) == len(digits.test)


# --- params.yaml's tuned section (fast) -----------------------------------------------------


def untuned_params(folder: Path) -> Path:
    """The project's params.yaml with an empty `tuned` section (it ships tuned digits values)."""
    text = (ROOT / "params.yaml").read_text()
    empty = "".join(f"  {method}: {{}}\n" for method in SEARCH_SPACES)
    path = folder / "params.yaml"
    path.write_text(text[: text.index("\ntuned:")] + "\ntuned:\n" + empty)
    return path


def test_write_tuned_keeps_the_file_and_method_config_picks_values_up(tmp_path):
    path = untuned_params(tmp_path)
    before = path.read_text()
    write_tuned(path, "ga", "digits", "class_wise", 0.95, {"lr": 1e-7}, "gap 1.00 (defaults 9.00)")
    write_tuned(path, "ga", "digits", "class_wise", 0.0, {"lr": 0.003})
    after = path.read_text()
    head = before[: before.index("\ntuned:")]
    assert after.startswith(head)  # comments, quoting and nulls above the section untouched
    assert "s0.95: {lr: 1.0e-07}  # gap 1.00 (defaults 9.00)" in after
    assert after.index("s0.0:") < after.index("s0.95:")

    params = load_params(path)
    tuned = method_config(params, "ga", scenario="class_wise", sparsity=0.95)
    assert tuned.lr == 1e-7 and isinstance(tuned.lr, float)
    assert method_config(params, "ga", scenario="class_wise", sparsity=0.0).lr == 0.003
    assert method_config(params, "ga", scenario="class_wise", sparsity=0.5).lr == default_config("ga", "digits").lr
    assert method_config(params, "ga").lr == default_config("ga", "digits").lr
    assert method_config(params, "ga", scenario="random", sparsity=0.95).lr == default_config("ga", "digits").lr

    raw = yaml.safe_load(after)
    raw["unlearn"]["settings"]["ga"] = {"lr": 0.02}  # settings outrank tuned values
    assert method_config(parse_params(raw), "ga", scenario="class_wise", sparsity=0.95).lr == 0.02


def test_the_deletion_batch_unlearns_with_the_values_tuned_for_its_scenario(tmp_path):
    from tasks.production.deletion import batch_method_config

    path = untuned_params(tmp_path)
    write_tuned(path, "l1_sparse", "digits", "random", 0.95, {"gamma": 2e-4, "lr": 0.1})
    raw = yaml.safe_load(path.read_text())
    raw["deletion"].update(method="l1_sparse", sparsity=0.95, tuned_scenario="random")
    assert (batch_method_config(parse_params(raw)).gamma, batch_method_config(parse_params(raw)).lr) == (2e-4, 0.1)
    raw["deletion"]["sparsity"] = 0.5  # nothing tuned there
    assert batch_method_config(parse_params(raw)).gamma == default_config("l1_sparse", "digits").gamma
    raw["deletion"].update(sparsity=0.95, tuned_scenario=None)
    assert batch_method_config(parse_params(raw)).gamma == default_config("l1_sparse", "digits").gamma
    raw["deletion"]["tuned_scenario"] = "everything"
    with pytest.raises(ConfigError, match="deletion.tuned_scenario.*'everything'"):
        parse_params(raw)


@pytest.mark.parametrize(
    "tuned, message",
    [
        ({"retrain": {}}, "tuned.retrain"),
        ({"ga": {"digits": {"class_wise": {"0.95": {"lr": 0.1}}}}}, "s<sparsity>"),
        ({"ga": {"digits": {"class_wise": {"s0.95": {"gama": 0.1}}}}}, "gama"),
        ({"ga": {"mnist": {"class_wise": {"s0.95": {"lr": 0.1}}}}}, "tuned.ga.mnist"),
    ],
)
def test_bad_tuned_values_fail_naming_the_key(tuned, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({"tuned": tuned})


# --- the search on digits (slow: the session's digits original) -------------------------------


def ga_problem(digits, model, retrain_epochs: int = 8, classes=(1,)):
    """Forget each of `classes` (one fold each) from the digits original with GA; Retrain shrunk to 8 epochs.

    (With 4, Retrain is so unsure of every class that the attack calls all of Df a member.)
    """
    retrain = default_config("retrain", "digits", train=replace(get_preset("digits").train, epochs=retrain_epochs))
    splits = [class_wise(digits, [forgotten]) for forgotten in classes]
    return make_problem("ga", "digits", model, splits, digits, default_config("ga", "digits"), retrain)


@pytest.fixture
def problem(digits, digits_original):
    return ga_problem(digits, digits_original)


@pytest.fixture(scope="module")
def reference(digits, digits_original):
    """Retrain's reference, shared by the module's searches (each stores it before searching)."""
    return retrain_reference(ga_problem(digits, digits_original))


def seeded_study(storage: str, reference: dict, name: str = "ga") -> optuna.Study:
    study = open_study(name, storage)
    study.set_user_attr(REFERENCE_ATTR, reference)
    return study


class Recorder:
    """An `execute` that runs inline and counts the calls of each function."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def __call__(self, function, calls):
        self.calls[function.__name__] = self.calls.get(function.__name__, 0) + len(calls)
        return run_inline(function, calls)


@pytest.mark.slow
def test_search_improves_on_a_deliberately_bad_start(problem, reference, tmp_path):
    study = seeded_study(f"sqlite:///{tmp_path / 'optuna.db'}", reference)
    study.enqueue_trial({"lr": 1e-5})  # GA this gentle leaves most of class 1 learnt: gap ~20
    search(study, problem, 6, max_cost_share=100.0, enqueue_defaults=False)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 6 and trials[0].params == {"lr": 1e-5}
    bad = trials[0].value
    assert bad > 15 and trials[0].user_attrs["metrics"]["UA"] < 50
    assert study.best_value < bad / 2
    assert study.best_trial.user_attrs["metrics"]["UA"] > 90


@pytest.mark.slow
def test_search_resumes_without_repeating_finished_trials(digits, digits_original, tmp_path):
    problem = ga_problem(digits, digits_original, retrain_epochs=2)  # a cheap reference will do here
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = Recorder()
    search(open_study("ga", storage), problem, 2, max_cost_share=100.0, execute=first)
    assert first.calls == {"retrain_reference": 1, "run_trial": 2}
    before = optuna.load_study(study_name="ga", storage=storage)
    kept = [(t.number, t.params, t.value, t.user_attrs) for t in before.trials]
    assert before.trials[0].user_attrs["role"] == "defaults"
    assert before.trials[0].params == {"lr": default_config("ga", "digits").lr}

    resumed = Recorder()
    study = search(open_study("ga", storage), problem, 4, max_cost_share=100.0, execute=resumed)
    assert resumed.calls == {"run_trial": 2}  # the reference came from the study, not a new Retrain
    assert len(study.trials) == 4
    assert [(t.number, t.params, t.value, t.user_attrs) for t in study.trials[:2]] == kept
    assert study.user_attrs[REFERENCE_ATTR] == before.user_attrs[REFERENCE_ATTR]


@pytest.mark.slow
def test_a_trial_left_running_by_an_interruption_is_failed_and_rerun(problem, reference, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = seeded_study(storage, reference)
    search(study, problem, 1, max_cost_share=100.0)
    orphan = study.ask(problem.space())  # the process died while this trial ran
    search(open_study("ga", storage), problem, 2, max_cost_share=100.0)
    trials = optuna.load_study(study_name="ga", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].params == orphan.params


@pytest.mark.slow
def test_over_budget_trials_are_pruned_and_never_best(problem, reference, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = seeded_study(storage, reference, name="ga-digits-class_wise-s0.0")
    search(study, problem, 2, max_cost_share=1e-6)
    assert {t.state for t in study.trials} == {TrialState.PRUNED}
    assert all(t.user_attrs["gap"] >= 0 and t.user_attrs["cost_share"] > 1e-6 for t in study.trials)
    table = comparison_table(storage)
    assert "`ga-digits-class_wise-s0.0`" in table and "(over budget)" in table
    assert "| – | – | – | 2 |" in table  # no tuned values: nothing was within budget


@pytest.mark.slow
def test_a_study_resumes_only_with_its_own_budget(problem, reference, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search(seeded_study(storage, reference), problem, 1, max_cost_share=0.6)
    with pytest.raises(ConfigError, match="max-cost-share 0.6"):
        search(open_study("ga", storage), problem, 2, max_cost_share=0.25)


@pytest.mark.slow
def test_run_trial_measures_gap_and_cost_against_retrain(problem, reference):
    result = run_trial(problem, reference, {"lr": 1.5e-3})
    assert result.metrics["UA"] > 90
    (fold_reference,) = reference
    gaps = [abs(result.metrics[k] - fold_reference[k]) for k in ("UA", "MIA_efficacy", "RA", "TA")]
    assert math.isclose(result.gap, sum(gaps) / 4) and result.fold_gaps == (result.gap,)
    assert math.isclose(result.cost_share, result.metrics["RTE_seconds"] / fold_reference["RTE_seconds"])


@pytest.mark.slow
def test_a_trial_averages_its_folds(digits, digits_original, reference):
    two = ga_problem(digits, digits_original, classes=(1, 2))
    references = [reference[0], retrain_reference(ga_problem(digits, digits_original, classes=(2,)))[0]]
    result = run_trial(two, references, {"lr": 1.5e-3})
    alone = [run_trial(ga_problem(digits, digits_original, classes=(c,)), [r], {"lr": 1.5e-3}) for c, r in
             zip((1, 2), references, strict=True)]  # fmt: skip
    assert result.fold_gaps == pytest.approx([one.gap for one in alone], abs=1e-6)
    assert result.gap == pytest.approx(sum(result.fold_gaps) / 2)
    assert result.metrics["RA"] == pytest.approx((alone[0].metrics["RA"] + alone[1].metrics["RA"]) / 2)


# --- the command's whole path: pipeline files in, params.yaml and MLflow out (slow) ----------


@pytest.fixture
def pipeline(tmp_path, monkeypatch, digits, digits_original):
    """A working folder with the files `tune` reads (prepared data, the dense original) and params.yaml."""
    from tasks.adapters.workspace import save_model

    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update(seeds=[0], epochs=4)  # Retrain repeats the original's recipe: 4 epochs
    raw["tracking"]["experiment"] = "tune-test"
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params("params.yaml")
    digits.save(layout.RAW)
    save_model(layout.pruned_path(0.0, 0), digits_original, params, digits, seed=0, sparsity=0.0)
    return params


@pytest.mark.slow
def test_tune_writes_the_best_values_and_logs_each_trial_as_a_nested_run(pipeline, mlflow_store):
    from tasks.adapters import tracking

    storage = f"sqlite:///{Path('optuna.db').resolve()}"
    summary = tune(pipeline, "ga", "class_wise", 0.0, 3, storage=storage, max_cost_share=100.0, folds=1)
    assert summary.study == "ga-digits-class_wise-s0.0" and summary.trials == 3
    assert summary.best_gap <= summary.defaults_gap

    params = load_params("params.yaml")
    assert params.tuned["ga"]["digits"]["class_wise"]["s0.0"] == summary.best_values
    assert method_config(params, "ga", scenario="class_wise", sparsity=0.0).lr == summary.best_values["lr"]
    record = json.loads(layout.TUNING_RECORD.read_text())["ga-digits-class_wise-s0.0"]
    assert (record["method"], record["scenario"], record["sparsity"], record["trials"]) == ("ga", "class_wise", 0.0, 3)
    assert record["tuned"]["values"] == summary.best_values and record["tuned"]["within_budget"]
    assert record["defaults"]["gap"] == pytest.approx(summary.defaults_gap, abs=1e-3)

    experiment = tracking.client().get_experiment_by_name("tune-test")
    runs = tracking.client().search_runs([experiment.experiment_id])
    assert {run.data.tags[tracking.KIND_TAG] for run in runs} == {"tune"}
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and len(runs) == 4
    assert {"avg_gap", "cost_share", "UA", "RA"} <= set(children[0].data.metrics)
    assert parent.data.metrics["best_gap"] == pytest.approx(summary.best_gap)


@pytest.mark.slow
def test_tune_refuses_a_study_made_on_another_original(pipeline, digits, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    params = parse_params({**pipeline.model_dump(), "tracking": {"enabled": False}})
    tune(params, "ga", "class_wise", 0.0, 1, storage=storage, params_path=None, max_cost_share=100.0, folds=1)
    from tasks.adapters.workspace import load_model, save_model

    model, _ = load_model(layout.pruned_path(0.0, 0))
    next(model.parameters()).data.add_(0.01)
    save_model(layout.pruned_path(0.0, 0), model, params, digits, seed=0, sparsity=0.0)
    with pytest.raises(ConfigError, match="another original model"):
        tune(params, "ga", "class_wise", 0.0, 2, storage=storage, params_path=None, max_cost_share=100.0, folds=1)


@pytest.mark.slow
def test_flow_runs_trials_as_prefect_tasks_in_parallel(pipeline, prefect_api, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from flows.tune import run_tune

    storage = f"sqlite:///{tmp_path / 'flow.db'}"
    summary = run_tune("ga", "class_wise", 0.0, 3, params_path="params.yaml", storage=storage, parallel=2,
                       max_cost_share=100.0, folds=1)  # fmt: skip
    assert summary["trials"] == 3 and summary["written"]
    with get_client(sync_client=True) as client:
        names = [run.name for run in client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="trial-")))]  # fmt: skip
    assert sum(name.startswith("trial-{'lr'") for name in names) >= 3
    assert len(optuna.load_study(study_name=summary["study"], storage=storage).trials) == 3


# --- DVC: tuned values invalidate the tuned method's unlearn stage and no other method's (slow) ---


@pytest.mark.slow
def test_dvc_status_lists_only_the_tuned_methods_stages(tmp_path):
    pytest.importorskip("dvc")
    from tests.pipeline.test_pipeline_dvc import SHRINK, make_repo, run, shrunk_params

    repo = make_repo(tmp_path / "study", shrunk_params(SHRINK))
    pretend_outputs(repo)
    run(repo, "dvc", "commit", "-f", "-q")
    assert json.loads(run(repo, "dvc", "status", "--json").stdout) == {}

    write_tuned(repo / "params.yaml", "ga", "digits", "class_wise", 0.5, {"lr": 0.002})
    changed = json.loads(run(repo, "dvc", "status", "--json").stdout)
    # Of the unlearning stages only GA's. Besides it: `calibrate` reads every method's tuned values (they
    # decide what it skips) but writes the same record for the other methods, so their unlearn stages
    # stay as they were (tests/pipeline/test_study_calibration.py), and the report names the values run.
    assert set(changed) == {"unlearn@class_wise-ga", "calibrate", "report"}
    assert "tuned.ga" in json.dumps(changed["unlearn@class_wise-ga"])
    assert all("tuned" in json.dumps(changed[stage]) for stage in ("calibrate", "report"))


def pretend_outputs(repo: Path) -> None:
    """An empty stand-in for every output of the pipeline, so `dvc commit` can record its state."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        outputs = [Path(out.fs_path) for stage in dvc.index.stages for out in stage.outs]
    for path in outputs:
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("stand-in\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "stand-in").write_text("stand-in\n")
