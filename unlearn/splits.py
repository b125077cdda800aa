"""Retain / forget / test manifests: which samples a model may learn from and which it must forget.

A manifest lists (sample id, index, label) rows; `index` points into the training set
(retain, forget) or the test set (test). A split's digest names its content exactly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unlearn.data import DataBundle, TensorSet
from unlearn.errors import ConfigError, DuplicateSampleIdError, UnknownSampleIdError, preview

SCENARIOS = ("class_wise", "random", "ids")
MANIFEST_COLUMNS = ("sample_id", "index", "label")


@dataclass(frozen=True)
class Manifest:
    """Rows of (sample id, index into its source set, label)."""

    sample_ids: tuple[str, ...]
    indices: tuple[int, ...]
    labels: tuple[int, ...]

    @classmethod
    def of(cls, data: TensorSet, indices: Iterable[int]) -> Manifest:
        """The manifest of `data`'s rows at `indices`."""
        indices = tuple(int(i) for i in indices)
        labels = data.labels.cpu().numpy()
        return cls(tuple(data.ids[i] for i in indices), indices, tuple(int(labels[i]) for i in indices))

    def __len__(self) -> int:
        return len(self.indices)

    def to_csv(self) -> str:
        """The manifest as CSV text with a header row."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(zip(self.sample_ids, self.indices, self.labels, strict=True))
        return buffer.getvalue()

    @classmethod
    def from_csv(cls, text: str, source: str = "manifest") -> Manifest:
        """Parse CSV written by `to_csv`."""
        reader = csv.reader(io.StringIO(text))
        header = tuple(next(reader, ()))
        if header != MANIFEST_COLUMNS:
            raise ConfigError(f"{source}: header {header} is not {MANIFEST_COLUMNS}")
        rows = list(reader)
        try:
            return cls(tuple(r[0] for r in rows), tuple(int(r[1]) for r in rows), tuple(int(r[2]) for r in rows))
        except (IndexError, ValueError) as error:
            raise ConfigError(f"{source}: malformed row ({error})") from error

    def digest(self) -> str:
        """sha256 of the manifest's CSV text."""
        return hashlib.sha256(self.to_csv().encode()).hexdigest()


