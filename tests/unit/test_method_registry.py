"""The method registry: every method's spec is consistent, and everything that names methods reads it."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
from typing import get_args

import pytest
import torch
from torch import nn

from tasks.adapters.params import ApproximateMethodName, MethodName, parse_params
from tasks.production.tune import PRESET_SEARCH_SPACES, SEARCH_SPACES, distribution, search_space
from tasks.stages.findings import METHOD_LABELS
from unlearn.data import TensorSet
from unlearn.errors import ConfigError
from unlearn.masks import Masks
from unlearn.methods import (
    APPROXIMATE_METHODS,
    METHOD_NAMES,
    METHODS,
    MethodSpec,
    UnlearnRun,
    default_config,
    method_module,
    method_spec,
    run_method,
)
from unlearn.methods.base import IterativeConfig, Unlearned
from unlearn.methods.space import (
    EPOCHS,
    IntRange,
    LogUniform,
    Range,
    Recipe,
    Share,
    Uniform,
    contains,
    resolve,
    share_of,
)
from unlearn.methods.spec import check_run
from unlearn.presets import PRESETS

# METHOD_NAMES before the registry: the study's order (tables, DVC matrix, report rows).
FORMER_ORDER = ("retrain", "ft", "ga", "rl", "iu", "ff", "l1_sparse", "salun")
# tasks/production/tune.py's spaces before they moved into the method modules, in sampling order: a seeded TPE
# search's draws depend on every name, bound, scale and the order, so a change here changes what
# `unlearn tune` finds (then update this table on purpose).
# The paper's ranges, absolute: the relative ones below contain them at CIFAR-10's recipe.
PAPER_SPACES = {
    "ft": {"lr": LogUniform(1e-3, 1e-1), "epochs": IntRange(1, 10)},
    "ga": {"lr": LogUniform(1e-5, 1e-1)},
    "rl": {"lr": LogUniform(1e-3, 1e-1), "epochs": IntRange(1, 10)},
    "iu": {"alpha": LogUniform(1.0, 20.0)},
    "ff": {"alpha": LogUniform(1e-9, 1e-6)},
    "l1_sparse": {"gamma": LogUniform(1e-6, 1e-4), "lr": LogUniform(1e-3, 1e-1), "epochs": IntRange(1, 10)},
    "salun": {"lr": LogUniform(1e-3, 1e-1), "rho": Uniform(0.1, 0.9), "epochs": IntRange(1, 10)},
}
LR, STEPS = Share("lr", LogUniform(0.01, 10.0)), Share("steps", LogUniform(0.005, 0.2))
FORMER_SPACES = {  # lr and epochs as shares of the recipe since calibration on own data (issue 17)
    "ft": {"lr": LR, "epochs": STEPS},
    "ga": {"lr": Share("lr", LogUniform(1e-4, 1.0))},
    "rl": {"lr": LR, "epochs": STEPS},
    "iu": {"alpha": LogUniform(1.0, 20.0)},
    "ff": {"alpha": LogUniform(1e-9, 1e-6)},
    "l1_sparse": {"gamma": LogUniform(1e-6, 1e-4), "lr": LR, "epochs": STEPS},
    "salun": {"lr": LR, "rho": Uniform(0.1, 0.9), "epochs": STEPS},
}
FORMER_DIGITS_SPACES = {
    "ft": {"lr": LogUniform(1e-3, 0.5)},
    "ga": {"lr": LogUniform(1e-5, 1e-1)},
    "rl": {"lr": LogUniform(1e-3, 0.2), "epochs": IntRange(1, 10)},
    "iu": {"alpha": LogUniform(1.0, 20.0)},
    "ff": {"alpha": LogUniform(1e-9, 1e-5)},
    "l1_sparse": {"gamma": LogUniform(1e-5, 3e-2), "lr": LogUniform(1e-3, 0.5)},
    "salun": {"lr": LogUniform(1e-3, 0.2), "rho": Uniform(0.1, 0.9), "epochs": IntRange(1, 10)},
}
SPECS = list(METHODS.values())


def _ids(spec: MethodSpec) -> str:
    return spec.name


# --- the registry ---------------------------------------------------------------------------


def test_registry_order_is_the_former_method_names_and_retrain_alone_is_exact():
    assert tuple(METHODS) == METHOD_NAMES == FORMER_ORDER
    assert tuple(name for name in FORMER_ORDER if name != "retrain") == APPROXIMATE_METHODS
    assert not METHODS["retrain"].approximate and not METHODS["retrain"].tunable
    assert all(METHODS[name].approximate and METHODS[name].tunable for name in APPROXIMATE_METHODS)


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_each_spec_is_its_modules_and_named_after_it(spec):
    """dvc.yaml depends on unlearn/methods/<name>.py and config errors name the config's module."""
    module = importlib.import_module(f"unlearn.methods.{spec.name}")
    assert module.SPEC is spec and method_module(spec.name) is module and method_spec(spec.name) is spec
    assert spec.config is module.Config and spec.run is module.run and spec.preset_defaults is module.PRESET_DEFAULTS
    assert spec.config.__module__ == spec.run.__module__ == module.__name__


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_each_config_builds_with_every_presets_defaults(spec):
    assert set(spec.preset_defaults) <= set(PRESETS), sorted(spec.preset_defaults)
    for preset in PRESETS:
        config = default_config(spec.name, preset)
        assert isinstance(config, spec.config)
        for name, value in spec.preset_defaults.get(preset, {}).items():
            assert getattr(config, name) == value, (preset, name)


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_each_search_space_names_settings_of_its_config_and_holds_its_defaults(spec):
    settings = {field.name for field in dataclasses.fields(spec.config)}
    assert set(spec.preset_search_spaces) <= set(PRESETS), sorted(spec.preset_search_spaces)
    for space in (spec.search_space, *spec.preset_search_spaces.values()):
        assert set(space) <= settings, sorted(set(space) - settings)
        assert all(searched is None or isinstance(searched, Range) for searched in space.values())
    for preset in PRESETS:  # the defaults trial is enqueued first: it must be a point of the space
        config = default_config(spec.name, preset)
        train = PRESETS[preset].train  # a relative range's point: the share of the recipe the default is
        recipe = Recipe.of(train.lr, train.epochs, train.batch_size, 10_000, 9_000)
        for name, searched in spec.space(preset).items():
            point = share_of(searched, getattr(config, name), recipe, getattr(config, "batch_size", 1))
            assert contains(searched, point), (preset, name, getattr(config, name), point, searched)


