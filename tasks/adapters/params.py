"""`params.yaml`, loaded into pydantic models: DVC params, Prefect flow parameters, MLflow params.

Each stage reads only its own group, so DVC invalidates precisely. A bad value fails fast
with a `ConfigError` naming the key (`unlearn.settings.l1_sparse.gama: unknown setting`), at
load time: values are checked as their types say (strictly: "3" is no integer, true no number)
and every method setting (`unlearn.settings`, `tuned`, `backdoor.settings`, `transfer.settings`)
is built into its method's config, whose checks (`unlearn.config`) name the setting
(`unlearn.settings.ft.lr: must be a number, got 'fast'`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.adapters.layout import PARAMS_FILE, sparsity_tag
from unlearn.backdoor import cleanse_config
from unlearn.config import SettingError, replace_checked
from unlearn.data import DATASETS
from unlearn.errors import ConfigError
from unlearn.methods import APPROXIMATE_METHODS, METHOD_NAMES, default_config
from unlearn.presets import PRESETS
from unlearn.threads import DEFAULT_WAIT_POLICY, WAIT_POLICIES, parse_threads
from unlearn.train import TrainConfig
from unlearn.transfer import TRANSFER_PRESETS, TransferConfig, TransferPreset

# Method names as params.yaml may give them: the registry's (unlearn.methods.registry.METHODS).
MethodName = Literal[METHOD_NAMES]
ApproximateMethodName = Literal[APPROXIMATE_METHODS]  # every method but Retrain, the reference


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default.

    Values are not coerced (strict mode): "2.0" is no number, true no number nor integer, 2.5
    no integer, "yes" no boolean; an integer is a number.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(Strict):
    """Which data set, from where, split how (train/test split seed).

    `source: preset` is the preset's own data set; `npz` (arrays x, y, optional ids) and `images`
    (one subfolder per class, PNG or JPEG; ids are paths relative to `path`) read the user's own
    data at `path`. The preset stays the recipe (architecture, epochs, batch size, learning rate).
    """

    preset: str = "digits"
    root: str = "data/external"
    download: bool = False
    seed: int = 0
    source: Literal["preset", "npz", "images"] = "preset"
    path: str | None = None
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    image_size: int | list[int] | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    max_bytes: int = Field(4 * 1024**3, gt=0)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; known: {', '.join(PRESETS)}")
        return value

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, value: int | list[int] | None) -> int | list[int] | None:
        sizes = [value] if isinstance(value, int) else value or []
        if (isinstance(value, list) and len(value) != 2) or any(size < 1 for size in sizes):
            raise ValueError("image_size is a positive size or [height, width]")
        return value

    @model_validator(mode="after")
    def _path_for_own_data(self) -> DataParams:
        if self.source != "preset" and not self.path:
            raise ValueError(f"data.source {self.source} needs data.path (the .npz file or the image folder)")
        return self

    @property
    def dataset(self) -> str:
        """The data set's name: the preset's data set, or `name` (else the file's or folder's name) for own data.

        The prepared bundle, its checkpoints and the registered model (`tasks.adapters.registry`) carry it.
        """
        from unlearn.data import source_name

        return source_name(self.source, self.path, PRESETS[self.preset].dataset, self.name)


class Scenario(Strict):
    """A forgetting scenario: all samples of some classes, or a seeded random fraction."""

    kind: Literal["class_wise", "random"]
    classes: list[int] = Field(default_factory=list)
    fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _classes_for_class_wise(self) -> Scenario:
        if self.kind == "class_wise" and not self.classes:
            raise ValueError("a class_wise scenario needs `classes`")
        return self


class SplitParams(Strict):
    """Forgetting scenarios by name."""

    scenarios: dict[str, Scenario] = Field(
        default_factory=lambda: {
            "class_wise": Scenario(kind="class_wise", classes=[0]),
            "random": Scenario(kind="random", fraction=0.1, seed=1),
        }
    )


class TrainParams(Strict):
    """Original-model training: seeds (one original per seed) and recipe overrides."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)


# A pruning level: the share of prunable weights that are zero, in [0, 1) (0 = the dense model).
Sparsity = Annotated[float, Field(ge=0, lt=1)]


class PruneParams(Strict):
    """The pruner and the sparsities studied (0 = the dense original)."""

    method: Literal["omp", "imp", "synflow"] = "omp"
    sparsities: list[Sparsity] = Field(default_factory=lambda: [0.0, 0.5, 0.9, 0.95], min_length=1)


