"""Checkpoints: state_dict, masks and metadata in one file that loads with weights_only=True."""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from unlearn.errors import CheckpointError
from unlearn.masks import Masks
from unlearn.models import Classifier, build_model

FORMAT = "unlearn-checkpoint/1"
# What `restore_model` needs to rebuild the network before loading weights.
REQUIRED_METADATA = ("arch", "dataset", "input_shape", "num_classes", "mean", "std")


@dataclass
class Checkpoint:
    """Weights, masks (parameter name -> 0/1 tensor) and JSON-like metadata."""

    state_dict: dict[str, Tensor]
    masks: Masks = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def model_metadata(arch: str, bundle, **extra) -> dict:
    """Metadata naming the architecture and the data set shape a model was built for."""
    return {
        "arch": arch,
        "dataset": bundle.name,
        "input_shape": list(bundle.input_shape),
        "num_classes": bundle.num_classes,
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        **extra,
    }


def save_checkpoint(path: str | Path, model: nn.Module, metadata: dict, masks: Masks | None = None) -> Path:
    """Write the model's weights, its masks and `metadata` (JSON-serialisable values only)."""
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {missing}")
    try:
        plain_metadata = json.loads(json.dumps(metadata))
    except TypeError as error:
        raise CheckpointError(f"checkpoint metadata must be JSON-serialisable: {error}") from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": {k: v.detach().cpu() for k, v in (masks or {}).items()},
        "metadata": plain_metadata,
    }
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)  # a reader never sees a half-written checkpoint
    return path


def load_checkpoint(path: str | Path, expect: dict | None = None) -> Checkpoint:
    """Read a checkpoint; raise `CheckpointError` if it is corrupt or its metadata differs from `expect`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not in format {FORMAT}")
    metadata = payload["metadata"]
    mismatched = {
        key: (metadata.get(key), value) for key, value in (expect or {}).items() if metadata.get(key) != value
    }
    if mismatched:
        details = "; ".join(
            f"{k}: checkpoint has {have!r}, expected {want!r}" for k, (have, want) in mismatched.items()
        )
        raise CheckpointError(f"checkpoint {path} does not match: {details}")
    return Checkpoint(payload["state_dict"], payload["masks"], metadata)


def restore_model(checkpoint: Checkpoint, **options) -> Classifier:
    """Rebuild the network a checkpoint describes and load its weights (on the CPU)."""
    meta = checkpoint.metadata
    model = build_model(
        meta["arch"],
        meta["input_shape"],
        meta["num_classes"],
        meta["mean"],
        meta["std"],
        **{**meta.get("model_options", {}), **options},
    )
    try:
        model.load_state_dict(checkpoint.state_dict)
    except RuntimeError as error:
        raise CheckpointError(f"weights do not fit architecture {meta['arch']!r}: {error}") from error
    return model
