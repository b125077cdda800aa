"""Setting types: the core's config checker (`unlearn.config`) and params.yaml refusing bad values at load time."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pytest
import yaml

from tasks.adapters.params import load_params, method_config, parse_params
from unlearn.backdoor import cleanse_config
from unlearn.config import Range, SettingError, check_config, replace_checked
from unlearn.errors import ConfigError
from unlearn.methods import METHOD_NAMES, default_config, ff, ft, retrain
from unlearn.presets import PRESETS
from unlearn.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


# --- the core's checker ----------------------------------------------------------------------


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    steps: int = 1


@dataclass(frozen=True)
class Sample:
    count: int = 1
    rate: float = 0.1
    flag: bool = False
    name: str = "a"
    mode: Literal["fast", "slow"] = "fast"
    limit: int | None = None
    sizes: tuple[int, ...] = ()
    pair: tuple[int, float] = (1, 2.0)
    names: list[str] = field(default_factory=list)
    positive: Annotated[float, Range(gt=0)] = 1.0
    percent: Annotated[int, Range(ge=0, le=100)] = 50
    inner: Inner = Inner()

    def __post_init__(self) -> None:
        check_config(self, "sample")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"count": True}, "sample: count must be an integer, got True"),
        ({"count": 2.0}, "sample: count must be an integer, got 2.0"),
        ({"count": "3"}, "sample: count must be an integer, got '3'"),
        ({"rate": "fast"}, "sample: rate must be a number, got 'fast'"),
        ({"rate": False}, "sample: rate must be a number, got False"),
        ({"rate": float("inf")}, "sample: rate must be a finite number, got inf"),
        ({"flag": 1}, "sample: flag must be true or false, got 1"),
        ({"flag": "true"}, "sample: flag must be true or false, got 'true'"),
        ({"name": 3}, "sample: name must be a string, got 3"),
        ({"mode": "quick"}, "sample: mode must be one of 'fast', 'slow', got 'quick'"),
        ({"limit": "none"}, "sample: limit must be an integer or None (null), got 'none'"),
        ({"sizes": 3}, "sample: sizes must be a list of integers, got 3"),
        ({"sizes": [1, "2"]}, "sample: sizes[1] must be an integer, got '2'"),
        ({"pair": [1]}, "sample: pair must be a list of 2 items (an integer, a number), got 1 item(s)"),
        ({"pair": [1, "x"]}, "sample: pair[1] must be a number, got 'x'"),
        ({"names": ["a", 1]}, "sample: names[1] must be a string, got 1"),
        ({"positive": 0}, "sample: positive must be greater than 0, got 0"),
        ({"percent": 101}, "sample: percent must be at most 100, got 101"),
        ({"percent": -1}, "sample: percent must be at least 0, got -1"),
        ({"inner": {"rate": "x"}}, "sample: inner.rate must be a number, got 'x'"),
        ({"inner": {"step": 2}}, "sample: inner.step is not a setting of Inner"),
        ({"inner": 3}, "sample: inner must be a mapping of Inner settings, got 3"),
    ],
)
def test_the_checker_refuses_each_wrong_type_naming_the_setting(changes, message):
    with pytest.raises(SettingError, match=re.escape(message)):
        replace_checked(Sample(), changes, "sample")


def test_a_config_made_directly_is_checked_too():
    with pytest.raises(SettingError, match=re.escape("sample: rate must be a number, got 'fast'")):
        Sample(rate="fast")
    with pytest.raises(SettingError, match=re.escape("sample: sizes[0] must be an integer, got None")):
        Sample(sizes=[None])
    with pytest.raises(SettingError, match=re.escape("sample: inner.steps must be an integer, got '1'")):
        Sample(inner=Inner(steps="1"))
    with pytest.raises(SettingError) as error:
        Sample(count="3")
    assert (error.value.setting, error.value.under("a.b")) == ("count", "a.b.count: must be an integer, got '3'")


def test_the_checker_accepts_what_the_annotations_allow():
    sample = replace_checked(
        Sample(),
        {"rate": 1, "limit": 3, "sizes": [1, 2], "pair": [1, 2], "mode": "slow", "inner": {"steps": 4}},
        "sample",
    )
    assert (sample.rate, sample.limit, sample.mode, sample.inner) == (1, 3, "slow", Inner(0.5, 4))
    assert sample.sizes == (1, 2) and sample.pair == (1, 2)  # tuple fields hold tuples
    assert Sample(sizes=[3]).sizes == (3,) and Sample(limit=None).limit is None


def test_the_core_refuses_a_wrong_type_when_the_config_is_built():
    with pytest.raises(ConfigError, match=re.escape("ft: lr must be a number, got 'fast'")):
        default_config("ft", "digits", lr="fast")
    with pytest.raises(ConfigError, match=re.escape("ft: lr must be a number, got 'fast'")):
        ft.Config(lr="fast")
    with pytest.raises(ConfigError, match=re.escape("l1_sparse: momentum must be a number, got True")):
        cleanse_config("l1_sparse", "digits", momentum=True)
    with pytest.raises(ConfigError, match=re.escape("retrain: train.epochs must be an integer, got 2.5")):
        default_config("retrain", "digits", train={"epochs": 2.5})
    with pytest.raises(ConfigError, match=re.escape("ga: epochs must be at least 1, got 0")):
        default_config("ga", "digits", epochs=0)
    with pytest.raises(ConfigError, match=re.escape("ff: forget_classes[0] must be an integer, got '0'")):
        default_config("ff", "digits", forget_classes=["0"])
    with pytest.raises(ConfigError, match="has no setting"):  # unknown names keep their message
        default_config("ft", "digits", gama=1.0)
    with pytest.raises(ConfigError, match="lr_schedule 'warm' is not one of"):  # and value checks theirs
        default_config("ft", "digits", lr_schedule="warm")


def test_every_method_and_preset_default_passes_the_checker():
    for method in METHOD_NAMES:
        for preset in PRESETS:
            default_config(method, preset)
    assert default_config("ff", "digits", forget_classes=[1, 2]).forget_classes == (1, 2)
    assert default_config("ft", "digits", lr=1).lr == 1  # an integer is a number
    digits = default_config("retrain", "digits", train={"epochs": 3}).train  # changes the preset's recipe
    assert (digits.epochs, digits.lr, digits.batch_size) == (3, PRESETS["digits"].train.lr, 128)
    assert isinstance(retrain.Config(train=TrainConfig()).train, TrainConfig)
    assert ff.Config(num_samples=None).num_samples is None


# --- params.yaml: refused when loaded, naming the full key ------------------------------------


def _tuned(method: str, values: dict, preset: str = "digits") -> dict:
    return {"tuned": {method: {preset: {"random": {"s0.95": values}}}}}


BAD = [
    ({"unlearn": {"settings": {"ft": {"lr": "fast"}}}}, "unlearn.settings.ft.lr: must be a number, got 'fast'"),
    ({"unlearn": {"settings": {"ft": {"epochs": "3"}}}}, "unlearn.settings.ft.epochs: must be an integer, got '3'"),
    ({"unlearn": {"settings": {"ft": {"epochs": 2.5}}}}, "unlearn.settings.ft.epochs: must be an integer, got 2.5"),
    ({"unlearn": {"settings": {"ft": {"momentum": True}}}}, "unlearn.settings.ft.momentum: must be a number, got True"),
    ({"unlearn": {"settings": {"ft": {"lr_schedule": 7}}}}, "unlearn.settings.ft.lr_schedule: must be a string, got 7"),
    ({"unlearn": {"settings": {"ft": {"augment": "yes"}}}}, "unlearn.settings.ft.augment: must be true or false"),
    ({"unlearn": {"settings": {"ga": {"epochs": 0}}}}, "unlearn.settings.ga.epochs: must be at least 1, got 0"),
    # YAML 1.1 reads 1e-4 (no dot) as a string
    ({"unlearn": {"settings": {"l1_sparse": {"gamma": "1e-4"}}}}, "unlearn.settings.l1_sparse.gamma: must be a number"),
    ({"unlearn": {"settings": {"ff": {"forget_classes": [0, "a"]}}}}, "unlearn.settings.ff.forget_classes[1]: must be"),
    ({"unlearn": {"settings": {"ff": {"num_samples": "all"}}}}, "unlearn.settings.ff.num_samples: must be an integer"),
    ({"unlearn": {"settings": {"iu": {"alpha": None}}}}, "unlearn.settings.iu.alpha: must be a number, got None"),
    ({"unlearn": {"settings": {"retrain": {"train": {"lr": "fast"}}}}}, "unlearn.settings.retrain.train.lr: must be"),
    ({"unlearn": {"settings": {"retrain": {"train": "fast"}}}}, "unlearn.settings.retrain.train: must be a mapping"),
    ({"unlearn": {"settings": {"ft": {"sparsity": 0.5}}}}, "unlearn.settings.ft: method 'ft' has no setting(s)"),
    (_tuned("ga", {"lr": "fast"}), "tuned.ga.digits.random.s0.95.lr: must be a number, got 'fast'"),
    (_tuned("rl", {"epochs": "3"}), "tuned.rl.digits.random.s0.95.epochs: must be an integer, got '3'"),
    (_tuned("salun", {"rho": True}), "tuned.salun.digits.random.s0.95.rho: must be a number, got True"),
    (_tuned("ft", {"epochs": 2.5}, "cifar10"), "tuned.ft.cifar10.random.s0.95.epochs: must be an integer, got 2.5"),
    (
        {"backdoor": {"settings": {"ft": {"momentum": True}}}},
        "backdoor.settings.ft.momentum: must be a number, got True",
    ),
    ({"backdoor": {"settings": {"l1_sparse": {"epochs": "20"}}}}, "backdoor.settings.l1_sparse.epochs: must be an"),
    ({"backdoor": {"settings": {"l1_sparse": {"gama": 1.0}}}}, "backdoor.settings.l1_sparse: method 'l1_sparse' has"),
    ({"backdoor": {"settings": {"nope": {}}}}, "backdoor.settings.nope: unknown unlearning method"),
    ({"transfer": {"settings": {"lr_schedule": 7}}}, "transfer.settings.lr_schedule: must be a string, got 7"),
    ({"transfer": {"settings": {"epochs": 2.5}}}, "transfer.settings.epochs: must be an integer, got 2.5"),
    ({"transfer": {"method": "ga", "settings": {"lr": "fast"}}}, "transfer.settings.lr: must be a number, got 'fast'"),
    ({"transfer": {"settings": {"gama": 1.0}}}, "transfer.settings: method 'l1_sparse' has no setting(s) ['gama']"),
    ({"transfer": {"settings": {"seed": 1}}}, "transfer.settings.seed: set transfer.seed"),
    (
        {"promote": {"class_wise": {"max_ta_drop": "fast"}}},
        "promote.class_wise.max_ta_drop: Input should be a valid number, got 'fast'",
    ),
    (
        {"promote": {"class_wise": {"min_ua": True}}},
        "promote.class_wise.min_ua: Input should be a valid number, got True",
    ),
    (
        {"promote": {"class_wise": {"min_mia_efficacy": "50"}}},
        "promote.class_wise.min_mia_efficacy: Input should be a valid number, got '50'",
    ),
    (
        {"promote": {"class_wise": {"min_ua": 101}}},
        "promote.class_wise.min_ua: Input should be less than or equal to 100",
    ),
    ({"promote": {"sample": {"max_ta_drop": -1}}}, "promote.sample.max_ta_drop: Input should be greater than or equal"),
    ({"audit": {"references": 5}}, "audit.references: Value error, must be even"),
    ({"audit": {"alpha": 1.5}}, "audit.alpha: Input should be less than 1"),
    ({"audit": {"probe_size": "200"}}, "audit.probe_size: Input should be a valid integer, got '200'"),
    ({"audit": {"task_runner": "ray"}}, "audit.task_runner: Input should be 'threads' or 'dask'"),
    ({"deletion": {"sparsity": "0.95"}}, "deletion.sparsity: Input should be a valid number, got '0.95'"),
    # One `Sparsity` type, in [0, 1): every sparsity key says so, naming the key (and the list item)
    ({"deletion": {"sparsity": 1.0}}, "deletion.sparsity: Input should be less than 1, got 1.0"),
    ({"prune": {"sparsities": [0.5, 1.0]}}, "prune.sparsities.1: Input should be less than 1, got 1.0"),
    ({"backdoor": {"sparsities": [-0.5]}}, "backdoor.sparsities.0: Input should be greater than or equal to 0"),
    ({"prune": {"sparsities": ["0.5"]}}, "prune.sparsities.0: Input should be a valid number, got '0.5'"),
    ({"deletion": {"seed": 1.5}}, "deletion.seed: Input should be a valid integer, got 1.5"),
    ({"deletion": {"dvc_push": "yes"}}, "deletion.dvc_push: Input should be a valid boolean, got 'yes'"),
    ({"deletion": {"max_request_bytes": "1MB"}}, "deletion.max_request_bytes: Input should be a valid integer"),
    ({"deletion": {"method": "retrain"}}, "deletion.method must be an unlearning method"),
    ({"train": {"epochs": "3"}}, "train.epochs: Input should be a valid integer, got '3'"),
    ({"backdoor": {"poison_ratio": True}}, "backdoor.poison_ratio: Input should be a valid number, got True"),
]


@pytest.mark.parametrize("raw, message", BAD, ids=[message.split(":")[0] for _, message in BAD])
def test_a_bad_value_is_refused_at_load_time_naming_the_full_key(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_params(raw)


def test_a_tuned_value_that_clashes_with_unlearn_settings_is_refused_at_load_time():
    raw = {
        "unlearn": {"settings": {"l1_sparse": {"epochs": 1}}},
        **_tuned("l1_sparse", {"epochs": 2, "no_l1_epochs": 2}),
    }
    with pytest.raises(ConfigError, match=re.escape("tuned.l1_sparse.digits.random.s0.95 with unlearn.settings.l1_")):
        parse_params(raw)


def test_good_values_still_load(tmp_path):
    params = parse_params(
        {
            "unlearn": {
                "settings": {"ft": {"lr": 1}, "ff": {"forget_classes": [0, 1]}, "retrain": {"train": {"epochs": 3}}}
            },
            "backdoor": {"settings": {"ft": {"lr": 1, "epochs": 2}}},
            "transfer": {"settings": {"lr": 1, "gamma": 0}},
            "promote": {"class_wise": {"max_ta_drop": 2, "min_ua": 90}},
            "audit": {"references": 4, "alpha": 0.1},
            "deletion": {"sparsity": 0},
            **_tuned("ga", {"lr": 1}),
        }
    )
    assert method_config(params, "ft").lr == 1 and method_config(params, "ff").forget_classes == (0, 1)
    recipe = method_config(params, "retrain").train  # the original's recipe, epochs changed
    assert (recipe.epochs, recipe.lr) == (3, PRESETS["digits"].train.lr)
    assert method_config(params, "ga", scenario="random", sparsity=0.95).lr == 1
    assert params.promote.class_wise.max_ta_drop == 2 and params.audit.references == 4

    shipped = load_params(ROOT / "params.yaml")
    assert shipped.tuned and shipped.backdoor.settings
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text().replace("ft: {}", "ft: {lr: fast}", 1))
    assert "lr: fast" in path.read_text()
    with pytest.raises(ConfigError, match=re.escape("unlearn.settings.ft.lr: must be a number, got 'fast'")):
        load_params(path)
    assert yaml.safe_load(path.read_text())["unlearn"]["settings"]["ft"] == {"lr": "fast"}