class UnlearnParams(Strict):
    """The methods studied and their settings (overrides of each method's preset defaults)."""

    methods: list[MethodName] = Field(default_factory=lambda: list(APPROXIMATE_METHODS))
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)


class EvaluateParams(Strict):
    """Evaluation options.

    `mia_chance_margin`: the report flags a seed's MIA-efficacy where its attack's power (balanced
    accuracy on its own members against non-members, out of sample) is below 50 + this many points.
    """

    mia: bool = True
    mia_chance_margin: float = Field(5.0, ge=0, le=50)


class SampleGateParams(Strict):
    """Gates of a batch of arbitrary samples: judged against the model's own test error and the audit.

    A model that forgot a few samples as retraining would errs on them about as often as on
    unseen data, so UA is checked against the test error within a binomial interval, and the
    membership audit (`unlearn.audit`) against its non-member probe; where the audit cannot tell
    on this batch (power below `min_power`), `weak_evidence` says what certifies the candidate.
    """

    max_ta_drop: float = Field(2.0, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)  # of the Clopper-Pearson intervals on UA and the unseen share
    ua_tolerance: float = Field(2.0, ge=0)  # points the test error may lie outside UA's interval
    unseen_tolerance: float = Field(10.0, ge=0)  # points the unseen share may lie below the non-member probe's
    min_power: float = Field(0.8, ge=0, le=1)
    weak_evidence: Literal["retrain", "refuse"] = "retrain"
    max_retrain_gap: float = Field(3.0, ge=0)  # |TA - Retrain's TA|, |RA - Retrain's RA| at most this


class ClassWiseGateParams(Strict):
    """Gates of a batch that deletes whole classes: the forgotten classes must be unlearned outright."""

    max_ta_drop: float = Field(2.0, ge=0)
    min_ua: float = Field(90.0, ge=0, le=100)
    min_mia_efficacy: float = Field(50.0, ge=0, le=100)


class GateParams(Strict):
    """Promotion gates a candidate must pass before it becomes champion, per kind of deletion request."""

    sample: SampleGateParams = SampleGateParams()
    class_wise: ClassWiseGateParams = ClassWiseGateParams()


class AuditParams(Strict):
    """The per-sample membership audit: its reference pool (built once per champion lineage) and levels."""

    references: int | None = Field(None, ge=2)  # K reference models (even); None: the preset's (digits 16)
    alpha: float = Field(0.2, gt=0, lt=1)  # a sample with p-value below this looks seen
    fixed_variance: bool = True  # one variance pooled over all samples (LiRA's variant for K < 64)
    probe_size: int = Field(200, ge=10)  # member and non-member probe samples each (the audit's power)
    seed: int = 0  # the half splits, the references' seeds and the probes
    rebuild_deleted_share: float = Field(0.1, gt=0, le=1)  # pool stale once this share of its data is deleted
    task_runner: Literal["threads", "dask"] = "threads"  # how `unlearn audit build` fans the references out

    @field_validator("references")
    @classmethod
    def _even(cls, value: int | None) -> int | None:
        if value is not None and value % 2:
            raise ValueError(f"must be even (each sample is IN for exactly half the references), got {value}")
        return value


class ComputeParams(Strict):
    """How each stage, flow task and command uses the CPU (`unlearn.threads.configure_threads`).

    It changes how fast the study runs, never what it computes, so no stage lists it as a DVC param.
    """

    threads: int | str = "auto"  # auto: the free cores (cores less those other work keeps busy), or a number
    wait_policy: Literal[WAIT_POLICIES] = DEFAULT_WAIT_POLICY  # how OpenMP's idle threads wait: passive | active | auto
    stage_server: bool = True  # stage processes run in children of a preloaded server (tasks.stages.server)

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> int | str:
        return parse_threads(value, key=None)


