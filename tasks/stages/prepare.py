"""Stage `prepare`: export the data set, with its sample ids, to data/raw/.

The training samples a purge removed (`tasks.production.purge`) are left out, so no run of this
stage brings a deleted sample back: the purge record beside the deletion ledger
(`<ledger>.purge.json`) names the ledger batch through which every deleted sample's pixels are gone.

DVC watches the user's own data sets under `data/own/` (`layout.OWN_DATA`, a dependency of the
stage): a changed, added or removed file there re-prepares. A `data.path` elsewhere is read all
the same, with a warning that `dvc repro` will not notice its changes.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import replace
from pathlib import Path

from tasks.adapters import layout
from tasks.adapters.params import Params
from tasks.adapters.workspace import preset
from tasks.stages.entry import stage_main
from unlearn.data import DataBundle, load_dataset
from unlearn.data import load_source as own_data
from unlearn.errors import ConfigError

PURGE_RECORD_SUFFIX = ".purge.json"
log = logging.getLogger(__name__)


def purge_record_path(ledger: str | Path) -> Path:
    """The purge record of the ledger at `ledger`: `<ledger stem>.purge.json` beside it."""
    ledger = Path(ledger)
    return ledger.with_name(f"{ledger.stem}{PURGE_RECORD_SUFFIX}")


def purged_sample_ids(ledger: str | Path) -> set[str]:
    """The samples whose pixels a purge removed: the ledger's, through the batch its record names.

    None without a record. Read with the standard library (the ledger is a plain CSV file), so the
    stage imports no more of the project than it did.

    Raises:
        ConfigError: the record names a batch the ledger (or a missing ledger) lacks: `dvc pull` it.
    """
    record = purge_record_path(ledger)
    if not record.is_file():
        return set()
    through = json.loads(record.read_text()).get("through_batch")
    if not through:
        return set()
    ledger = Path(ledger)
    rows = []
    if ledger.is_file():
        with ledger.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    batches = list(dict.fromkeys(row["batch_id"] for row in rows))
    if through not in batches:
        raise ConfigError(
            f"{record} says the samples of ledger batch {through} and before were purged, but "
            f"{ledger} {'lacks that batch' if rows else 'is missing'}: restore the ledger (`dvc pull`) "
            "before preparing the data set, or deleted samples would come back"
        )
    purged = set(batches[: batches.index(through) + 1])
    return {row["sample_id"] for row in rows if row["batch_id"] in purged}


def without(bundle: DataBundle, sample_ids: set[str]) -> DataBundle:
    """The bundle without the training samples `sample_ids` (their rows, ids and labels)."""
    kept = [row for row, sample_id in enumerate(bundle.train.ids) if sample_id not in sample_ids]
    return bundle if len(kept) == len(bundle.train) else replace(bundle, train=bundle.train.subset(kept))


def load_source(params: Params) -> DataBundle:
    """The data set `data.source` names: the preset's, an npz file or an image folder (split seeded once).

    Its name is `params.data.dataset`, the name the registered model is looked up by.
    """
    data = params.data
    if data.source == "preset":
        return load_dataset(preset(params).dataset, data.root, seed=data.seed, download=data.download)
    if not watched(data.path):
        log.warning("data.path %s is outside %s/: dvc repro does not see its files change (move it there, or run "
                    "`dvc repro --force prepare` after changing them)", data.path, layout.OWN_DATA)  # fmt: skip
    return own_data(
        data.source,
        data.path,
        name=data.dataset,
        seed=data.seed,
        test_fraction=data.test_fraction,
        image_size=data.image_size,
        max_bytes=data.max_bytes,
    )


def watched(path: str | Path) -> bool:
    """Whether `path` lies under `layout.OWN_DATA`, the folder the prepare stage's DVC dependency watches."""
    try:
        Path(path).resolve().relative_to(layout.OWN_DATA.resolve())
    except ValueError:
        return False
    return True


def prepare(params: Params) -> Path:
    """Load the source's data set (split seeded once), leave out the purged samples, write it to `layout.RAW`."""
    return without(load_source(params), purged_sample_ids(params.deletion.ledger)).save(layout.RAW)


if __name__ == "__main__":
    stage_main(__doc__, prepare)