def test_labels_are_non_empty_distinct_and_the_reports():
    labels = [spec.label for spec in SPECS]
    assert all(label.strip() for label in labels) and len(set(labels)) == len(labels)
    assert {spec.name: spec.label for spec in SPECS} == METHOD_LABELS
    assert list(METHOD_LABELS) == list(FORMER_ORDER)
    assert METHOD_LABELS["l1_sparse"] == "ℓ1-sparse" and METHOD_LABELS["retrain"] == "Retrain"


# --- the contract -----------------------------------------------------------------------------


def _good(
    model: nn.Module,
    retain_set: TensorSet,
    forget_set: TensorSet,
    config: object,
    device: torch.device,
    *,
    masks: Masks | None = None,
) -> Unlearned:
    return Unlearned(model, 0.0)


def _masks_positional(model, retain_set, forget_set, config, device, masks=None) -> Unlearned:
    return Unlearned(model, 0.0)


def _no_masks(model, retain_set, forget_set, config, device) -> Unlearned:
    return Unlearned(model, 0.0)


def _renamed(model, retain, forget, config, device, *, masks=None) -> Unlearned:
    return Unlearned(model, 0.0)


def _returns_model(model, retain_set, forget_set, config, device, *, masks=None) -> nn.Module:
    return model


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_each_run_meets_the_protocol(spec):
    assert isinstance(spec.run, UnlearnRun)
    check_run(spec.run)


@pytest.mark.parametrize("run", [_masks_positional, _no_masks, _renamed, _returns_model, "run"])
def test_a_run_off_the_contract_is_refused(run):
    check_run(_good)
    with pytest.raises(TypeError):
        check_run(run)
    with pytest.raises(TypeError):
        MethodSpec("toy", "Toy", IterativeConfig, {}, run)


def test_a_spec_searching_a_setting_its_config_lacks_is_refused():
    MethodSpec("toy", "Toy", IterativeConfig, {}, _good, {"lr": LogUniform(1e-3, 1e-1)})
    with pytest.raises(TypeError, match=re.escape("searches ['gamma']")):
        MethodSpec("toy", "Toy", IterativeConfig, {}, _good, {"gamma": LogUniform(1e-6, 1e-4)})
    with pytest.raises(TypeError, match=re.escape("searches ['rho']")):
        MethodSpec("toy", "Toy", IterativeConfig, {}, _good, {"lr": EPOCHS}, {"digits": {"rho": None}})
    with pytest.raises(TypeError, match="reference"):
        MethodSpec("toy", "Toy", IterativeConfig, {}, _good, {"lr": LogUniform(1e-3, 1e-1)}, approximate=False)
    with pytest.raises(TypeError, match="label"):
        MethodSpec("toy", " ", IterativeConfig, {}, _good)
    with pytest.raises(TypeError, match="dataclass"):
        MethodSpec("toy", "Toy", dict, {}, _good)


def test_a_preset_space_replaces_in_place_drops_none_and_appends_new_settings():
    spec = MethodSpec(
        "toy", "Toy", IterativeConfig, {}, _good,
        {"lr": LogUniform(1e-3, 1e-1), "epochs": EPOCHS, "momentum": Uniform(0.5, 0.9)},
        {"digits": {"epochs": None, "lr": LogUniform(1e-3, 0.5), "batch_size": IntRange(16, 64)}},
    )  # fmt: skip
    assert spec.space("cifar10") == spec.search_space
    assert list(spec.space("digits").items()) == [
        ("lr", LogUniform(1e-3, 0.5)), ("momentum", Uniform(0.5, 0.9)), ("batch_size", IntRange(16, 64)),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [
        lambda: LogUniform(0.0, 1.0),
        lambda: Uniform(2.0, 1.0),
        lambda: IntRange(1.5, 3),
        lambda: IntRange(3, 3),
        lambda: Uniform(True, 2.0),
        lambda: LogUniform("1e-3", 1.0),
    ],  # fmt: skip
)
def test_a_bad_range_is_refused(make):
    with pytest.raises((TypeError, ValueError)):
        make()


