"""Pruning: exact global conv sparsity, OMP/IMP rewinding, data-free SynFlow, masks that stay applied."""

import copy
import math
from dataclasses import replace

import pytest
import torch

import unlearn.prune as prune_module
from unlearn.data import TensorSet, batches
from unlearn.errors import ConfigError
from unlearn.masks import apply_masks, prunable_parameters, sparsity
from unlearn.original import new_model
from unlearn.presets import get_preset
from unlearn.prune import (
    global_masks,
    imp,
    imp_schedule,
    magnitude_masks,
    mask_sparsity,
    omp,
    prune,
    synflow_masks,
    train_with_rewind,
)
from unlearn.train import History, accuracy, fit

TOLERANCE = 0.001  # 0.1 percentage point


@pytest.fixture(scope="module")
def preset():
    """The digits preset shrunk to 2 epochs; its LR milestones fall at the rewind epoch (1)."""
    full = get_preset("digits")
    return replace(full, train=replace(full.train, epochs=2))


@pytest.fixture(scope="module")
def dense(preset, digits, cpu):
    """(dense model, rewind state, history) of the shrunk preset, trained once per module."""
    return train_with_rewind(preset, digits, digits.train, cpu, seed=0)


def _spy_on_fit(monkeypatch, train=True):
    """Record what every `fit` call inside pruning starts from, then run the real `fit`.

    With `train=False` the stand-in only applies the masks: the pruning mechanics, in no time.
    """
    calls = []

    def spy(model, data, config, device, **kwargs):
        entry = {name: value.clone() for name, value in model.state_dict().items()}
        start_epoch = kwargs.get("start_epoch", 0)
        calls.append({"state": entry, "masks": kwargs.get("masks"), "start_epoch": start_epoch})
        if train:
            return fit(model, data, config, device, **kwargs)
        apply_masks(model, kwargs["masks"])
        return History()

    monkeypatch.setattr(prune_module, "fit", spy)
    return calls


def _assert_conv_only_and_zero(model, masks):
    conv = prunable_parameters(model)
    assert set(masks) == set(conv)
    for name, weight in conv.items():
        assert torch.equal(weight[masks[name] == 0], torch.zeros_like(weight[masks[name] == 0]))
    # Linear and BatchNorm weights are never masked. (Biases can stay at their initial zero when
    # pruning cuts every path through a channel, so they say nothing about masking.)
    others = [p for name, p in model.named_parameters() if name not in conv and name.endswith("weight")]
    assert others and all(bool((p != 0).all()) for p in others)


def test_global_masks_prune_exactly_the_lowest_scores_with_stable_ties():
    scores = {"a": torch.tensor([[3.0, 1.0], [2.0, 0.0]]), "b": torch.tensor([1.0, 1.0, 5.0])}
    masks = global_masks(scores, 3 / 7)
    # 0 first, then the first two of the three tied 1s by position (a before b).
    assert masks["a"].tolist() == [[1, 0], [1, 0]] and masks["b"].tolist() == [0, 1, 1]
    earlier = {"a": torch.tensor([[0.0, 1.0], [1.0, 1.0]]), "b": torch.ones(3)}
    nested = global_masks(scores, 3 / 7, earlier)
    assert nested["a"].tolist() == [[0, 0], [1, 0]] and nested["b"].tolist() == [1, 1, 1]
    with pytest.raises(ConfigError, match="already prune"):
        global_masks(scores, 1 / 7, {"a": torch.zeros(2, 2), "b": torch.ones(3)})


@pytest.mark.parametrize("target", [0.5, 0.95])
def test_magnitude_pruning_is_global_over_conv_weights_only(digits, preset, target):
    model = new_model(preset, digits, seed=0)
    conv = prunable_parameters(model)
    with torch.no_grad():  # tiny non-conv weights would be pruned first if they were in the pool
        for name, parameter in model.named_parameters():
            if name not in conv:
                parameter.fill_(1e-9)
    masks = magnitude_masks(model, target)
    assert set(masks) == set(conv) and all(masks[n].shape == conv[n].shape for n in conv)
    assert abs(mask_sparsity(masks) - target) <= TOLERANCE
    kept = torch.cat([conv[n].detach().abs()[masks[n] == 1] for n in conv])
    pruned = torch.cat([conv[n].detach().abs()[masks[n] == 0] for n in conv])
    assert pruned.max() <= kept.min()
    per_layer = [mask_sparsity({n: masks[n]}) for n in conv]
    assert max(per_layer) - min(per_layer) > 0.01  # one global threshold, not per-layer quotas


