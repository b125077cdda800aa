"""Transfer after unlearning on digits: class subsets, head replacement, linear probe, fine-tune, study;
source and target tasks from one data set or from two."""

from dataclasses import replace

import pytest
import torch

from unlearn.data import TensorSet
from unlearn.errors import ConfigError
from unlearn.methods import default_config, retrain
from unlearn.models import build_model
from unlearn.original import train_original
from unlearn.presets import get_preset
from unlearn.transfer import (
    CIFAR100_VEHICLES,
    MODES,
    SOURCES,
    TRANSFER_PRESETS,
    TransferConfig,
    class_subset,
    features,
    fine_tune,
    get_transfer_preset,
    linear_probe,
    replace_head,
    source_and_target,
    transfer_study,
)


def test_class_subset_keeps_only_those_classes_and_relabels_them_in_order(digits):
    target = class_subset(digits, [7, 5])
    for part, full in ((target.train, digits.train), (target.test, digits.test)):
        assert len(part) == int(((full.labels == 7) | (full.labels == 5)).sum())
        originals = full.subset([full.ids.index(i) for i in part.ids]).labels
        assert torch.equal(part.labels, (originals == 5).long())  # 7 -> 0, 5 -> 1
    assert target.num_classes == 2 and target.mean == digits.mean


def test_class_subset_without_relabelling_keeps_labels(digits):
    subset = class_subset(digits, [3, 4], relabel=False)
    assert set(subset.train.labels.tolist()) == {3, 4} and subset.num_classes == digits.num_classes


@pytest.mark.parametrize("classes", [[3, 3], [10], [-1]])
def test_class_subset_refuses_bad_classes(digits, classes):
    with pytest.raises(ConfigError):
        class_subset(digits, classes)


@pytest.mark.parametrize(
    "changes",
    [
        {"target_classes": (4, 5)},
        {"forget_classes": ()},
        {"forget_classes": (0, 1, 2, 3, 4)},
        {"forget_classes": (7,)},
    ],
)
def test_transfer_config_refuses_overlapping_or_outside_classes(changes):
    with pytest.raises(ConfigError):
        TransferConfig(**changes)


def test_overlapping_class_numbers_are_refused_only_within_one_data_set():
    with pytest.raises(ConfigError, match="must not overlap"):
        TransferConfig(target_classes=(0, 1))
    assert TransferConfig(target_classes=(0, 1), cross_dataset=True).target_classes == (0, 1)
    with pytest.raises(ConfigError, match="target_classes"):
        TransferConfig(target_classes=(), cross_dataset=True)


def test_a_target_from_another_data_set_keeps_its_own_classes(digits):
    other = replace(digits, name="other")
    source, target = source_and_target(digits, TransferConfig(target_classes=(0, 1), cross_dataset=True), other)
    assert (source.name, source.num_classes) == ("digits", 5)
    assert (target.name, target.num_classes) == ("other", 2)
    assert len(target.train) == int((digits.train.labels <= 1).sum())  # classes 0 and 1 of the other set


def test_a_cross_dataset_transfer_needs_its_target_with_the_sources_image_shape(digits):
    config = TransferConfig(target_classes=(0, 1), cross_dataset=True)
    with pytest.raises(ConfigError, match="needs the target data set"):
        source_and_target(digits, config)
    colour = TensorSet(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), ("c/0", "c/1"))
    with pytest.raises(ConfigError, match=r"\(3, 8, 8\), but the source model takes digits's \(1, 8, 8\)"):
        source_and_target(digits, config, replace(digits, name="colour", train=colour, test=colour))


def test_the_cifar_preset_goes_from_every_cifar100_class_to_every_cifar10_class():
    preset = get_transfer_preset("cifar100_to_cifar10")
    assert (preset.source, preset.target, preset.recipe) == ("cifar100", "cifar10", "cifar100")
    assert preset.source_classes == tuple(range(100)) and preset.target_classes == tuple(range(10))
    assert preset.forget_classes == CIFAR100_VEHICLES and len(set(CIFAR100_VEHICLES)) == 10
    TransferConfig(preset.source_classes, preset.target_classes, preset.forget_classes, cross_dataset=True)
    within = TRANSFER_PRESETS["within"]
    assert (within.source_classes, within.target_classes, within.forget_classes) == (
        TransferConfig().source_classes, TransferConfig().target_classes, TransferConfig().forget_classes)  # fmt: skip
    with pytest.raises(ConfigError, match="unknown transfer preset 'imagenet'"):
        get_transfer_preset("imagenet")


