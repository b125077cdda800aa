"""Search spaces as plain data: the ranges `unlearn tune` searches, declared by each method module.

A method's `SPEC` (`unlearn.methods.spec.MethodSpec`) holds its search space, `{setting: range}`,
and per preset the ranges that differ (`None` drops a setting from that preset's search).
`tasks/production/tune.py` turns each range into an Optuna distribution (`tasks.production.tune.distribution`); the
core never imports Optuna. The order of a space's settings is the order Optuna samples them in,
and a seeded TPE sampler's draws depend on it: reordering a space changes what a search finds.

Per preset: digits (131k parameters, 8x8 inputs) needs larger values than CIFAR's ResNet-18. Its
ranges only widen the paper's, except l1-sparse's gamma, which moves up (see l1_sparse.py).

Relative ranges (`Share`) carry across data sets: a learning rate searched as a share of the
original training's (`Share("lr", ...)`: 0.5 is half the recipe's lr) and a run length as a share
of the original training's SGD steps (`Share("steps", ...)` on the `epochs` setting: 0.05 is a
twentieth of the recipe's steps, turned into whole epochs at the method's batch size over the
retain set). A method's `SEARCH_SPACE` states lr and epochs this way; the values a search finds,
writes and records are always absolute settings (`resolve`). A preset's own ranges
(`PRESET_SEARCH_SPACES`) may stay absolute: they were found on that preset's data set, and a
calibration on other data (`tasks.production.tune.search_space(..., own_data=True)`) puts the
relative ranges back in their place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _check_bounds(searched: Range, kind: type | tuple[type, ...]) -> None:
    low, high = searched.low, searched.high
    if any(isinstance(value, bool) or not isinstance(value, kind) for value in (low, high)):
        raise TypeError(f"{searched!r}: bounds must be {getattr(kind, '__name__', 'numbers')}")
    if not low < high:
        raise ValueError(f"{searched!r}: low must be below high")


@dataclass(frozen=True)
class LogUniform:
    """A float in [low, high], searched on a log scale (0 < low < high)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _check_bounds(self, (int, float))
        if self.low <= 0:
            raise ValueError(f"{self!r}: a log-scale range needs low > 0")


@dataclass(frozen=True)
class Uniform:
    """A float in [low, high], searched on a linear scale."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _check_bounds(self, (int, float))


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high], both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        _check_bounds(self, int)


SHARE_OF = {"lr": "lr", "steps": "epochs"}  # what a share is of -> the setting it gives


@dataclass(frozen=True)
class Share:
    """A setting searched as a share of the original training's: its lr (`of="lr"`), or its SGD steps
    (`of="steps"`, for the `epochs` setting). `share` is the range of the share itself."""

    of: str
    share: LogUniform | Uniform

    def __post_init__(self) -> None:
        if self.of not in SHARE_OF:
            raise ValueError(f"{self!r}: a share is of {' or '.join(SHARE_OF)}")
        if not isinstance(self.share, LogUniform | Uniform) or self.share.low <= 0:
            raise ValueError(f"{self!r}: the share's range must be a positive LogUniform or Uniform")


@dataclass(frozen=True)
class Recipe:
    """What shares are of: the original training's lr and SGD steps, and the retain set's size.

    `steps` = its epochs x ceil(training samples / its batch size).
    """

    lr: float
    steps: int
    retain_size: int

    @classmethod
    def of(cls, lr: float, epochs: int, batch_size: int, train_size: int, retain_size: int) -> Recipe:
        return cls(float(lr), int(epochs) * math.ceil(train_size / batch_size), int(retain_size))

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, math.ceil(self.retain_size / batch_size))


def resolve(searched: Range, value, recipe: Recipe | None, batch_size: int):
    """The absolute setting a searched `value` stands for: itself, or the share of `recipe` it names."""
    if not isinstance(searched, Share):
        return value
    if recipe is None:
        raise ValueError(f"{searched!r} is a share of the original training: it needs its recipe")
    if searched.of == "lr":
        return float(f"{value * recipe.lr:.3g}")
    return max(1, round(value * recipe.steps / recipe.steps_per_epoch(batch_size)))


def share_of(searched: Range, setting, recipe: Recipe | None, batch_size: int):
    """The inverse of `resolve`: the share an absolute setting is (the defaults trial's point)."""
    if not isinstance(searched, Share):
        return setting
    if recipe is None:
        raise ValueError(f"{searched!r} is a share of the original training: it needs its recipe")
    if searched.of == "lr":
        return setting / recipe.lr
    return setting * recipe.steps_per_epoch(batch_size) / recipe.steps


Range = LogUniform | Uniform | IntRange | Share
SearchSpace = dict[str, Range]  # setting -> range, in sampling order
PresetSearchSpaces = dict[str, dict[str, Range | None]]  # preset -> setting -> range (None: not searched)


def contains(searched: Range, value: object) -> bool:
    """Whether `value` is a point of `searched` (an integer range takes integers only)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(searched, IntRange) and not isinstance(value, int):
        return False
    if isinstance(searched, Share):  # a share's point, as `share_of` gives it
        searched = searched.share
    return searched.low <= value <= searched.high


EPOCHS = IntRange(1, 10)  # the paper's 10 epochs at most; fewer fit a tight cost budget
# FT's lr range in the paper; RL, SalUn and l1-sparse search it too.
FT_LR = LogUniform(1e-3, 1e-1)
# The same as shares of the recipe, so they carry to any data set. lr: the paper's 1e-3..1e-1 is
# 0.01..1 of CIFAR's 0.1; digits' FT and l1-sparse forget at 4x its 0.05 (0.2), so up to 10x.
LR_SHARE = Share("lr", LogUniform(0.01, 10.0))
# Steps: the paper's 1-10 epochs of 182 (same batch) are 0.0055-0.055 of the recipe's steps; digits'
# one FT epoch at batch 32 is 0.17 of its 240. Up to 0.2: the cost budget, a fifth of Retrain.
STEPS_SHARE = Share("steps", LogUniform(0.005, 0.2))
# GA's lr range in the paper (1e-5..1e-1), as shares of CIFAR's 0.1.
GA_LR_SHARE = Share("lr", LogUniform(1e-4, 1.0))
