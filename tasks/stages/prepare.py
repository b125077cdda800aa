"""Stage `prepare`: export the data set, with its sample ids, to data/raw/."""

from __future__ import annotations

from pathlib import Path

from tasks.adapters import layout
from tasks.adapters.params import Params
from tasks.adapters.workspace import preset
from tasks.stages.entry import stage_main
from unlearn.data import load_dataset


def prepare(params: Params) -> Path:
    """Load the preset's data set (split seeded once) and write it to `layout.RAW`."""
    bundle = load_dataset(
        preset(params).dataset, params.data.root, seed=params.data.seed, download=params.data.download
    )
    return bundle.save(layout.RAW)


if __name__ == "__main__":
    stage_main(__doc__, prepare)
