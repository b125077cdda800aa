"""Shared fixtures: the embedded digits data set, the CPU device, telemetry off."""

import os

import pytest
import torch

for key, value in {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(key, value)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as a DataBundle (seed 0)."""
    from unlearn.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def cpu():
    return torch.device("cpu")


@pytest.fixture(scope="session")
def digits_original(digits, cpu):
    """The digits preset's original model, trained once per test session (~10 s)."""
    from unlearn.original import train_original
    from unlearn.presets import get_preset

    model, _ = train_original(get_preset("digits"), digits, digits.train, cpu, seed=0)
    return model.eval()