def test_contains_takes_integers_for_an_integer_range():
    assert contains(EPOCHS, 1) and contains(EPOCHS, 10) and not contains(EPOCHS, 11)
    assert not contains(EPOCHS, 2.0) and not contains(EPOCHS, True) and contains(Uniform(0.1, 0.9), 0.5)


# --- names outside the registry ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope", "FT", "", "base", "spec", "registry", "curvature"])
def test_a_name_not_in_the_registry_is_a_config_error(name, tiny_model):
    for call in (method_spec, method_module, default_config):
        with pytest.raises(ConfigError, match="unknown unlearning method"):
            call(name)
    with pytest.raises(ConfigError, match="unknown unlearning method"):  # before it reads anything
        run_method(name, tiny_model, None, None, torch.device("cpu"))


@pytest.fixture
def tiny_model() -> nn.Module:
    return nn.Linear(1, 1)


def test_params_type_method_names_from_the_registry_and_name_the_key():
    assert get_args(MethodName) == METHOD_NAMES and get_args(ApproximateMethodName) == APPROXIMATE_METHODS
    assert parse_params({}).unlearn.methods == list(APPROXIMATE_METHODS)
    cases = [
        ({"unlearn": {"methods": ["ft", "nope"]}}, "unlearn.methods.1: Input should be 'retrain', 'ft'"),
        ({"backdoor": {"methods": ["l1-sparse"]}}, "backdoor.methods.0: Input should be"),
        ({"deletion": {"method": "retrain"}}, "deletion.method must be an unlearning method other than retrain (ft,"),
        ({"deletion": {"method": "nope"}}, "deletion.method must be an unlearning method"),
        ({"transfer": {"method": "retrain"}}, "transfer.method must be an unlearning method other than retrain"),
        ({"tuned": {"retrain": {}}}, "tuned.retrain: not a tunable unlearning method"),
        ({"tuned": {"nope": {}}}, "tuned.nope: not a tunable unlearning method"),
    ]
    for raw, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_params(raw)
    for name in APPROXIMATE_METHODS:
        assert parse_params({"deletion": {"method": name}}).deletion.method == name


# --- unlearn tune's Optuna distributions --------------------------------------------------------


def test_the_spaces_are_the_former_ones_in_the_former_order():
    assert {spec.name: dict(spec.search_space) for spec in SPECS if spec.tunable} == FORMER_SPACES
    for name, space in FORMER_SPACES.items():
        assert list(METHODS[name].space("cifar10").items()) == list(space.items()), name
        assert list(METHODS[name].space("digits").items()) == list(FORMER_DIGITS_SPACES[name].items()), name


def test_the_relative_spaces_hold_the_papers_at_cifar10s_recipe():
    train = PRESETS["cifar10"].train  # the paper's FT: batch 256 as the recipe's, so a step share is an epoch share
    recipe = Recipe.of(train.lr, train.epochs, train.batch_size, 45_000, 45_000)
    for name, paper in PAPER_SPACES.items():
        for setting, searched in FORMER_SPACES[name].items():
            if not isinstance(searched, Share):
                assert searched == paper[setting]
                continue
            low, high = (resolve(searched, bound, recipe, 256) for bound in (searched.share.low, searched.share.high))
            assert low <= paper[setting].low and high >= paper[setting].high, (name, setting, low, high)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_tune_converts_every_range_into_the_optuna_distribution(preset):
    from optuna.distributions import FloatDistribution, IntDistribution

    assert set(SEARCH_SPACES) == set(APPROXIMATE_METHODS)
    assert set(PRESET_SEARCH_SPACES["digits"]) == {"ft", "ga", "rl", "ff", "l1_sparse", "salun"}
    for spec in (spec for spec in SPECS if spec.tunable):
        space = search_space(spec.name, preset)
        assert list(space) == list(spec.space(preset))
        for name, searched in spec.space(preset).items():
            searched = searched.share if isinstance(searched, Share) else searched  # a share's range is searched
            expected = {
                LogUniform: FloatDistribution(searched.low, searched.high, log=True),
                Uniform: FloatDistribution(searched.low, searched.high, log=False),
                IntRange: IntDistribution(searched.low, searched.high),
            }[type(searched)]
            assert space[name] == expected == distribution(searched), (spec.name, name)
    with pytest.raises(TypeError):
        distribution((1e-3, 1e-1))


def test_the_core_declares_spaces_without_optuna():
    code = "import sys, unlearn.methods; print('optuna' in sys.modules, 'pydantic' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
