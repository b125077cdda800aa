"""Where each stage reads and writes: the one place that knows the project's file layout."""

from __future__ import annotations

from pathlib import Path

# The one experiment configuration: DVC params, stage and flow parameters (loaded by tasks/adapters/params.py).
PARAMS_FILE = Path("params.yaml")
RAW = Path("data/raw/dataset.npz")
# The user's own data sets (`data.path` under it): the prepare stage's DVC dependency, so `dvc repro`
# re-prepares when a file here changes. Its placeholder keeps it in every checkout.
OWN_DATA = Path("data/own")
SPLITS = Path("data/splits")
MODELS = Path("models")
CHAMPION_MODELS = MODELS / "champion"
METRICS = Path("metrics")
REPORTS = Path("reports")
# UA and MIA-efficacy against sparsity, one CSV per scenario and method: dvc.yaml's top-level plots.
PLOTS = METRICS / "plots"
# The study's tables (tasks/stages/report.py) and its figures, one per scenario.
STUDY_REPORT = REPORTS / "study.md"
FIGURES = REPORTS / "figures"
# What `unlearn tune` found, per search: the defaults' and the tuned values' gap (git-tracked, beside
# params.yaml's `tuned` section; the study report shows it).
TUNING_RECORD = REPORTS / "tuning.json"
# The study's calibration (stage `calibrate`): per scenario, method and sparsity, the values the
# unlearn stage runs with where the data set has no tuned values, or why there are none.
CALIBRATION_RECORD = METRICS / "calibration.json"


def sparsity_tag(sparsity: float) -> str:
    """`s0.0` (dense), `s0.95`: the sparsity as dvc.yaml's matrix renders it into paths."""
    return f"s{float(sparsity)}"


def split_dir(scenario: str) -> Path:
    return SPLITS / scenario


# Originals live under `root`: `models/` for the study, `models/champion/` for the production
# champion (flows/train_original.py), so one never overwrites the other's DVC outputs.


def original_dir(root: Path = MODELS) -> Path:
    return Path(root) / "original"


def original_path(seed: int, root: Path = MODELS) -> Path:
    return original_dir(root) / f"seed{seed}.pt"


def rewind_path(seed: int, root: Path = MODELS) -> Path:
    """The weights at the rewind epoch of the original's training (OMP / IMP rewind to them)."""
    return original_dir(root) / f"seed{seed}.rewind.pt"


def pruned_root(root: Path = MODELS) -> Path:
    """Every sparsity's pruned models (what retrain and unlearn read)."""
    return Path(root) / "pruned"


def pruned_dir(sparsity: float, root: Path = MODELS) -> Path:
    return pruned_root(root) / sparsity_tag(sparsity)


def pruned_path(sparsity: float, seed: int, root: Path = MODELS) -> Path:
    return pruned_dir(sparsity, root) / f"seed{seed}.pt"


def unlearned_method_dir(scenario: str, method: str) -> Path:
    """One method's models in one scenario, every sparsity: what its unlearn stage writes."""
    return MODELS / "unlearn" / scenario / method


def unlearned_dir(scenario: str, method: str, sparsity: float) -> Path:
    """Retrain's models live here too, under method `retrain`."""
    return unlearned_method_dir(scenario, method) / sparsity_tag(sparsity)


def unlearned_path(scenario: str, method: str, sparsity: float, seed: int) -> Path:
    return unlearned_dir(scenario, method, sparsity) / f"seed{seed}.pt"


def metrics_path(scenario: str, method: str) -> Path:
    return METRICS / scenario / f"{method}.json"


def plot_path(scenario: str, method: str) -> Path:
    """UA and MIA-efficacy against sparsity: dvc.yaml's top-level plots read metrics/plots/."""
    return PLOTS / scenario / f"{method}.csv"


# The headline metrics, one flat file per scenario, method and sparsity: what dvc.yaml declares as
# DVC metrics, so `dvc metrics show` is one table (a row per file, a column per metric).
SUMMARY = METRICS / "summary"


