"""A git + DVC project folder in which flows run as in a user's checkout, and a deletion batch step by step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.adapters import layout, registry
from tasks.adapters.requests import DeletionRequest, open_inbox
from tasks.adapters.workspace import bundle, load_model
from tasks.production import deletion
from tasks.production.promotion import review


def tool_env() -> dict[str, str]:
    """The environment with this venv's tools (dvc) first on PATH and DVC's analytics off."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


ROOT = Path(__file__).resolve().parents[1]


def shrunk_params() -> dict:
    """The project's params.yaml, shrunk: one seed, two epochs, a 50%-sparse champion, quick FT, a small pool."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(seeds=[0], epochs=2)
    params["unlearn"]["settings"]["ft"] = {"epochs": 1}
    params["deletion"].update(method="ft", sparsity=0.5, dvc_push=True)
    params["audit"].update(references=4, probe_size=50)  # 4 two-epoch references
    params["calibrate"]["enabled"] = False  # digits has no tuned values at 50%: calibration has its own tests
    return params


def synthetic_npz(path: Path, classes: int = 5, per_class: int = 60, seed: int = 0) -> Path:
    """An own data set as an npz: grey 8x8 images, each class a random binary pattern plus seeded noise, in [0, 1]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    patterns = rng.random((classes, 8, 8)) > 0.6
    x = np.clip(np.repeat(patterns, per_class, axis=0) * 0.8 + rng.normal(0, 0.35, (classes * per_class, 8, 8)), 0, 1)
    np.savez(path, x=x.astype(np.float32)[:, None], y=np.repeat(np.arange(classes), per_class))
    return path


def submit(params_path: str, request_id: str, sample_ids: list[str]) -> None:
    """Write a request into the inbox of the params file at `params_path`."""
    inbox = open_inbox(yaml.safe_load(Path(params_path).read_text())["deletion"]["inbox"])
    inbox.submit(DeletionRequest(request_id=request_id, sample_ids=sample_ids))


def enter_project(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make `folder` a git + DVC project with a local remote, its own MLflow store, the CPU; chdir into it."""
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    monkeypatch.setenv("UNLEARN_ARTIFACT_ROOT", str(folder / "mlartifacts"))
    monkeypatch.setenv("UNLEARN_DEVICE", "cpu")
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                    ["dvc", "remote", "add", "-d", "local", str(folder / "remote")]):  # fmt: skip
        subprocess.run(command, check=True, cwd=folder, env=tool_env())
    return folder


def batch_of(params, sample_ids: list[str], request_id: str):
    """Submit one request, open its batch, record it, write its split (the batch flow's first steps)."""
    data = bundle()
    deletion.inbox_of(params).submit(DeletionRequest(request_id=request_id, sample_ids=sample_ids))
    batch = deletion.open_batch(params, data)
    ledger = deletion.record(params, batch)
    return batch, ledger, deletion.write_split(params, batch, ledger, data)


def register_and_review(params, batch, ledger, split, candidate):
    """The batch flow's last steps for a given candidate: evaluate, audit, register, attach the review, finish."""
    metrics = deletion.evaluate_candidate(params, split, candidate)
    audited = deletion.audit_batch(params, batch, ledger, split, candidate)
    version = deletion.register_candidate(params, batch, ledger, split, candidate, metrics, None, {}, audited)
    deletion.attach_review(params, batch, version)
    deletion.finish(params, batch)
    found = review(version.version, name=version.name, gates=params.promote)
    print(f"\n{found.render()}")
    return found, audited


def champion_candidate(params, batch) -> deletion.Candidate:
    """The no-op: the champion's checkpoint, byte for byte, as the batch's candidate."""
    champion = deletion.champion_version(params)
    source = registry.verify_checkpoint(champion, registry.checkpoint_path(champion))
    path = layout.batch_model_path(batch.batch_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    model, checkpoint = load_model(path)
    return deletion.Candidate(path, 0.0, str(champion.version), "none", model, checkpoint.masks, Path(source))


def gate(found, name: str):
    (result,) = [g for g in found.gates if g.name == name]
    return result
