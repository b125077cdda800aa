"""Where each stage reads and writes: the one place that knows the project's file layout."""

from __future__ import annotations

from pathlib import Path

RAW = Path("data/raw/dataset.npz")
SPLITS = Path("data/splits")
MODELS = Path("models")
CHAMPION_MODELS = MODELS / "champion"
METRICS = Path("metrics")
REPORTS = Path("reports")
# What `unlearn tune` found, per search: the defaults' and the tuned values' gap (git-tracked, beside
# params.yaml's `tuned` section; the study report shows it).
TUNING_RECORD = REPORTS / "tuning.json"


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


def pruned_dir(sparsity: float, root: Path = MODELS) -> Path:
    return Path(root) / "pruned" / sparsity_tag(sparsity)


def pruned_path(sparsity: float, seed: int, root: Path = MODELS) -> Path:
    return pruned_dir(sparsity, root) / f"seed{seed}.pt"


def unlearned_dir(scenario: str, method: str, sparsity: float) -> Path:
    """Retrain's models live here too, under method `retrain`."""
    return MODELS / "unlearn" / scenario / method / sparsity_tag(sparsity)


def unlearned_path(scenario: str, method: str, sparsity: float, seed: int) -> Path:
    return unlearned_dir(scenario, method, sparsity) / f"seed{seed}.pt"


def metrics_path(scenario: str, method: str) -> Path:
    return METRICS / scenario / f"{method}.json"


def plot_path(scenario: str, method: str) -> Path:
    """UA and MIA-efficacy against sparsity: dvc.yaml's top-level plots read metrics/plots/."""
    return METRICS / "plots" / scenario / f"{method}.csv"


def validation_report(scenario: str) -> Path:
    return REPORTS / "validation" / f"{scenario}.json"


def batch_split_dir(batch_id: str) -> Path:
    """A deletion batch's manifests (retain excludes every deletion so far)."""
    return SPLITS / "batches" / batch_id


def batch_validation_report(batch_id: str) -> Path:
    return REPORTS / "validation" / "batches" / f"{batch_id}.json"


def batch_model_path(batch_id: str) -> Path:
    """The candidate a deletion batch unlearned."""
    return MODELS / "batches" / batch_id / "candidate.pt"