def summary_dir(scenario: str, method: str) -> Path:
    """One method's summary files in one scenario, every sparsity: what its evaluate stage writes."""
    return SUMMARY / scenario / method


def summary_path(scenario: str, method: str, sparsity: float) -> Path:
    return summary_dir(scenario, method) / f"{sparsity_tag(sparsity)}.json"


def validation_report(scenario: str) -> Path:
    return REPORTS / "validation" / f"{scenario}.json"


# The study's Great Expectations context (tasks/adapters/expectations.py): each scenario's suites,
# stored as expectations/<scenario>/<part>.json (git-tracked), their results and the Data Docs site
# built from them (uncommitted/, git-ignored). Open DATA_DOCS_INDEX in a browser.
GX_CONTEXT = Path("gx")
DATA_DOCS = GX_CONTEXT / "uncommitted" / "data_docs" / "local_site"
DATA_DOCS_INDEX = DATA_DOCS / "index.html"
# Each deletion batch's own context, laid out as the study's: GX_BATCHES/<batch id>/ (git-ignored; its
# Data Docs are for the batch's MLflow run).
GX_BATCHES = GX_CONTEXT / "batches"


def batch_split_dir(batch_id: str) -> Path:
    """A deletion batch's manifests (retain excludes every deletion so far)."""
    return SPLITS / "batches" / batch_id


def batch_validation_report(batch_id: str) -> Path:
    return REPORTS / "validation" / "batches" / f"{batch_id}.json"


def batch_model_path(batch_id: str) -> Path:
    """The candidate a deletion batch unlearned."""
    return MODELS / "batches" / batch_id / "candidate.pt"


def batch_audit_dir(batch_id: str) -> Path:
    """A deletion batch's audit and review: per-sample table, report, plot (logged to the registry too)."""
    return REPORTS / "batches" / batch_id


# The membership audit's reference pools (tasks/adapters/audit_pool.py), one folder each, DVC-versioned.
AUDIT_POOLS = MODELS / "audit"


# The Trojan-model cleanse (tasks/stages/backdoor.py, dvc stages backdoor_*).
BACKDOOR_MODELS = MODELS / "backdoor"
BACKDOOR_DENSE = BACKDOOR_MODELS / "dense.pt"
# The dense Trojan model's weights at the rewind epoch (OMP rewinds to them).
BACKDOOR_REWIND = BACKDOOR_MODELS / "dense.rewind.pt"
BACKDOOR_METRICS = METRICS / "backdoor"  # one file per cleanse (method, sparsity)
BACKDOOR_SUMMARY = METRICS / "backdoor.json"  # all of them, by method and sparsity: the DVC metric
BACKDOOR_REPORT = REPORTS / "backdoor.md"
BACKDOOR_FIGURES = REPORTS / "backdoor"


def trojan_dir() -> Path:
    """The Trojan model at every sparsity (backdoor_prune)."""
    return BACKDOOR_MODELS / "trojan"


def trojan_path(sparsity: float) -> Path:
    return trojan_dir() / f"{sparsity_tag(sparsity)}.pt"


def cleansed_dir(method: str) -> Path:
    """What backdoor_cleanse with `method` made of each Trojan model."""
    return BACKDOOR_MODELS / "cleansed" / method


def cleansed_path(method: str, sparsity: float) -> Path:
    return cleansed_dir(method) / f"{sparsity_tag(sparsity)}.pt"


def backdoor_metrics_dir(method: str) -> Path:
    return BACKDOOR_METRICS / method


def backdoor_metrics_path(method: str, sparsity: float) -> Path:
    return backdoor_metrics_dir(method) / f"{sparsity_tag(sparsity)}.json"


# Transfer after unlearning (tasks/stages/transfer.py, dvc stage transfer).
TRANSFER_METRICS = METRICS / "transfer.json"
TRANSFER_REPORT = REPORTS / "transfer.md"
