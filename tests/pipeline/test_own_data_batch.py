"""An image folder as the data source: train-original registers its champion, a deletion batch names file paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from projects import enter_project

from tasks.adapters import registry
from tasks.adapters.params import load_params
from tasks.adapters.requests import DeletionRequest, open_inbox
from tasks.adapters.workspace import bundle
from tasks.production import deletion

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("circle", "cross", "square")


def write_folder(root: Path, per_class: int = 40) -> None:
    """Grey 8x8 PNGs whose class is a bright row, column or corner (plus seeded noise)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 60, (8, 8), dtype=np.uint8)
            if label == 0:
                pixels[3, :] = 255
            elif label == 1:
                pixels[:, 3] = 255
            else:
                pixels[:3, :3] = 255
            Image.fromarray(pixels, mode="L").save(root / name / f"img{index:03d}.png")


def test_an_image_folder_trains_a_champion_and_a_batch_forgets_file_path_ids(tmp_path, monkeypatch, prefect_api):
    folder = enter_project(tmp_path / "project", monkeypatch)
    write_folder(folder / "images" / "shapes")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="images", path="images/shapes")
    params["train"].update(seeds=[0], epochs=2)  # the digits recipe rewinds at epoch 1
    params["unlearn"]["settings"]["ft"] = {"epochs": 1}
    params["deletion"].update(method="ft", sparsity=0.5)
    params["audit"].update(references=4, probe_size=20)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    from flows.deletion_batch import deletion_batch
    from flows.train_original import train_original

    summary = train_original("params.yaml")
    settings = load_params("params.yaml")
    name = deletion.model_name(settings)
    assert name == "unlearn-shapes-digits_resnet" == summary["model"]
    assert registry.version_by_alias(name, registry.CHAMPION) is not None
    forgotten = [sample_id for sample_id in bundle().train.ids if sample_id.startswith("cross/")][:3]
    assert forgotten and all(sample_id.endswith(".png") for sample_id in forgotten)
    open_inbox(settings.deletion.inbox).submit(DeletionRequest(request_id="req-own", sample_ids=forgotten))
    result = deletion_batch("params.yaml")
    assert result["status"] == "registered" and result["requests"] == ["req-own"]
    assert result["model"] == name
    assert registry.version_by_alias(name, registry.CANDIDATE) is not None