def test_imp_schedule_prunes_a_fifth_of_the_rest_and_ends_on_target():
    assert imp_schedule(0.5) == pytest.approx((0.2, 0.36, 0.488, 0.5))
    schedule = imp_schedule(0.95)
    assert len(schedule) == 14 and schedule[12] == pytest.approx(1 - 0.8**13) and schedule[-1] == 0.95
    with pytest.raises(ConfigError):
        imp_schedule(0.5, rate=1.0)


def test_rewind_state_is_taken_after_rewind_epoch_epochs(dense, preset, digits):
    model, rewind_state, history = dense
    steps_per_epoch = math.ceil(len(digits.train) / preset.train.batch_size)
    assert int(rewind_state["net.1.num_batches_tracked"]) == preset.rewind_epoch * steps_per_epoch
    assert int(model.state_dict()["net.1.num_batches_tracked"]) == preset.train.epochs * steps_per_epoch
    assert len(history.epochs) == preset.train.epochs
    assert not torch.equal(rewind_state["net.0.weight"], model.state_dict()["net.0.weight"])


@pytest.mark.parametrize("target", [0.5, 0.95])
def test_omp_rewinds_weights_and_lr_and_keeps_dense(dense, preset, digits, cpu, target, monkeypatch):
    dense_model, rewind_state, _ = dense
    dense_before = {name: value.clone() for name, value in dense_model.state_dict().items()}
    calls = _spy_on_fit(monkeypatch)
    result = omp(dense_model, rewind_state, preset, digits, digits.train, cpu, target)
    (call,) = calls
    assert call["start_epoch"] == preset.rewind_epoch
    assert all(torch.equal(call["state"][name], rewind_state[name]) for name in rewind_state)
    first = result.history.epochs[0]
    assert first.epoch == preset.rewind_epoch
    assert first.lr == pytest.approx(preset.train.lr * preset.train.lr_factor(preset.rewind_epoch))
    assert first.lr < preset.train.lr  # the schedule really resumed past its first milestone
    assert result.method == "omp" and abs(result.sparsity - target) <= TOLERANCE
    assert mask_sparsity(result.masks) == result.sparsity
    _assert_conv_only_and_zero(result.model, result.masks)
    assert result.dense_model is dense_model and sparsity(dense_model) < 0.01
    assert all(torch.equal(dense_before[n], v) for n, v in dense_model.state_dict().items())


def _check_imp(dense, preset, digits, cpu, target, monkeypatch, train):
    dense_model, rewind_state, _ = dense
    calls = _spy_on_fit(monkeypatch, train)
    result = imp(dense_model, rewind_state, preset, digits, digits.train, cpu, target)
    assert len(calls) == len(imp_schedule(target)) == len(result.round_sparsities)
    assert all(torch.equal(c["state"][n], rewind_state[n]) for c in calls for n in rewind_state)
    assert all(c["start_epoch"] == preset.rewind_epoch for c in calls)
    first = magnitude_masks(dense_model, 0.2)  # round one prunes the trained dense weights
    assert all(torch.equal(calls[0]["masks"][n], first[n]) for n in first)
    densities = [1.0] + [1 - mask_sparsity(c["masks"]) for c in calls]
    for before, after in zip(densities, densities[1:-1], strict=False):
        assert after == pytest.approx(0.8 * before, abs=1e-3)  # 20% of the remaining weights
    for earlier, later in zip(calls, calls[1:], strict=False):  # pruned weights stay pruned
        assert all(bool((later["masks"][n] <= earlier["masks"][n]).all()) for n in later["masks"])
    assert result.method == "imp" and abs(result.sparsity - target) <= TOLERANCE
    _assert_conv_only_and_zero(result.model, result.masks)


def test_imp_reaches_half_sparsity_in_rounds(dense, preset, digits, cpu, monkeypatch):
    _check_imp(dense, preset, digits, cpu, 0.5, monkeypatch, train=False)


@pytest.mark.slow
def test_imp_reaches_95_percent_sparsity_in_14_trained_rounds(dense, preset, digits, cpu, monkeypatch):
    _check_imp(dense, preset, digits, cpu, 0.95, monkeypatch, train=True)


