"""Own data sets (`data.source: npz | images`): loading, errors, prepare and the registered model's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from tasks.adapters import layout, registry
from tasks.adapters.params import DataParams, Params, load_params
from tasks.production import deletion
from tasks.stages.prepare import prepare
from unlearn.checkpoint import model_metadata
from unlearn.data import DataBundle, load_source, source_name
from unlearn.errors import ConfigError, DatasetNotFoundError, DatasetTooLargeError, DataSourceError

CLASSES = ("ant", "bee", "cat")
PER_CLASS = 10


def write_image(path: Path, value: int, size=(6, 5), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(path)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three class folders of ten 6x5 (width x height) grey PNGs; each image's value encodes its class."""
    root = tmp_path / "shapes"
    for label, name in enumerate(CLASSES):
        for index in range(PER_CLASS):
            write_image(root / name / f"{index:03d}.png", 50 * label + index)
    return root


def test_an_image_folder_loads_with_path_ids_and_folder_labels(folder):
    bundle = load_source("images", folder, seed=0, test_fraction=0.2)
    assert bundle.name == "shapes"
    assert bundle.num_classes == 3
    assert bundle.extra["classes"] == list(CLASSES)
    assert bundle.input_shape == (1, 5, 6)
    assert len(bundle.train) == 24 and len(bundle.test) == 6
    every = set(bundle.train.ids) | set(bundle.test.ids)
    assert every == {f"{name}/{index:03d}.png" for name in CLASSES for index in range(PER_CLASS)}
    for part in (bundle.train, bundle.test):
        for row, sample_id in enumerate(part.ids):
            label = CLASSES.index(sample_id.split("/")[0])
            assert int(part.labels[row]) == label
            assert int(part.inputs[row, 0, 0, 0]) == 50 * label + int(sample_id.split("/")[1][:3])
    assert bundle.train.inputs.dtype.is_floating_point is False  # kept as uint8


def test_the_split_is_stable_across_runs_and_seeded(folder):
    first = load_source("images", folder, seed=0)
    again = load_source("images", folder, seed=0)
    other = load_source("images", folder, seed=1)
    assert first.train.ids == again.train.ids and first.test.ids == again.test.ids
    assert set(first.test.ids) != set(other.test.ids)


def test_a_test_folder_is_the_test_set(folder):
    for label, name in enumerate(CLASSES):
        write_image(folder / "test" / name / "t0.png", 50 * label)
    bundle = load_source("images", folder)
    assert bundle.num_classes == 3
    assert bundle.test.ids == tuple(f"test/{name}/t0.png" for name in CLASSES)
    assert len(bundle.train) == 3 * PER_CLASS


def test_rgb_images_and_a_target_size(tmp_path):
    root = tmp_path / "colour"
    write_image(root / "a" / "0.png", 10, size=(8, 8), mode="RGB")
    write_image(root / "a" / "1.jpg", 20, size=(4, 6), mode="RGB")
    write_image(root / "b" / "0.png", 30, size=(8, 8), mode="L")
    write_image(root / "b" / "1.png", 40, size=(8, 8), mode="L")
    with pytest.raises(DataSourceError, match=r"differ in size: .*0\.png is 8x8, .*1\.jpg is 4x6.*image_size"):
        load_source("images", root, test_fraction=0.5)
    bundle = load_source("images", root, image_size=[5, 7], test_fraction=0.5)
    assert bundle.input_shape == (3, 5, 7)


def test_an_unreadable_image_names_its_path(folder):
    broken = folder / "bee" / "zz_broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(DataSourceError, match=f"cannot read image {broken}"):
        load_source("images", folder)


def test_an_empty_class_folder_is_named(folder):
    (folder / "dog").mkdir()
    with pytest.raises(DataSourceError, match=f"class folder {folder / 'dog'} holds no PNG or JPEG"):
        load_source("images", folder)


