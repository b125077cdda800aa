"""IU and FF: the curvature maths against slow dense references, masks, seeding, forgetting."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.data import TensorSet
from unlearn.errors import ConfigError
from unlearn.masks import prunable_parameters
from unlearn.methods import default_config, run_method
from unlearn.methods.curvature import (
    flatten_rows,
    inverse_fisher_product,
    per_sample_loss_gradients,
    trainable_parameters,
)
from unlearn.methods.ff import fisher_diagonal
from unlearn.methods.iu import Config as IUConfig
from unlearn.methods.iu import influence_direction
from unlearn.original import new_model
from unlearn.presets import get_preset
from unlearn.splits import class_wise
from unlearn.train import accuracy, fit


def _tiny_model() -> nn.Module:
    """47 parameters: conv 1->2 (3x3, bias) on 4x4 inputs, then a 3-class linear head."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).eval()


def _tiny_set(count: int, seed: int) -> TensorSet:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(count, 1, 4, 4, generator=generator)
    labels = torch.randint(0, 3, (count,), generator=generator)
    return TensorSet(inputs, labels, tuple(f"tiny/{seed}/{i}" for i in range(count)))


def _gradient(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def _loop_gradients(model: nn.Module, data: TensorSet) -> torch.Tensor:
    """(n, d) per-sample CE gradients, one backward per sample."""
    return torch.stack(
        [
            _gradient(model, F.cross_entropy(model(x[None]), y[None]))
            for x, y in zip(data.inputs, data.labels, strict=True)
        ]
    )


def test_per_sample_gradients_match_a_loop():
    model, data = _tiny_model(), _tiny_set(6, seed=1)
    rows = flatten_rows(per_sample_loss_gradients(model, data.inputs, data.labels), list(trainable_parameters(model)))
    torch.testing.assert_close(rows, _loop_gradients(model, data))


@pytest.mark.parametrize("block_sizes", [(10,), (4, 4, 2)])
def test_woodbury_product_equals_a_dense_solve(block_sizes):
    model, data = _tiny_model(), _tiny_set(10, seed=2)
    gradients = _loop_gradients(model, data).double()  # m = 10, d = 47
    vector = torch.randn(gradients.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    damping = 0.05  # small, so the Fisher part matters
    dense = damping * torch.eye(gradients.shape[1], dtype=torch.float64) + gradients.T @ gradients / 10
    starts = torch.tensor((0, *block_sizes)).cumsum(0).tolist()
    blocks = [lambda a=a, b=b: gradients[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    result = inverse_fisher_product(vector, blocks, damping)
    torch.testing.assert_close(result, torch.linalg.solve(dense, vector))
    assert not torch.allclose(result, vector / damping)  # the low-rank part really acts


def test_iu_step_equals_the_dense_influence_formula(cpu):
    model, retain_set, forget_set = _tiny_model(), _tiny_set(12, seed=4), _tiny_set(4, seed=5)
    config = IUConfig(alpha=2.0, num_fisher_samples=100, damping=0.1)  # m = all 12 retain samples
    result = run_method("iu", model, retain_set, forget_set, cpu, config=config)
    retain_grads, forget_grads = _loop_gradients(model, retain_set), _loop_gradients(model, forget_set)
    direction = forget_grads.sum(0) / 16 - 4 / (16 * 12) * retain_grads.sum(0)
    torch.testing.assert_close(influence_direction(model, retain_set, forget_set, 5), direction)
    retain_grads, direction = retain_grads.double(), direction.double()
    fisher = 0.1 * torch.eye(direction.numel(), dtype=torch.float64) + retain_grads.T @ retain_grads / 12
    step = 2.0 * torch.linalg.solve(fisher, direction)
    moved = torch.cat([(a - b).flatten() for a, b in zip(result.model.parameters(), model.parameters(), strict=True)])
    torch.testing.assert_close(moved.double(), step, rtol=1e-4, atol=1e-6)


def _official_batch_mean_fisher(model: nn.Module, data: TensorSet, batch_size: int) -> list[torch.Tensor]:
    """The official `hessian` loop: C backward passes of the batch-mean CE per batch."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    batch_count = 0
    for start in range(0, len(data), batch_size):
        inputs = data.inputs[start : start + batch_size]
        output = model(inputs)
        probs = F.softmax(output, dim=-1).detach()
        for y in range(output.shape[1]):
            loss = F.cross_entropy(output, torch.full((len(inputs),), y))
            for acc, g in zip(total, torch.autograd.grad(loss, params, retain_graph=True), strict=True):
                acc += probs[:, y].mean() * g.square()
        batch_count += 1
    return [t / batch_count for t in total]


def _per_sample_fisher(model: nn.Module, data: TensorSet) -> list[torch.Tensor]:
    """mean_i sum_y p(y|x_i) (d log p(y|x_i))^2, one backward per sample and class."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for x in data.inputs:
        log_probs = torch.log_softmax(model(x[None]), dim=-1)[0]
        for y in range(len(log_probs)):
            for acc, g in zip(total, torch.autograd.grad(log_probs[y], params, retain_graph=True), strict=True):
                acc += log_probs[y].exp().detach() * g.square()
    return [t / len(data) for t in total]


@pytest.mark.parametrize("estimator", ["per_sample", "batch_mean"])
def test_ff_fisher_diagonal_matches_the_loop_formula(estimator):
    model, data = _tiny_model(), _tiny_set(10, seed=6)
    # batches of 4, 4 and 2 samples; Jacobians 3 samples at a time, so a batch takes two passes
    fast = list(fisher_diagonal(model, data, 4, estimator, per_sample_batch_size=3).values())
    slow = _per_sample_fisher(model, data) if estimator == "per_sample" else _official_batch_mean_fisher(model, data, 4)
    for got, want in zip(fast, slow, strict=True):
        torch.testing.assert_close(got, want)


@pytest.fixture(scope="module")
def small_case(digits, cpu):
    """A digits model trained 5 steps under a random 50% mask on every conv weight, and a small split.

    Trained a little because an untrained net under such a mask can output a constant
    (a dead ReLU block), and then no gradient reaches the conv weights.
    """
    preset = get_preset("digits")
    model = new_model(preset, digits, seed=0)
    generator = torch.Generator().manual_seed(0)
    masks = {
        name: (torch.rand(w.shape, generator=generator) < 0.5).float() for name, w in prunable_parameters(model).items()
    }
    fit(
        model,
        digits.train.subset(range(320)),
        replace(preset.train, epochs=1, batch_size=64),
        cpu,
        masks=masks,
    )
    return model.eval(), digits.train.subset(range(16, 80)), digits.train.subset(range(16)), masks


_FAST = {
    "iu": {"num_fisher_samples": 24, "per_sample_batch_size": 8, "alpha": 50.0},
    "ff": {"num_samples": 16, "per_sample_batch_size": 8, "alpha": 1e-4},
}


@pytest.mark.parametrize("method", ["iu", "ff"])
def test_masked_weights_stay_zero_and_the_input_is_untouched(small_case, cpu, method):
    model, retain_set, forget_set, masks = small_case
    before = {name: p.clone() for name, p in model.state_dict().items()}
    config = default_config(method, "digits", **_FAST[method])
    result = run_method(method, model, retain_set, forget_set, cpu, masks=masks, config=config)
    for name, p in model.state_dict().items():
        assert torch.equal(p, before[name]), f"{method} changed the input model's {name}"
    weights = dict(result.model.named_parameters())
    for name, mask in masks.items():
        assert weights[name][mask == 0].abs().max() == 0
        assert not torch.equal(weights[name][mask == 1], before[name][mask == 1])
    assert result.seconds > 0


def test_iu_gradient_blocks_give_the_single_block_result(small_case, cpu):
    model, retain_set, forget_set, masks = small_case
    config = default_config("iu", "digits", **_FAST["iu"])
    whole = run_method("iu", model, retain_set, forget_set, cpu, masks=masks, config=config)
    # 1 MiB holds fewer than 8 gradient rows here: 3 blocks of 8, recomputed pairwise.
    blocked = run_method(
        "iu", model, retain_set, forget_set, cpu, masks=masks, config=replace(config, gradient_memory_mb=1)
    )
    for a, b in zip(whole.model.parameters(), blocked.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_ff_is_seeded(small_case, cpu):
    model, retain_set, forget_set, _ = small_case
    config = default_config("ff", "digits", **_FAST["ff"])

    def weights(seed: int) -> torch.Tensor:
        result = run_method("ff", model, retain_set, forget_set, cpu, config=replace(config, seed=seed))
        return torch.cat([p.flatten() for p in result.model.parameters()])

    assert torch.equal(weights(0), weights(0))
    assert not torch.equal(weights(0), weights(1))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="damping"):
        default_config("iu", damping=0.0)
    with pytest.raises(ConfigError, match="estimator"):
        default_config("ff", estimator="diagonal")


@pytest.mark.slow
@pytest.mark.parametrize("method, min_ua, min_ra", [("iu", 80.0, 93.0), ("ff", 90.0, 97.0)])
def test_digits_defaults_forget_class_zero(digits, digits_original, cpu, method, min_ua, min_ra):
    # Measured with these defaults: IU UA 100 / RA 98.0, FF UA 100 / RA 100 (see PRESET_DEFAULTS).
    split = class_wise(digits, [0])
    retain_set, forget_set = split.retain_set(digits), split.forget_set(digits)
    assert 100 - accuracy(digits_original, forget_set, cpu) < 5  # the original remembers class 0
    result = run_method(method, digits_original, retain_set, forget_set, cpu, config=default_config(method, "digits"))
    assert 100 - accuracy(result.model, forget_set, cpu) >= min_ua
    assert accuracy(result.model, retain_set, cpu) >= min_ra
