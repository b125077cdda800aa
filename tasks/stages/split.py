"""Stage `split`: write one scenario's retain / forget / test manifests to data/splits/<scenario>/."""

from __future__ import annotations

from tasks.adapters import layout
from tasks.adapters.params import Params
from tasks.adapters.workspace import bundle
from tasks.stages.entry import stage_main
from unlearn.errors import ConfigError
from unlearn.splits import Split, scenario_split


def make_split(params: Params, scenario: str) -> Split:
    """The split a named scenario of params.yaml describes, saved under data/splits/."""
    try:
        definition = params.split.scenarios[scenario]
    except KeyError:
        known = ", ".join(params.split.scenarios)
        raise ConfigError(f"split.scenarios has no scenario {scenario!r}; known: {known}") from None
    result = scenario_split(bundle(), definition.kind, definition.classes, definition.fraction, definition.seed)
    result.save(layout.split_dir(scenario))
    return result


if __name__ == "__main__":
    stage_main(__doc__, make_split, ("scenario", str))
