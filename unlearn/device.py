"""Device choice, made once and passed down; timing of device work."""

from __future__ import annotations

import time

import torch

from unlearn.errors import ConfigError


def pick_device(preference: str = "auto") -> torch.device:
    """`cuda` when present (or asked for), else `cpu`."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {preference!r} was asked for but CUDA is not available")
    try:
        return torch.device(preference)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {preference!r}: {error}") from error


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall times measure the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Times a block of device work (RTE): queued GPU work is waited for at both ends.

    with Stopwatch(device) as clock:
        ...
    clock.seconds
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        sync(self.device)
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._started