class DeletionParams(Strict):
    """The production path: where requests wait, how a batch is unlearned, when it runs."""

    inbox: str = "data/requests"  # a folder, or s3://bucket/prefix/
    ledger: str = "data/ledger/ledger.csv"
    method: ApproximateMethodName = "l1_sparse"
    sparsity: Sparsity = 0.95  # the first champion's sparsity (0 = dense)
    seed: int = 0
    retrain_reference: bool = False  # also retrain on the new Dr and report the gap to it
    dvc_push: bool = True  # version the batch's split and the ledger with DVC and push them
    schedule: str = "0 * * * *"  # cron of the deletion-batch deployment (hourly)
    max_request_bytes: int = Field(1 << 20, gt=0)
    # How long a batch waits for another one to finish (the ledger's lock, Prefect's slot) before it stops.
    lock_timeout_seconds: float = Field(600.0, gt=0)
    # Prefect server only: the slot's lease; a killed worker's slot is freed this long after its last renewal.
    lease_seconds: float = Field(60.0, ge=60)
    # Deletion requests name arbitrary samples: a batch unlearns with the values `unlearn tune`
    # found for this scenario at the champion's sparsity (params.yaml: random); null: none.
    tuned_scenario: str | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _approximate_method(cls, value: Any) -> Any:
        return _approximate(value, "deletion.method")


class CalibrateParams(Strict):
    """Calibration: `unlearn train-original` searches the deletion method's settings on the champion itself.

    The study's `calibrate` stage (`tasks.production.study_calibration`) runs the same search per scenario,
    sparsity and method of `unlearn.methods` without tuned values for the data set (`methods` and
    `scenario` are train-original's; `max_retrains` bounds each scenario and sparsity there).

    A budgeted search per method (`unlearn tune`'s machinery, `tasks.production.tune.calibrate`) on
    tuning folds disjoint from the scenario's reported forget set: `seeds` x `folds` simulated
    deletions of `scenario`'s kind, each with its Retrain reference. The objective is the mean gap to
    Retrain over them plus `worst_weight` times the worst seed's excess over that mean (1: the worst
    seed's gap), so the values chosen forget on every seed. The whole calibration stops starting trials
    once it has spent `max_retrains` times one Retrain's wall time (the references included).
    """

    enabled: bool = True  # false (or `unlearn train-original --no-calibrate`): never calibrate
    skip_tuned: bool = True  # skip where params.yaml's `tuned` has values for the data set, scenario, sparsity
    methods: list[ApproximateMethodName] | None = None  # null: [deletion.method]
    scenario: str | None = None  # the kind of deletion searched for; null: deletion.tuned_scenario
    trials: int = Field(8, ge=1)  # per method, the defaults trial included
    folds: int = Field(1, ge=1)  # simulated deletions per seed
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    worst_weight: float = Field(1.0, ge=0, le=1)
    max_retrains: float = Field(6.0, gt=0)  # the whole calibration's cost bound, in Retrains
    max_cost_share: float = Field(0.2, gt=0, le=1)  # a trial over this share of Retrain's time is never chosen

    @field_validator("methods", mode="before")
    @classmethod
    def _approximate_methods(cls, value: Any) -> Any:
        for method in value or []:
            _approximate(method, "calibrate.methods")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        return value

    @model_validator(mode="after")
    def _references_fit(self) -> CalibrateParams:
        references = len(self.seeds) * self.folds
        if references >= self.max_retrains:
            raise ValueError(
                f"calibrate.max_retrains {self.max_retrains:g} leaves nothing for trials: the "
                f"{len(self.seeds)} seed(s) x {self.folds} fold(s) Retrain references alone cost {references} Retrains"
            )
        return self


# The stores a purge cleans (`tasks.production.purge`): the prepared data set's rows (and the audit pools'
# columns) of deleted samples, checkpoints under models/, MLflow's model artefacts, DVC's cache and remote,
# the inbox's done request bodies.
PURGE_STORES = ("data", "checkpoints", "mlflow", "dvc_cache", "dvc_remote", "inbox")
PurgeStore = Literal[PURGE_STORES]


class RetentionParams(Strict):
    """What happens, once a deletion is in service, to the deleted samples and the models trained on them.

    A purge (`unlearn purge`; after `promote` with `purge: on_promotion`) deletes the model files of
    every registered version that held a sample the champion has forgotten (their registry entries
    stay, tagged `purged`), the samples' rows of the prepared data set and every DVC object of older
    versions, and the done request bodies; the ledger keeps their ids (`tasks.production.purge`).
    """

    purge: Literal["on_promotion", "on_command"] = "on_promotion"
    grace_days: float = Field(0.0, ge=0)  # a version is purged this long after it stopped serving
    stores: list[PurgeStore] = Field(default_factory=lambda: list(PURGE_STORES))
    study_outputs: Literal["keep", "purge"] = "keep"  # the dvc.yaml stages' outs (all trained on the full data)

    @field_validator("stores")
    @classmethod
    def _distinct_stores(cls, value: list[str]) -> list[str]:
        repeated = sorted({store for store in value if value.count(store) > 1})
        if repeated:
            raise ValueError(f"stores named more than once: {', '.join(repeated)}")
        if "dvc_remote" in value and "dvc_cache" not in value:
            raise ValueError("dvc_remote needs dvc_cache: DVC garbage-collects the remote with the local cache")
        return value