class _SampleTrap(torch.Tensor):
    """A tensor that records every operation except asking its shape, dtype or device."""

    reads: list = []
    allowed = (
        torch.Tensor.shape.__get__,
        torch.Tensor.dtype.__get__,
        torch.Tensor.device.__get__,
        torch.Tensor.__len__,
        torch.Tensor.size,
        torch.Tensor.dim,
    )

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func not in cls.allowed:
            cls.reads.append(getattr(func, "__name__", repr(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def _trapped(data: TensorSet) -> TensorSet:
    return TensorSet(data.inputs.as_subclass(_SampleTrap), data.labels.as_subclass(_SampleTrap), data.ids)


@pytest.mark.parametrize("target", [0.5, 0.95])
def test_synflow_prunes_before_reading_any_sample(digits, preset, cpu, target, monkeypatch):
    bundle = replace(digits, train=_trapped(digits.train), test=_trapped(digits.test))
    seen = {}

    def training_stand_in(model, data, config, device, **kwargs):
        seen["reads"] = list(_SampleTrap.reads)
        seen["masks"] = kwargs["masks"]
        apply_masks(model, kwargs["masks"])
        return History()

    monkeypatch.setattr(prune_module, "fit", training_stand_in)
    _SampleTrap.reads.clear()
    result = prune("synflow", preset, bundle, bundle.train, cpu, target)
    assert seen["reads"] == []  # the masks were complete before training saw any sample
    assert seen["masks"] is result.masks and abs(result.sparsity - target) <= TOLERANCE
    assert set(result.masks) == set(prunable_parameters(result.model))
    list(batches(bundle.train, 512))  # the trap does catch a read
    assert _SampleTrap.reads


def test_synflow_scores_leave_the_model_alone_and_ignore_signs(digits, preset):
    model = new_model(preset, digits, seed=0)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    masks = synflow_masks(model, digits.input_shape, 0.9, rounds=10)
    assert all(torch.equal(before[n], v) for n, v in model.state_dict().items())
    with torch.no_grad():
        for weight in prunable_parameters(model).values():
            weight.neg_()
    flipped = synflow_masks(model, digits.input_shape, 0.9, rounds=10)
    assert all(torch.equal(masks[n], flipped[n]) for n in masks)
    magnitude = magnitude_masks(model, 0.9)
    assert any(not torch.equal(masks[n], magnitude[n]) for n in masks)  # a different criterion


def test_synflow_scores_the_net_behind_normalize(digits, preset):
    model = new_model(preset, digits, seed=0)
    shifted = copy.deepcopy(model)
    shifted.normalize.mean.fill_(2.0)  # would turn the all-ones input negative, and ReLU would zero it
    masks = synflow_masks(model, digits.input_shape, 0.9, rounds=5)
    shifted_masks = synflow_masks(shifted, digits.input_shape, 0.9, rounds=5)
    assert all(torch.equal(masks[n], shifted_masks[n]) for n in masks)


def test_synflow_trains_with_the_mask_applied(digits, preset, cpu):
    result = prune("synflow", preset, digits, digits.train, cpu, 0.95, rounds=10)
    assert result.method == "synflow" and result.dense_model is None
    assert abs(result.sparsity - 0.95) <= TOLERANCE
    assert len(result.history.epochs) == preset.train.epochs
    _assert_conv_only_and_zero(result.model, result.masks)


@pytest.mark.parametrize("target", [1.0, -0.1, 1.5, float("nan")])
def test_bad_sparsity_is_a_config_error(digits, preset, cpu, target):
    with pytest.raises(ConfigError, match="sparsity"):
        prune("omp", preset, digits, digits.train, cpu, target)


def test_unknown_method_is_a_config_error(digits, preset, cpu, dense):
    with pytest.raises(ConfigError, match="unknown pruning method"):
        prune("random", preset, digits, digits.train, cpu, 0.5)
    with pytest.raises(ConfigError, match="initialisation"):
        prune("synflow", preset, digits, digits.train, cpu, 0.5, dense=dense[:2])


@pytest.mark.slow
def test_95_percent_omp_digits_model_stays_useful(digits, cpu):
    result = prune("omp", get_preset("digits"), digits, digits.train, cpu, 0.95)
    test_accuracy = accuracy(result.model, digits.test, cpu)
    print(
        f"95% OMP digits: test accuracy {test_accuracy:.2f}% "
        f"(dense {accuracy(result.dense_model, digits.test, cpu):.2f}%), sparsity {result.sparsity:.4f}"
    )
    assert abs(result.sparsity - 0.95) <= TOLERANCE and result.dense_history is not None
    assert test_accuracy >= 90.0
