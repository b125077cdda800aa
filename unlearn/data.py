"""Data sets as tensors with stable sample ids, batched and augmented on the device.

Every training sample carries a string id (``digits/train/00123``) that deletion
requests name. Inputs are kept as uint8 (0..255) or float32 in [0, 1]; normalisation
happens inside the model, as in the paper.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from unlearn.errors import (
    ConfigError,
    DatasetNotFoundError,
    DatasetTooLargeError,
    DataSourceError,
    UnknownDatasetError,
    preview,
)

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "npz")
SOURCES = ("preset", "npz", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_FOLDER = "test"
DEFAULT_MAX_BYTES = 4 * 1024**3
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")

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


def concatenate(first: TensorSet, second: TensorSet) -> TensorSet:
    """The rows of `first` followed by the rows of `second`."""
    return TensorSet(
        torch.cat([first.inputs, second.inputs.to(first.inputs.device)]),
        torch.cat([first.labels, second.labels.to(first.labels.device)]),
        first.ids + second.ids,
    )


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


def source_name(source: str, path: str | Path | None, preset_dataset: str, name: str | None = None) -> str:
    """The name of the data set a source yields: what its bundle, checkpoints and registered model carry.

    A preset's data set keeps its own name (`digits`); an own data set takes `name` where given,
    else the npz file's stem or the image folder's name, with characters other than letters,
    digits, `_`, `.` and `-` replaced by `-`.
    """
    if source == "preset":
        return preset_dataset
    if name:
        return name
    if path is None:
        raise ConfigError(f"data source {source!r} needs `data.path`")
    stem = Path(path).stem if source == "npz" else Path(path).resolve().name
    return _NAME.sub("-", stem).strip("-") or source


def load_source(
    source: str,
    path: str | Path,
    *,
    name: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    image_size: int | Sequence[int] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DataBundle:
    """An own data set: an `npz` file (arrays x, y, optional ids) or an `images` folder.

    Args:
        source: `npz` or `images`.
        path: the .npz file, or the folder with one subfolder per class (PNG or JPEG), and
            optionally a `test/` subfolder laid out the same way.
        name: the bundle's name (default: `source_name`).
        seed: seeds the stratified hold-out of `test_fraction` (npz; images without `test/`).
        image_size: images only: every image resized to this (H, W) or square size;
            without it, every image must have the same size.
        max_bytes: refuse a data set whose inputs would take more (N*C*H*W*4 bytes as float32).
    """
    path = Path(path)
    name = name or source_name(source, path, source)
    if source == "npz":
        return _npz(path, seed, name=name, test_fraction=test_fraction, max_bytes=max_bytes)
    if source == "images":
        return _image_folder(path, seed, name=name, test_fraction=test_fraction, size=image_size, max_bytes=max_bytes)
    raise ConfigError(f"unknown data source {source!r}; known: {', '.join(SOURCES)}")


def _check_memory(count: int, shape: Sequence[int], max_bytes: int, what: Path) -> None:
    estimate = int(count) * int(np.prod(shape)) * 4
    if estimate > max_bytes:
        raise DatasetTooLargeError(
            f"{what}: {count} samples of shape {tuple(int(d) for d in shape)} take about {_size(estimate)} "
            f"as float32, over the limit data.max_bytes = {_size(max_bytes)}: use fewer or smaller images "
            "(data.image_size) or raise the limit"
        )


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count} B"
        count /= 1024
    return f"{count} B"  # pragma: no cover


def _split_or_error(labels: np.ndarray, fraction: float, seed: int, what: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        return _holdout(labels, fraction, seed)
    except ValueError as error:  # too few samples of a class for a stratified hold-out
        raise DataSourceError(f"{what}: cannot hold out {fraction:g} of each class for testing: {error}") from error


def _image_files(folder: Path) -> list[Path]:
    images = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted((p for p in images if not p.name.startswith(".")), key=lambda p: p.name)


def _class_folders(root: Path, skip: str | None = None) -> dict[str, list[Path]]:
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != skip),
                     key=lambda p: p.name)  # fmt: skip
    if not folders:
        raise DataSourceError(f"{root} has no class subfolders: put each class's images in a folder of its own")
    classes = {}
    for folder in folders:
        files = _image_files(folder)
        if not files:
            raise DataSourceError(f"class folder {folder} holds no PNG or JPEG images")
        classes[folder.name] = files
    return classes


def _target_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ConfigError(f"data.image_size must be positive, got {size}")
    return int(height), int(width)


def _image_folder(
    root: Path,
    seed: int,
    *,
    name: str,
    test_fraction: float,
    size: int | Sequence[int] | None,
    max_bytes: int,
) -> DataBundle:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    test_root = root / TEST_FOLDER
    has_test = test_root.is_dir()
    train_classes = _class_folders(root, skip=TEST_FOLDER if has_test else None)
    class_names = list(train_classes)
    files = [(path, label) for label, paths in enumerate(train_classes.values()) for path in paths]
    test_files: list[tuple[Path, int]] = []
    if has_test:
        test_classes = _class_folders(test_root)
        unknown = sorted(set(test_classes) - set(class_names))
        if unknown:
            raise DataSourceError(f"{test_root} has class folder(s) {preview(unknown)} that {root} lacks")
        test_files = [(path, class_names.index(c)) for c, paths in test_classes.items() for path in paths]
    target = _target_size(size)
    # Headers first (PIL reads no pixels yet): sizes, modes and the memory estimate before any loading.
    headers = {}
    for path, _ in files + test_files:
        try:
            with Image.open(path) as image:
                headers[path] = (image.size, image.mode)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise DataSourceError(f"cannot read image {path}: {error}") from error
    if target is None:
        first_path, (first_size, _) = next(iter(headers.items()))
        for path, (image_size, _) in headers.items():
            if image_size != first_size:
                raise DataSourceError(
                    f"images differ in size: {first_path} is {first_size[0]}x{first_size[1]}, {path} is "
                    f"{image_size[0]}x{image_size[1]} (width x height): set data.image_size to resize them"
                )
        target = (first_size[1], first_size[0])
    grey = all(mode in ("1", "L", "LA", "I", "I;16", "F") for _, mode in headers.values())
    channels = 1 if grey else 3
    _check_memory(len(headers), (channels, *target), max_bytes, root)

    def read(entries: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pixels = np.empty((len(entries), channels, *target), dtype=np.uint8)
        for row, (path, _) in enumerate(entries):
            try:
                with Image.open(path) as image:
                    image = _as_mode(image, grey)
                    if image.size != (target[1], target[0]):
                        image = image.resize((target[1], target[0]), Image.Resampling.BILINEAR)
                    array = np.asarray(image, dtype=np.uint8)
            except (OSError, UnidentifiedImageError, ValueError) as error:
                raise DataSourceError(f"cannot read image {path}: {error}") from error
            pixels[row] = array[None] if grey else array.transpose(2, 0, 1)
        labels = np.array([label for _, label in entries], dtype=np.int64)
        ids = np.array([path.relative_to(root).as_posix() for path, _ in entries], dtype=np.str_)
        return pixels, labels, ids

    inputs, labels, ids = read(files)
    if has_test:
        test_inputs, test_labels, test_ids = read(test_files)
        _unique_ids(np.concatenate([ids, test_ids]), root)
        train = TensorSet(torch.from_numpy(inputs), torch.from_numpy(labels), tuple(ids.tolist()))
        test = TensorSet(torch.from_numpy(test_inputs), torch.from_numpy(test_labels), tuple(test_ids.tolist()))
    else:
        _unique_ids(ids, root)
        train_index, test_index = _split_or_error(labels, test_fraction, seed, root)
        tensor = torch.from_numpy(inputs)

        def part(index: np.ndarray) -> TensorSet:
            return TensorSet(tensor[index], torch.from_numpy(labels[index]), tuple(ids[index].tolist()))

        train, test = part(train_index), part(test_index)
    scaled = as_float(train.inputs)
    dims = (0, 2, 3)
    return DataBundle(
        name,
        train,
        test,
        len(class_names),
        tuple(scaled.mean(dims).tolist()),
        tuple(scaled.std(dims).tolist()),
        extra={"seed": seed, "source": str(root), "classes": class_names},
    )


def _as_mode(image, grey: bool):
    if grey:
        if image.mode in ("I", "I;16", "F"):  # 16-bit and float grey: scale into 0..255
            array = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if image.mode != "F" or array.max() > 1 else 1.0
            from PIL import Image

            return Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8))
        return image.convert("L")
    return image.convert("RGB")


def _unique_ids(ids: np.ndarray, what: Path) -> None:
    values, counts = np.unique(ids, return_counts=True)
    repeated = values[counts > 1]
    if len(repeated):
        raise DataSourceError(f"{what}: sample ids are not unique: {preview(repeated.tolist())} repeat")


def _npz_shape(path: Path, key: str = "x") -> tuple[int, ...] | None:
    """The shape of array `key` in an .npz file, read from its header (no data loaded); None if unknown."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as handle:
            version = np.lib.format.read_magic(handle)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = header(handle)
            return tuple(shape)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None


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


def _npz(
    path: Path,
    seed: int,
    *,
    name: str | None = None,
    test_fraction: float = 0.2,
    max_bytes: int | None = None,
) -> DataBundle:
    if not path.is_file():
        raise DatasetNotFoundError(f"npz data set {path} does not exist")
    shape = _npz_shape(path)
    if max_bytes is not None and shape is not None and len(shape) >= 3:
        _check_memory(shape[0], shape[1:], max_bytes, path)
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
    if len(ids) != len(labels):
        raise DataSourceError(f"{path}: {len(ids)} ids for {len(labels)} labels")
    _unique_ids(ids, path)
    if len(labels) and labels.min() < 0:
        raise DataSourceError(f"{path}: labels `y` must be integers 0..C-1, found {int(labels.min())}")
    train_index, test_index = _split_or_error(labels, test_fraction, seed, path)
    tensor = torch.from_numpy(np.ascontiguousarray(inputs))

    def part(index: np.ndarray) -> TensorSet:
        return TensorSet(tensor[index], torch.from_numpy(labels[index]), tuple(ids[index].tolist()))

    train = part(train_index)
    scaled = as_float(train.inputs)
    dims = (0, 2, 3)
    return DataBundle(
        name or path.stem,
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
