"""The trainer: preset accuracy, determinism, masks, schedules, checkpoints."""

from dataclasses import replace

import pytest
import torch

from unlearn.checkpoint import load_checkpoint, model_metadata, restore_model, save_checkpoint
from unlearn.errors import CheckpointError, ConfigError
from unlearn.original import new_model, train_original
from unlearn.presets import get_preset
from unlearn.train import SGD, TrainConfig, accuracy, fit, predict


@pytest.fixture(scope="module")
def preset():
    return get_preset("digits")


def _short(preset, epochs=2):
    return replace(preset.train, epochs=epochs)


@pytest.mark.slow
def test_digits_preset_reaches_95_percent(digits, preset, cpu):
    model, history = train_original(preset, digits, digits.train, cpu)
    assert accuracy(model, digits.test, cpu) >= 95.0
    assert len(history.epochs) == preset.train.epochs
    assert history.epochs[-1].loss < history.epochs[0].loss


def test_training_is_deterministic_on_cpu(digits, preset, cpu):
    weights = []
    for _ in range(2):
        model = new_model(preset, digits, seed=3)
        fit(model, digits.train, replace(_short(preset), seed=3), cpu)
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_cpu_training_runs_in_channels_last_and_returns_the_default_layout(digits, preset, cpu):
    model = new_model(preset, digits, seed=0)

    def convs(module):  # a 1-channel or 1x1 kernel is laid out alike in both formats
        return [p for p in module.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]

    before = [id(p) for p in convs(model)]
    during = []
    fit(
        model,
        digits.train,
        _short(preset, epochs=1),
        cpu,
        after_step=lambda m: during.append(
            all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs(m))
        ),
    )
    assert before and during and all(during)
    assert all(p.is_contiguous() for p in model.parameters())
    assert [id(p) for p in convs(model)] == before  # the same tensors, laid out again


def test_masked_weights_stay_exactly_zero(digits, preset, cpu):
    model = new_model(preset, digits, seed=0)
    name = "net.0.weight"
    mask = (torch.rand_like(dict(model.named_parameters())[name]) > 0.5).float()
    seen = []
    fit(
        model,
        digits.train,
        _short(preset),
        cpu,
        masks={name: mask},
        after_step=lambda m: seen.append(dict(m.named_parameters())[name][mask == 0].abs().max().item()),
    )
    assert seen and max(seen) == 0.0
    assert dict(model.named_parameters())[name][mask == 1].abs().sum() > 0


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.9, 5e-4), (0.0, 0.0), (0.9, 0.0)])
def test_sgd_steps_equal_torch_optim(foreach, momentum, weight_decay):
    """The trainer's SGD is torch.optim.SGD's arithmetic: equal tensors after every step, LR changes,
    a tensor with no gradient in some steps (skipped, its momentum kept) and one that never trains."""
    torch.manual_seed(0)
    ours = [torch.randn(5, 3, requires_grad=True), torch.randn(4, requires_grad=True), torch.randn(2)]
    theirs = [p.detach().clone().requires_grad_(p.requires_grad) for p in ours]
    mine = SGD(ours, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    reference = torch.optim.SGD(theirs, lr=0.1, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
    for step in range(6):
        lr = 0.1 * 0.5**step
        mine.lr = lr
        for group in reference.param_groups:
            group["lr"] = lr
        mine.zero_grad()
        reference.zero_grad(set_to_none=True)
        grads = [torch.randn(5, 3), None if step in (1, 2) else torch.randn(4)]
        for params in (ours, theirs):
            for p, g in zip(params, grads, strict=False):  # the third tensor never gets one
                p.grad = None if g is None else g.clone()
        mine.step()
        reference.step()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b), f"step {step}"
    assert torch.equal(ours[2], theirs[2])


def test_schedules():
    multistep = TrainConfig(epochs=182)
    assert [multistep.lr_factor(e) for e in (0, 90, 91, 135, 136)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cosine = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=2)
    assert cosine.lr_factor(1) == pytest.approx(0.5) and cosine.lr_factor(2) == pytest.approx(1.0)
    assert cosine.lr_factor(9, 0.999) < 0.01
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="exponential")


def test_start_epoch_rewinds_the_schedule(digits, preset, cpu):
    model = new_model(preset, digits, seed=0)
    history = fit(model, digits.train, replace(preset.train, epochs=4, milestones=(0.5,)), cpu, start_epoch=2)
    assert [r.epoch for r in history.epochs] == [2, 3]
    assert history.epochs[0].lr == pytest.approx(preset.train.lr * 0.1)


def test_checkpoint_round_trip_predicts_identically(digits, preset, cpu, tmp_path):
    model = new_model(preset, digits, seed=0)
    fit(model, digits.train, _short(preset, 1), cpu)
    masks = {"net.0.weight": torch.ones_like(model.net[0].weight)}
    meta = model_metadata(preset.arch, digits, model_options=preset.model_options, seed=0, epochs=1)
    path = save_checkpoint(tmp_path / "m.pt", model, meta, masks)
    checkpoint = load_checkpoint(path, expect={"arch": "digits_resnet"})
    restored = restore_model(checkpoint)
    assert torch.equal(predict(model, digits.test, cpu), predict(restored, digits.test, cpu))
    assert checkpoint.masks.keys() == masks.keys() and checkpoint.metadata["seed"] == 0
    torch.load(path, weights_only=True)  # safe loading works


def test_corrupt_and_mismatched_checkpoints_raise_clear_errors(digits, preset, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    model = new_model(preset, digits, seed=0)
    path = save_checkpoint(tmp_path / "m.pt", model, model_metadata(preset.arch, digits, split_digest="abc"))
    with pytest.raises(CheckpointError, match="split_digest: checkpoint has 'abc', expected 'xyz'"):
        load_checkpoint(path, expect={"split_digest": "xyz"})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    wrong = load_checkpoint(path)
    wrong.metadata["model_options"] = {"width": 8}
    with pytest.raises(CheckpointError, match="do not fit"):
        restore_model(wrong)
