"""Search spaces as plain data: the ranges `unlearn tune` searches, declared by each method module.

A method's `SPEC` (`unlearn.methods.spec.MethodSpec`) holds its search space, `{setting: range}`,
and per preset the ranges that differ (`None` drops a setting from that preset's search).
`tasks/production/tune.py` turns each range into an Optuna distribution (`tasks.production.tune.distribution`); the
core never imports Optuna. The order of a space's settings is the order Optuna samples them in,
and a seeded TPE sampler's draws depend on it: reordering a space changes what a search finds.

Per preset: digits (131k parameters, 8x8 inputs) needs larger values than CIFAR's ResNet-18. Its
ranges only widen the paper's, except l1-sparse's gamma, which moves up (see l1_sparse.py).
"""

from __future__ import annotations

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


Range = LogUniform | Uniform | IntRange
SearchSpace = dict[str, Range]  # setting -> range, in sampling order
PresetSearchSpaces = dict[str, dict[str, Range | None]]  # preset -> setting -> range (None: not searched)


def contains(searched: Range, value: object) -> bool:
    """Whether `value` is a point of `searched` (an integer range takes integers only)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(searched, IntRange) and not isinstance(value, int):
        return False
    return searched.low <= value <= searched.high


EPOCHS = IntRange(1, 10)  # the paper's 10 epochs at most; fewer fit a tight cost budget
# FT's lr range in the paper; RL, SalUn and l1-sparse search it too.
FT_LR = LogUniform(1e-3, 1e-1)
