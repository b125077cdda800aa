"""Every unlearning method, by name: the one list the rest of the project reads.

Adding a method: its module (`unlearn/methods/<name>.py`, ending with its `SPEC`), and its
module in the import and the tuple below.
"""

from __future__ import annotations

from unlearn.errors import ConfigError
from unlearn.methods import ff, ft, ga, iu, l1_sparse, retrain, rl, salun
from unlearn.methods.spec import MethodSpec

# The study's order: Retrain (the reference) first, then the approximate methods.
METHODS: dict[str, MethodSpec] = {
    module.SPEC.name: module.SPEC
    for module in (
        retrain,
        ft,
        ga,
        rl,
        iu,
        ff,
        l1_sparse,
        salun,
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
# Every method but the exact reference (Retrain): what deletion, transfer and `unlearn tune` may use.
APPROXIMATE_METHODS: tuple[str, ...] = tuple(name for name, spec in METHODS.items() if spec.approximate)


def method_spec(name: str) -> MethodSpec:
    """The spec of method `name`; `ConfigError` naming the known ones if there is none."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown unlearning method {name!r}; known: {', '.join(METHOD_NAMES)}") from None