class TrackingParams(Strict):
    """MLflow tracking of the stages and flows (the store: MLFLOW_TRACKING_URI, default sqlite mlflow.db).

    Disabled, no stage or flow opens a run, but the registry still records the models it
    registers, in `experiment` (see `tasks.adapters.tracking`).
    """

    enabled: bool = True
    experiment: str = "unlearn-study"


class BackdoorParams(Strict):
    """The Trojan-model cleanse: the attack, the Trojan models' sparsities, the methods.

    Attack fields left null take the preset's attack (`unlearn.backdoor.BACKDOOR_DEFAULTS`);
    `settings` override each method's cleanse config (`unlearn.backdoor.cleanse_config`).
    """

    sparsities: list[Sparsity] = Field(default_factory=lambda: [0.0, 0.5, 0.9, 0.95], min_length=1)
    methods: list[MethodName] = Field(default_factory=lambda: ["ft", "l1_sparse"], min_length=1)
    trigger_size: int | None = Field(None, ge=1)
    patch_value: float | None = Field(None, ge=0, le=1)
    poison_ratio: float | None = Field(None, gt=0, lt=1)
    target_class: int | None = Field(None, ge=0)
    seed: int = 0  # poisoning, the Trojan model's training and the cleanse
    epochs: int | None = Field(None, ge=1)  # the Trojan model's training; null = the preset's
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)


def _approximate(value: Any, key: str) -> Any:
    """`value` if it names an approximate method (any but Retrain, the reference); else an error naming `key`."""
    if value not in APPROXIMATE_METHODS:
        known = ", ".join(APPROXIMATE_METHODS)
        raise ValueError(f"{key} must be an unlearning method other than retrain ({known}), got {value!r}")
    return value


def _one_of(value: str | None, known, what: str) -> str | None:
    """`value` if it is one of `known` (or None); else an error naming it and the known ones."""
    if value is not None and value not in known:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known)}")
    return value


class TransferParams(Strict):
    """Transfer after unlearning: source and target tasks, what is forgotten, how.

    `preset` names a pairing of `unlearn.transfer.TRANSFER_PRESETS` ("within": digits 0-4 -> 5-9
    of the prepared data set, forgetting 0 and 1; "cifar100_to_cifar10": from data.root); the
    data set and class fields left null take the preset's. `source`/`target` name data sets of
    `unlearn.data.DATASETS` (for npz, `*_root` is the file); `recipe` the preset that trains the
    source model (null: the preset's, else data.preset). `epochs` shortens the source model's
    training and the Retrain reference; `settings` override the method's config; the probe and
    fine-tune epochs their recipes'.
    """

    preset: str = "within"
    source: str | None = None
    source_root: str | None = None
    target: str | None = None
    target_root: str | None = None
    recipe: str | None = None
    source_classes: list[int] | None = None
    target_classes: list[int] | None = None
    forget_classes: list[int] | None = None
    method: ApproximateMethodName = "l1_sparse"
    seed: int = 0
    epochs: int | None = Field(None, ge=1)
    settings: dict[str, Any] = Field(default_factory=dict)
    linear_probe_epochs: int | None = Field(None, ge=1)
    fine_tune_epochs: int | None = Field(None, ge=1)

    @field_validator("preset")
    @classmethod
    def _known_transfer_preset(cls, value: str) -> str:
        return _one_of(value, TRANSFER_PRESETS, "transfer preset")

    @field_validator("source", "target")
    @classmethod
    def _known_dataset(cls, value: str | None) -> str | None:
        return _one_of(value, DATASETS, "data set")

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str | None) -> str | None:
        return _one_of(value, PRESETS, "preset")

    @field_validator("method", mode="before")
    @classmethod
    def _approximate_method(cls, value: Any) -> Any:
        return _approximate(value, "transfer.method")

    @model_validator(mode="after")
    def _tasks_fit(self) -> TransferParams:
        spec = self.spec()
        for side in ("source", "target"):
            if getattr(spec, side) is None and getattr(self, f"{side}_root") is not None:
                raise ValueError(f"transfer.{side}_root is set but transfer.{side} (the data set) is not")
        try:
            TransferConfig(spec.source_classes, spec.target_classes, spec.forget_classes,
                           cross_dataset=spec.target is not None)  # fmt: skip
        except ConfigError as error:
            raise ValueError(f"transfer (preset {self.preset!r} with its overrides): {error}") from error
        return self

    def spec(self) -> TransferPreset:
        """The transfer preset with this group's data set, class and recipe overrides."""
        names = ("source", "target", "recipe", "source_classes", "target_classes", "forget_classes")
        overrides = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        classes = {name: tuple(value) for name, value in overrides.items() if name.endswith("_classes")}
        return replace(TRANSFER_PRESETS[self.preset], **{**overrides, **classes})