@dataclass(frozen=True)
class Split:
    """A forgetting scenario made concrete: retain (Dr), forget (Df) and test manifests."""

    scenario: str
    retain: Manifest
    forget: Manifest
    test: Manifest
    forgotten_classes: tuple[int, ...] = ()

    def digest(self) -> str:
        """sha256 over the three manifests' digests and the scenario."""
        parts = [self.scenario, self.retain.digest(), self.forget.digest(), self.test.digest()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def digests(self) -> dict[str, str]:
        """Digest of each manifest and of the whole split."""
        return {
            "retain": self.retain.digest(),
            "forget": self.forget.digest(),
            "test": self.test.digest(),
            "split": self.digest(),
        }

    def retain_set(self, bundle: DataBundle) -> TensorSet:
        """The retain rows of the training set (Dr)."""
        return bundle.train.subset(list(self.retain.indices))

    def forget_set(self, bundle: DataBundle) -> TensorSet:
        """The forget rows of the training set (Df)."""
        return bundle.train.subset(list(self.forget.indices))

    def test_set(self, bundle: DataBundle) -> TensorSet:
        """The test rows (without the forgotten classes in class-wise forgetting)."""
        return bundle.test.subset(list(self.test.indices))

    def save(self, folder: str | Path) -> Path:
        """Write retain.csv, forget.csv, test.csv and split.json into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for part in ("retain", "forget", "test"):
            (folder / f"{part}.csv").write_text(getattr(self, part).to_csv())
        info = {
            "scenario": self.scenario,
            "forgotten_classes": list(self.forgotten_classes),
            "sizes": {p: len(getattr(self, p)) for p in ("retain", "forget", "test")},
            "digests": self.digests(),
        }
        (folder / "split.json").write_text(json.dumps(info, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Split:
        """Read a split written by `save`."""
        folder = Path(folder)
        info_path = folder / "split.json"
        if not info_path.is_file():
            raise ConfigError(f"no split at {folder} (split.json missing): run the split stage")
        info = json.loads(info_path.read_text())
        parts = {
            p: Manifest.from_csv((folder / f"{p}.csv").read_text(), str(folder / f"{p}.csv"))
            for p in ("retain", "forget", "test")
        }
        return cls(info["scenario"], forgotten_classes=tuple(info["forgotten_classes"]), **parts)


def _split_from_forget(
    bundle: DataBundle, scenario: str, forget_index: Sequence[int], dropped_classes: Sequence[int] = ()
) -> Split:
    forget_index = sorted(int(i) for i in forget_index)
    retain_index = np.setdiff1d(np.arange(len(bundle.train)), forget_index)
    test_labels = bundle.test.labels.cpu().numpy()
    test_index = np.flatnonzero(~np.isin(test_labels, list(dropped_classes)))
    return Split(
        scenario,
        Manifest.of(bundle.train, retain_index),
        Manifest.of(bundle.train, forget_index),
        Manifest.of(bundle.test, test_index),
        tuple(sorted(dropped_classes)),
    )


def class_wise(bundle: DataBundle, classes: Sequence[int]) -> Split:
    """Forget every training sample of `classes`; the test set drops them too."""
    classes = sorted(set(int(c) for c in classes))
    if not classes:
        raise ConfigError("class-wise forgetting needs at least one class")
    bad = [c for c in classes if not 0 <= c < bundle.num_classes]
    if bad:
        raise ConfigError(f"classes {bad} are outside 0..{bundle.num_classes - 1}")
    labels = bundle.train.labels.cpu().numpy()
    return _split_from_forget(bundle, "class_wise", np.flatnonzero(np.isin(labels, classes)), classes)


def random_fraction(bundle: DataBundle, fraction: float = 0.1, seed: int = 0) -> Split:
    """Forget a seeded, uniformly drawn `fraction` of the training set; test unchanged."""
    if not 0 < fraction < 1:
        raise ConfigError(f"random forgetting fraction must lie in (0, 1), got {fraction}")
    count = int(round(len(bundle.train) * fraction))
    chosen = np.random.RandomState(seed).choice(len(bundle.train), count, replace=False)
    return _split_from_forget(bundle, "random", chosen)


def scenario_split(
    bundle: DataBundle, kind: str, classes: Sequence[int] = (), fraction: float = 0.1, seed: int = 0
) -> Split:
    """The split of a forgetting scenario: `class_wise` (of `classes`) or `random` (`fraction`, `seed`)."""
    if kind == "class_wise":
        return class_wise(bundle, classes)
    if kind == "random":
        return random_fraction(bundle, fraction, seed)
    raise ConfigError(f"unknown forgetting scenario kind {kind!r}; known: class_wise, random")


def resolve_ids(data: TensorSet, sample_ids: Iterable[str]) -> list[int]:
    """Row indices of `sample_ids` in `data`; unknown or repeated ids are an error naming them."""
    sample_ids = list(sample_ids)
    repeated = sorted(i for i, n in Counter(sample_ids).items() if n > 1)
    if repeated:
        raise DuplicateSampleIdError(f"sample ids named more than once: {preview(repeated)}")
    position = {sample_id: row for row, sample_id in enumerate(data.ids)}
    unknown = [i for i in sample_ids if i not in position]
    if unknown:
        raise UnknownSampleIdError(f"unknown sample ids: {preview(unknown)}")
    return [position[i] for i in sample_ids]


def by_ids(bundle: DataBundle, sample_ids: Iterable[str]) -> Split:
    """Forget exactly the named training samples; test unchanged."""
    rows = resolve_ids(bundle.train, sample_ids)
    if not rows:
        raise ConfigError("forgetting by ids needs at least one sample id")
    return _split_from_forget(bundle, "ids", rows)
