"""Device choice, made once and passed down."""

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
