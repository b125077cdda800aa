"""Data sets as tensors with stable sample ids, batched and augmented on the device.

Every training sample carries a string id (``digits/train/00123``) that deletion
requests name. Inputs are kept as uint8 (0..255) or float32 in [0, 1]; normalisation
happens inside the model, as in the paper.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from unlearn.errors import ConfigError, DatasetNotFoundError, UnknownDatasetError

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "npz")

# Per-channel statistics used by the paper's models.
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


@dataclass(frozen=True)
class TensorSet:
    """Inputs (N, C, H, W), integer labels (N,) and one string id per row."""

    inputs: Tensor
    labels: Tensor
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.inputs) == len(self.labels) == len(self.ids)):
            raise ConfigError(
                f"inputs ({len(self.inputs)}), labels ({len(self.labels)}) and ids "
                f"({len(self.ids)}) must have the same length"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | Tensor) -> TensorSet:
        """The rows at `indices`, in that order."""
        index = torch.as_tensor(indices, dtype=torch.long)
        index_list = index.tolist()
        return TensorSet(
            self.inputs[index.to(self.inputs.device)],
            self.labels[index.to(self.labels.device)],
            tuple(self.ids[i] for i in index_list),
        )

    def to(self, device: torch.device | str) -> TensorSet:
        """The same rows with inputs and labels on `device`."""
        return TensorSet(self.inputs.to(device), self.labels.to(device), self.ids)

    def with_labels(self, labels: Tensor) -> TensorSet:
        """The same inputs and ids with other labels (random labelling, poisoning)."""
        return TensorSet(self.inputs, labels.to(self.labels.device), self.ids)


@dataclass(frozen=True)
class DataBundle:
    """A data set split into train (and optional validation) and test sets."""

    name: str
    train: TensorSet
    test: TensorSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False
    val: TensorSet | None = None
    extra: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one sample."""
        return tuple(self.train.inputs.shape[1:])  # type: ignore[return-value]

    def save(self, path: str | Path) -> Path:
        """Write the bundle (tensors, ids, metadata) to one .npz file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for part in ("train", "test", "val"):
            data = getattr(self, part)
            if data is None:
                continue
            arrays[f"{part}_inputs"] = data.inputs.cpu().numpy()
            arrays[f"{part}_labels"] = data.labels.cpu().numpy()
            arrays[f"{part}_ids"] = np.array(data.ids, dtype=np.str_)
        meta = {
            "name": self.name,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
            "augment": self.augment,
            "extra": self.extra,
        }
        arrays["meta"] = np.array(json.dumps(meta))
        with path.open("wb") as handle:
            np.savez(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DataBundle:
        """Read a bundle written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise DatasetNotFoundError(f"no prepared data set at {path}: run the prepare stage")
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            parts = {part: _tensor_set(arrays, part) for part in ("train", "test", "val") if f"{part}_labels" in arrays}
        return cls(
            name=meta["name"],
            num_classes=int(meta["num_classes"]),
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
            augment=bool(meta["augment"]),
            extra=meta.get("extra", {}),
            **parts,
        )


def _tensor_set(arrays, part: str) -> TensorSet:
    return TensorSet(
        torch.from_numpy(arrays[f"{part}_inputs"].copy()),
        torch.from_numpy(arrays[f"{part}_labels"].astype(np.int64)),
        tuple(str(i) for i in arrays[f"{part}_ids"]),
    )