# What `unlearn tune` found: method -> preset -> scenario -> sparsity tag ("s0.95") -> settings.
Tuned = dict[str, dict[str, dict[str, dict[str, dict[str, Any]]]]]
TUNED_TAG = re.compile(r"s\d+(\.\d+)?")


class Params(Strict):
    """The whole of params.yaml."""

    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    prune: PruneParams = PruneParams()
    unlearn: UnlearnParams = UnlearnParams()
    evaluate: EvaluateParams = EvaluateParams()
    promote: GateParams = GateParams()
    deletion: DeletionParams = DeletionParams()
    audit: AuditParams = AuditParams()
    retention: RetentionParams = RetentionParams()
    calibrate: CalibrateParams = CalibrateParams()
    tracking: TrackingParams = TrackingParams()
    backdoor: BackdoorParams = BackdoorParams()
    transfer: TransferParams = TransferParams()
    compute: ComputeParams = ComputeParams()
    tuned: Tuned = Field(default_factory=dict)

    @model_validator(mode="after")
    def _settings_fit_methods(self) -> Params:
        for method in self.unlearn.settings:
            try:  # method_config reads unlearn.settings itself
                method_config(self, method)
            except (ConfigError, TypeError) as error:
                raise _keyed(f"unlearn.settings.{method}", error) from error
        return self

    @model_validator(mode="after")
    def _cleanse_settings_fit_methods(self) -> Params:
        for method, settings in self.backdoor.settings.items():
            try:  # as tasks.stages.backdoor.method_settings builds the cleanse config
                cleanse_config(method, self.data.preset, **{"seed": self.backdoor.seed, **settings})
            except (ConfigError, TypeError) as error:
                raise _keyed(f"backdoor.settings.{method}", error) from error
        return self

    @model_validator(mode="after")
    def _transfer_settings_fit_method(self) -> Params:
        group = self.transfer
        if "seed" in group.settings:
            raise ValueError("transfer.settings.seed: set transfer.seed, which seeds the whole transfer run")
        recipe = group.spec().recipe or self.data.preset  # tasks.stages.transfer.source_recipe's preset
        try:  # as tasks.stages.transfer.transfer_config builds the method's config
            default_config(group.method, recipe, seed=group.seed, **group.settings)
        except (ConfigError, TypeError) as error:
            raise _keyed("transfer.settings", error) from error
        return self

    @model_validator(mode="after")
    def _deletion_scenario_exists(self) -> Params:
        scenario = self.deletion.tuned_scenario
        tuned = {name for by_preset in self.tuned.values() for by_name in by_preset.values() for name in by_name}
        known = set(self.split.scenarios) | tuned
        if scenario is not None and scenario not in known:
            raise ValueError(
                f"deletion.tuned_scenario: {scenario!r} is neither a scenario of split.scenarios nor one with "
                f"tuned values ({', '.join(sorted(known))})"
            )
        return self

    @model_validator(mode="after")
    def _calibrate_scenario_exists(self) -> Params:
        scenario = self.calibrate.scenario
        if scenario is not None and scenario not in self.split.scenarios:
            known = ", ".join(self.split.scenarios)
            raise ValueError(f"calibrate.scenario: {scenario!r} is no scenario of split.scenarios ({known})")
        return self

    @model_validator(mode="after")
    def _tuned_fit_methods(self) -> Params:
        for method, by_preset in self.tuned.items():
            if method not in APPROXIMATE_METHODS:
                raise ValueError(f"tuned.{method}: not a tunable unlearning method ({', '.join(APPROXIMATE_METHODS)})")
            for preset, by_scenario in by_preset.items():
                for scenario, by_sparsity in by_scenario.items():
                    for tag, values in by_sparsity.items():
                        where = f"tuned.{method}.{preset}.{scenario}.{tag}"
                        # keyed by data set: a preset's, or own data's name (checked with this recipe)
                        recipe = preset if preset in PRESETS or preset != self.data.dataset else self.data.preset
                        _check_tuned(where, method, recipe, tag, values)
                        if preset == self.data.dataset:  # what runs: with unlearn.settings on top
                            try:
                                method_config(self, method, scenario=scenario, sparsity=float(tag[1:]))
                            except (ConfigError, TypeError) as error:
                                raise ValueError(f"{where} with unlearn.settings.{method}: {error}") from error
        return self