@pytest.mark.parametrize(
    "arch, shape", [("digits_resnet", (1, 8, 8)), ("resnet18", (3, 16, 16)), ("vgg16_bn", (3, 16, 16))]
)
def test_replace_head_gives_the_new_width_and_leaves_the_source_alone(arch, shape):
    model = build_model(arch, shape, 10, (0.5,) * shape[0], (0.25,) * shape[0]).eval()
    inputs = torch.rand(2, *shape)
    before = model(inputs)
    replaced = replace_head(model, 3).eval()
    assert replaced(inputs).shape == (2, 3)
    assert torch.equal(model(inputs), before)
    kept = {k: v for k, v in replaced.state_dict().items() if k in model.state_dict()}
    changed = [
        k
        for k, v in kept.items()
        if v.shape == model.state_dict()[k].shape and not torch.equal(v, model.state_dict()[k])
    ]
    assert changed == []  # only the head's weight and bias (new shapes) differ


@pytest.fixture(scope="module")
def tasks(digits):
    return source_and_target(digits, TransferConfig())


@pytest.fixture(scope="module")
def source_model(tasks, cpu):
    """The digits preset trained on the source task (digits 0-4), shrunk to 5 epochs."""
    preset = get_preset("digits")
    preset = replace(preset, train=replace(preset.train, epochs=5))
    model, _ = train_original(preset, tasks[0], tasks[0].train, cpu, seed=0)
    return model.eval()


def test_features_are_the_penultimate_activations(source_model, tasks, cpu):
    target = tasks[1]
    feature_set = features(source_model, target.test, cpu)
    assert feature_set.inputs.shape == (len(target.test), 64, 1, 1)
    assert torch.equal(feature_set.labels, target.test.labels) and feature_set.ids == target.test.ids
    head = source_model.net[-1]
    logits = head(feature_set.inputs.flatten(1))
    assert torch.allclose(logits, source_model(target.test.inputs.float()), atol=1e-5)


def test_linear_probe_trains_only_the_head(source_model, tasks, cpu):
    target = tasks[1]
    config = replace(TransferConfig().linear_probe, epochs=10)
    result = linear_probe(source_model, target.train, target.test, 5, config, cpu)
    before, after = source_model.state_dict(), result.model.state_dict()
    body = [k for k in before if not k.startswith("net.7.")]
    assert body and all(torch.equal(before[k], after[k]) for k in body)  # BN statistics too
    assert after["net.7.weight"].shape == (5, 64) and result.seconds > 0
    assert result.accuracy > 60  # well above the 20% of chance on five classes


def test_fine_tune_trains_the_backbone_and_keeps_masked_weights_zero(source_model, tasks, cpu):
    target = tasks[1]
    masks = {"net.0.weight": (torch.rand_like(source_model.net[0].weight) < 0.5).float()}
    config = replace(TransferConfig().fine_tune, epochs=1)
    result = fine_tune(source_model, target.train, target.test, 5, config, cpu, masks=masks)
    weight = result.model.net[0].weight
    assert weight[masks["net.0.weight"] == 0].abs().max() == 0
    assert not torch.equal(result.model.net[3].conv1.weight, source_model.net[3].conv1.weight)
    assert 0 <= result.accuracy <= 100 and result.seconds > 0


@pytest.mark.slow
def test_transfer_study_reports_every_source_and_mode(source_model, tasks, cpu):
    preset = get_preset("digits")
    config = TransferConfig(
        method_config=default_config("l1_sparse", "digits", epochs=2),
        retrain_config=retrain.Config(train=replace(preset.train, epochs=3)),
        linear_probe=replace(TransferConfig().linear_probe, epochs=10),
        fine_tune=replace(TransferConfig().fine_tune, epochs=2),
    )
    rows = transfer_study(source_model, tasks[0], tasks[1], config, cpu)
    assert [(row.source, row.mode) for row in rows] == [(s, m) for s in SOURCES for m in MODES]
    assert all(0 <= row.target_accuracy <= 100 and row.seconds > 0 for row in rows)
    assert all((row.unlearn_seconds == 0) == (row.source == "original") for row in rows)
    assert all(row.target_accuracy > 40 for row in rows if row.source == "original")