def load_dataset(
    name: str,
    root: str | Path = "data/external",
    *,
    seed: int = 0,
    download: bool = False,
) -> DataBundle:
    """Build a data set by name.

    Args:
        name: one of `DATASETS`.
        root: torchvision's data folder; for `npz`, the .npz file itself.
        seed: seeds the train/test split (digits, npz) or the 10% validation holdout.
        download: let torchvision download a missing data set into `root`.
    """
    if name == "digits":
        return _digits(seed)
    if name in ("cifar10", "cifar100", "svhn"):
        return _torchvision(name, Path(root), seed, download)
    if name == "npz":
        return _npz(Path(root), seed)
    raise UnknownDatasetError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out): `fraction` of each class held out, seeded."""
    rng = np.random.RandomState(seed)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(len(members) * fraction))
        held.append(rng.choice(members, count, replace=False))
    held_out = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out


def _holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of scikit-learn's stratified, seeded split, each sorted."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def _ids(prefix: str, indices: np.ndarray) -> tuple[str, ...]:
    return tuple(f"{prefix}/{int(i):05d}" for i in indices)


def _digits(seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = digits.target.astype(np.int64)
    train_index, test_index = _holdout(labels, 0.2, seed)
    train = TensorSet(
        images[train_index], torch.from_numpy(labels[train_index]), _ids("digits/train", np.arange(len(train_index)))
    )
    test = TensorSet(
        images[test_index], torch.from_numpy(labels[test_index]), _ids("digits/test", np.arange(len(test_index)))
    )
    mean = float(train.inputs.mean())
    std = float(train.inputs.std())
    return DataBundle(
        "digits",
        train,
        test,
        10,
        (mean,),
        (std,),
        augment=False,
        extra={"seed": seed, "source_index": train_index.tolist()},
    )


def _torchvision(name: str, root: Path, seed: int, download: bool) -> DataBundle:
    import torchvision

    try:
        if name == "svhn":
            train_raw = torchvision.datasets.SVHN(root, split="train", download=download)
            test_raw = torchvision.datasets.SVHN(root, split="test", download=download)
            train_x, train_y = train_raw.data, np.asarray(train_raw.labels)
            test_x, test_y = test_raw.data, np.asarray(test_raw.labels)
        else:
            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            train_raw = cls(root, train=True, download=download)
            test_raw = cls(root, train=False, download=download)
            train_x, train_y = train_raw.data.transpose(0, 3, 1, 2), np.asarray(train_raw.targets)
            test_x, test_y = test_raw.data.transpose(0, 3, 1, 2), np.asarray(test_raw.targets)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFoundError(
            f"{name} is not under {root}: place it there or pass download=True "
            f"(`--download` on the command line). torchvision said: {error}"
        ) from error
    kept, held_out = _stratified_split(train_y, 0.1, seed)
    full_x = torch.from_numpy(np.ascontiguousarray(train_x))
    full_y = torch.from_numpy(train_y.astype(np.int64))

    def part(index: np.ndarray) -> TensorSet:
        return TensorSet(full_x[index], full_y[index], _ids(f"{name}/train", index))

    test = TensorSet(
        torch.from_numpy(np.ascontiguousarray(test_x)),
        torch.from_numpy(test_y.astype(np.int64)),
        _ids(f"{name}/test", np.arange(len(test_y))),
    )
    mean, std = _STATS[name]
    classes = 100 if name == "cifar100" else 10
    return DataBundle(
        name, part(kept), test, classes, mean, std, augment=name != "svhn", val=part(held_out), extra={"seed": seed}
    )


def _as_nchw(inputs: np.ndarray, path: Path) -> np.ndarray:
    if inputs.ndim == 3:
        return inputs[:, None]
    if inputs.ndim != 4:
        raise ConfigError(f"{path}: `x` must have shape (N, H, W), (N, C, H, W) or (N, H, W, C)")
    if inputs.shape[1] not in (1, 3) and inputs.shape[-1] in (1, 3):
        return inputs.transpose(0, 3, 1, 2)
    return inputs


def _npz(path: Path, seed: int) -> DataBundle:
    if not path.is_file():
        raise DatasetNotFoundError(f"npz data set {path} does not exist")
    with np.load(path, allow_pickle=False) as arrays:
        missing = {"x", "y"} - set(arrays.files)
        if missing:
            raise ConfigError(f"{path}: missing array(s) {sorted(missing)}; need `x` and `y`")
        inputs = _as_nchw(arrays["x"], path)
        labels = arrays["y"].astype(np.int64)
        ids = arrays["ids"].astype(str) if "ids" in arrays.files else None
    if inputs.dtype != np.uint8:
        inputs = inputs.astype(np.float32)
        if inputs.min() < 0 or inputs.max() > 1:
            raise ConfigError(f"{path}: float inputs must lie in [0, 1] (or pass uint8 0..255)")
    if ids is None:
        ids = np.array([f"{path.stem}/{i:05d}" for i in range(len(labels))])
    if len(set(ids.tolist())) != len(ids):
        raise ConfigError(f"{path}: `ids` are not unique")
    train_index, test_index = _holdout(labels, 0.2, seed)
    tensor = torch.from_numpy(np.ascontiguousarray(inputs))

    def part(index: np.ndarray) -> TensorSet:
        return TensorSet(tensor[index], torch.from_numpy(labels[index]), tuple(ids[index].tolist()))

    train = part(train_index)
    scaled = as_float(train.inputs)
    dims = (0, 2, 3)
    return DataBundle(
        path.stem,
        train,
        part(test_index),
        int(labels.max()) + 1,
        tuple(scaled.mean(dims).tolist()),
        tuple(scaled.std(dims).tolist()),
        extra={"seed": seed, "source": str(path)},
    )


def as_float(inputs: Tensor) -> Tensor:
    """Inputs as float32 in [0, 1], whatever their stored dtype."""
    if inputs.dtype == torch.uint8:
        return inputs.float().div_(255.0)
    return inputs.float()


def random_crop_flip(inputs: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Random crop with zero padding and random horizontal flip, batched on the inputs' device."""
    batch, _, height, width = inputs.shape
    device = inputs.device
    padded = torch.nn.functional.pad(inputs, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), device=device, generator=generator)
    rows = offsets[0, :, None] + torch.arange(height, device=device)
    cols = offsets[1, :, None] + torch.arange(width, device=device)
    batch_index = torch.arange(batch, device=device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    cropped = cropped.permute(0, 3, 1, 2)
    flip = torch.rand(batch, device=device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def batches(
    data: TensorSet,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Float input and label batches of `data`, taken on the device the data lives on."""
    count = len(data)
    order = torch.randperm(count, generator=generator).to(data.labels.device) if shuffle else None
    for start in range(0, count, batch_size):
        chunk = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
        yield as_float(data.inputs[chunk]), data.labels[chunk]