def _keyed(key: str, error: Exception) -> ValueError:
    """`error` as a message naming `key`: a setting's full key where the error names one."""
    if isinstance(error, SettingError):
        return ValueError(error.under(key))
    return ValueError(f"{key}: {error}")


def _check_tuned(where: str, method: str, preset: str, tag: str, values: dict[str, Any]) -> None:
    if preset not in PRESETS or not TUNED_TAG.fullmatch(tag):
        raise ValueError(f"{where}: expected tuned.<method>.<data set>.<scenario>.s<sparsity>, e.g. s0.95")
    try:
        default_config(method, preset, **values)
    except (ConfigError, TypeError) as error:
        raise _keyed(where, error) from error


def original_recipe(params: Params) -> TrainConfig:
    """The preset's training recipe with the train group's overrides (original and Retrain use it)."""
    overrides = {k: v for k, v in params.train.model_dump(exclude={"seeds"}).items() if v is not None}
    return replace(PRESETS[params.data.preset].train, **overrides)


def tuned_settings(params: Params, method: str, scenario: str | None, sparsity: float | None) -> dict:
    """What `unlearn tune` wrote for `method` on this data set, scenario and sparsity ({} if nothing).

    Keyed by the data set (`data.dataset`: a preset's own, e.g. digits, or own data's name), never by
    the recipe: values found on digits do not carry to other data trained with digits' recipe.
    """
    if scenario is None or sparsity is None:
        return {}
    by_scenario = params.tuned.get(method, {}).get(params.data.dataset, {}).get(scenario, {})
    return dict(by_scenario.get(sparsity_tag(sparsity), {}))


def method_config(
    params: Params,
    method: str,
    *,
    scenario: str | None = None,
    sparsity: float | None = None,
    calibrated: Mapping[str, Any] | None = None,
    **extra,
):
    """The typed config of `method`: preset defaults < tuned (scenario, sparsity) < `calibrated` < settings < `extra`.

    `calibrated`: values a calibration found on this data set (the study's `calibrate` stage, the
    champion's registry version); what the user states in `unlearn.settings` still wins over them.
    """
    tuned = tuned_settings(params, method, scenario, sparsity)
    settings = {**tuned, **(calibrated or {}), **params.unlearn.settings.get(method, {}), **extra}
    if method == "retrain":  # Retrain repeats the original's recipe; settings may change parts of it
        train = settings.get("train", {})
        if isinstance(train, Mapping):  # else default_config says what `train` must be
            settings["train"] = replace_checked(original_recipe(params), train, method, "train")
    return default_config(method, params.data.preset, **settings)


def _location(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"]) or "params"


def _problem(error: dict) -> str:
    """pydantic's message, with the offending value where it is a plain one (`..., got 'fast'`)."""
    value = error.get("input")
    plain = value is None or isinstance(value, str | int | float | bool)
    if error["type"] in ("value_error", "missing", "extra_forbidden") or not plain:
        return error["msg"]
    return f"{error['msg']}, got {value!r}"


def parse_params(raw: dict | None, source: str = "params") -> Params:
    """Validate a params mapping; errors name each offending key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as error:
        problems = "; ".join(f"{_location(e)}: {_problem(e)}" for e in error.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    return parse_params(raw, str(path))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params (pydantic models, dataclasses, dicts) as {"a.b.c": scalar} for MLflow."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    elif is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    if isinstance(value, list | tuple):
        return {prefix[:-1]: ",".join(str(v) for v in value)}
    return {prefix[:-1]: value}


def values_text(values: Mapping[str, Any]) -> str:
    """`lr 0.0015, epochs 5`: method settings as a table cell or a comment shows them."""
    return ", ".join(f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in values.items())  # fmt: skip