def test_a_missing_folder_and_a_test_folder_with_unknown_classes(folder, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        load_source("images", tmp_path / "nowhere")
    write_image(folder / "test" / "emu" / "0.png", 1)
    with pytest.raises(DataSourceError, match="'emu'"):
        load_source("images", folder)


def test_a_data_set_over_the_memory_limit_names_its_size_and_the_limit(folder, tmp_path):
    # 30 images of 1x5x6 as float32: 3,600 bytes.
    with pytest.raises(DatasetTooLargeError, match=r"30 samples of shape \(1, 5, 6\) take about 3.5 KiB.*1000 B"):
        load_source("images", folder, max_bytes=1000)
    path = tmp_path / "big.npz"
    np.savez(path, x=np.zeros((40, 1, 4, 4), np.uint8), y=np.arange(40) % 2)
    with pytest.raises(DatasetTooLargeError, match=r"40 samples of shape \(1, 4, 4\).*limit"):
        load_source("npz", path, max_bytes=1024)


def npz_file(path: Path, ids=None) -> Path:
    x = (np.arange(40 * 16, dtype=np.uint8) % 251).reshape(40, 4, 4)
    arrays = {"x": x, "y": np.arange(40) % 4}
    if ids is not None:
        arrays["ids"] = np.array(ids)
    np.savez(path, **arrays)
    return path


def test_an_npz_loads_with_its_ids(tmp_path):
    path = npz_file(tmp_path / "mine.npz", ids=[f"scan-{i}" for i in range(40)])
    bundle = load_source("npz", path, name="mine", seed=0, test_fraction=0.25)
    assert bundle.name == "mine" and bundle.num_classes == 4
    assert bundle.input_shape == (1, 4, 4)
    assert len(bundle.train) == 30 and len(bundle.test) == 10
    assert set(bundle.train.ids) | set(bundle.test.ids) == {f"scan-{i}" for i in range(40)}
    for row, sample_id in enumerate(bundle.train.ids):
        assert int(bundle.train.labels[row]) == int(sample_id.split("-")[1]) % 4


def test_duplicate_npz_ids_are_named(tmp_path):
    path = npz_file(tmp_path / "dup.npz", ids=[f"s{i}" for i in range(39)] + ["s3"])
    with pytest.raises(DataSourceError, match="not unique: 's3'"):
        load_source("npz", path)


def test_params_need_a_path_for_own_data_and_name_the_data_set():
    with pytest.raises(ValidationError, match="needs data.path"):
        DataParams(source="images")
    with pytest.raises(ValidationError):
        DataParams(source="npz", path="x.npz", name="has space")
    assert DataParams().dataset == "digits"
    assert DataParams(preset="cifar10").dataset == "cifar10"
    assert DataParams(source="npz", path="data/my scans.npz").dataset == "my-scans"
    assert DataParams(source="images", path="data/shapes", name="mine").dataset == "mine"
    assert source_name("images", "data/shapes/", "digits") == "shapes"


def write_params(folder: Path, data: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def test_prepare_writes_the_own_data_set_and_the_model_name_agrees(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params_path = write_params(tmp_path, {"source": "images", "path": str(folder), "seed": 3})
    params = load_params(params_path)
    written = prepare(params)
    assert written == layout.RAW
    bundle = DataBundle.load(layout.RAW)
    assert bundle.name == params.data.dataset == "shapes"
    assert set(bundle.train.ids) | set(bundle.test.ids) == {
        f"{name}/{index:03d}.png" for name in CLASSES for index in range(PER_CLASS)
    }
    # Registration names the model from the checkpoint's metadata; every lookup from params.
    meta = model_metadata("digits_resnet", bundle, preset="digits")
    registered = registry.checkpoint_model_name(meta)
    assert registered == "unlearn-shapes-digits_resnet"
    assert deletion.model_name(params) == registered
    assert registry.default_model_name(params_path) == registered
    assert registry.params_model_name(params) == registered


def test_the_preset_source_keeps_its_name():
    params = Params()
    assert deletion.model_name(params) == "unlearn-digits-digits_resnet"
    assert registry.default_model_name("no-such-params.yaml") == "unlearn-digits-digits_resnet"


def test_prepare_from_an_npz_leaves_purged_samples_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    npz_file(tmp_path / "mine.npz", ids=[f"scan-{i}" for i in range(40)])
    params = load_params(write_params(tmp_path, {"source": "npz", "path": "mine.npz", "name": "scans"}))
    bundle = DataBundle.load(prepare(params))
    assert bundle.name == "scans" and len(bundle.train) == 32
    purged = set(bundle.train.ids[:2])
    monkeypatch.setattr("tasks.stages.prepare.purged_sample_ids", lambda ledger: purged)
    again = DataBundle.load(prepare(params))
    assert len(again.train) == 30 and not purged & set(again.train.ids)
    assert again.test.ids == bundle.test.ids


def test_within_transfer_splits_an_own_data_sets_classes_in_two():
    from unlearn.transfer import TRANSFER_PRESETS, split_classes

    within = TRANSFER_PRESETS["within"]
    assert split_classes(10) == (within.source_classes, within.target_classes, within.forget_classes)
    assert split_classes(3) == ((0, 1), (2,), (0,))
    assert split_classes(4) == ((0, 1), (2, 3), (0,))
    source, target, forget = split_classes(101)
    assert (len(source), len(target), len(forget)) == (51, 50, 20) and not set(source) & set(target)
    with pytest.raises(ConfigError, match="at least 3 classes.*found 2"):
        split_classes(2)


def test_the_transfer_stage_takes_an_own_data_sets_classes_unless_params_set_them(tmp_path):
    from tasks.stages import transfer

    own = Params.model_validate({"data": {"source": "npz", "path": str(tmp_path / "mine.npz")}})
    assert transfer.task_classes(own, 4) == {"source_classes": (0, 1), "target_classes": (2, 3), "forget_classes": (0,)}
    assert transfer.transfer_config(own, transfer.task_classes(own, 4)).forget_classes == (0,)
    assert transfer.prepared_source(own) == ("npz", str(tmp_path / "mine.npz"))
    assert transfer.data_sources(own) == (None, None)
    chosen = Params.model_validate({**own.model_dump(include={"data"}), "transfer": {"forget_classes": [1]}})
    assert transfer.task_classes(chosen, 4)["forget_classes"] == (1,)
    with pytest.raises(ConfigError, match="transfer on mine: .*at least 3 classes"):
        transfer.task_classes(own, 2)
    preset = Params()  # digits keeps the preset's classes whatever the count
    assert transfer.task_classes(preset, 10) == {"source_classes": (0, 1, 2, 3, 4), "target_classes": (5, 6, 7, 8, 9),
                                                 "forget_classes": (0, 1)}  # fmt: skip


def test_the_backdoor_trigger_fits_an_own_data_sets_images():
    import torch

    from unlearn.backdoor import default_backdoor_config, fitted_backdoor_config, trigger_region
    from unlearn.data import TensorSet

    def images(shape, value: int) -> TensorSet:
        return TensorSet(torch.full((4, *shape), value, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                         tuple(f"i{n}" for n in range(4)))  # fmt: skip

    digits = default_backdoor_config("digits")
    small = fitted_backdoor_config(images((1, 8, 8), 0))  # dark 8 px images: digits' white 2 px trigger
    assert (small.trigger_size, small.border, small.patch_value) == (digits.trigger_size, digits.border, 1.0)
    cifar = fitted_backdoor_config(images((3, 32, 32), 200))  # bright colour images: the paper's black 4 px
    assert (cifar.trigger_size, cifar.border, cifar.patch_value) == (4, 2, 0.0)
    tall = fitted_backdoor_config(images((1, 40, 14), 10), poison_ratio=0.2)  # non-square: the shorter side
    assert (tall.trigger_size, tall.border, tall.poison_ratio) == (2, 1, 0.2)
    assert trigger_region(40, 14, tall) == (slice(37, 39), slice(11, 13))  # the bottom-right corner
    with pytest.raises(ConfigError, match="does not fit in 2x9 images"):
        fitted_backdoor_config(images((1, 2, 9), 0))


def test_prepare_warns_when_dvc_cannot_watch_the_data(folder, tmp_path, monkeypatch, caplog):
    from tasks.stages.prepare import watched

    monkeypatch.chdir(tmp_path)
    inside = tmp_path / layout.OWN_DATA / "shapes"
    inside.parent.mkdir(parents=True)
    folder.rename(inside)
    assert watched("data/own/shapes") and watched(inside) and not watched(tmp_path / "elsewhere")
    assert not watched("data/owner/shapes") and not watched("data/raw")
    with caplog.at_level("WARNING", logger="tasks.stages.prepare"):
        prepare(load_params(write_params(tmp_path, {"source": "images", "path": "data/own/shapes"})))
    assert not caplog.records
    outside = tmp_path / "elsewhere"
    inside.rename(outside)
    with caplog.at_level("WARNING", logger="tasks.stages.prepare"):
        prepare(load_params(write_params(tmp_path, {"source": "images", "path": str(outside)})))
    assert [record.getMessage() for record in caplog.records] == [
        f"data.path {outside} is outside data/own/: dvc repro does not see its files change (move it there, or run "
        "`dvc repro --force prepare` after changing them)"
    ]
