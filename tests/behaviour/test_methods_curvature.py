"""IU and FF: the curvature maths against slow dense references, masks, seeding, forgetting."""

from collections import Counter
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.data import TensorSet
from unlearn.errors import ConfigError
from unlearn.masks import prunable_parameters
from unlearn.methods import curvature, default_config, run_method
from unlearn.methods.curvature import (
    fisher_sum,
    inverse_fisher_product,
    per_sample_gradient_rows,
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
    rows = per_sample_gradient_rows(model, data.inputs, data.labels)
    torch.testing.assert_close(rows, _loop_gradients(model, data))


class _Scale(nn.Module):
    """A module the layer-wise path has no rule for: its gradients come from torch.func."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels).view(1, -1, 1, 1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs * self.weight


class _Twice(nn.Module):
    """One Linear applied twice (shared weights), on a (B, T, features) input, then pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        tokens = inputs.flatten(2).transpose(1, 2)  # (B, positions, 4 channels)
        return torch.tanh(self.linear(torch.tanh(self.linear(tokens)))).mean(1)


class _Pair(nn.Module):
    """Returns a tuple, which the hooks cannot follow: the whole-model torch.func path runs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 3)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(inputs), inputs


class _WeightedPair(nn.Module):
    """Holds its own weight and returns a tuple."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(outputs, inputs))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs @ self.weight.T, inputs


def _with_statistics(model: nn.Module) -> nn.Module:
    """Eval mode, with BatchNorm running statistics and affine parameters away from 0 and 1."""
    generator = torch.Generator().manual_seed(7)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model.eval()


def _models() -> dict[str, nn.Module]:
    """Small models: specialised layers (Conv2d, eval BatchNorm, Linear, in-place ReLU), layers
    with no rule (grouped conv, GroupNorm, a custom module), shared weights, a tuple output."""
    torch.manual_seed(0)
    return {
        "conv-bn-linear": _with_statistics(
            nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1),
                nn.BatchNorm2d(4),
                nn.ReLU(inplace=True),
                nn.Conv2d(4, 4, 3, stride=2, bias=False),
                nn.BatchNorm2d(4),
                nn.ReLU(inplace=True),
                nn.Flatten(),
                nn.Linear(4, 3),
            )
        ),
        "fallback layers": _with_statistics(
            nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1),
                nn.Conv2d(4, 4, 3, padding=1, groups=2),
                nn.GroupNorm(2, 4),
                _Scale(4),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(64, 3),
            )
        ),
        "shared weights": nn.Sequential(nn.Conv2d(1, 4, 1), _Twice(), nn.Linear(4, 3)).eval(),
        "tuple output": nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), _Pair(), _First()).eval(),
    }


class _First(nn.Module):
    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return pair[0]


@pytest.mark.parametrize("name", list(_models()))
def test_layerwise_per_sample_gradients_match_a_loop(name):
    """IU's matrix G: Conv2d and Linear weights written straight into their columns, the rest copied
    (a shared module's calls added up), and the torch.func path where the hooks cannot follow."""
    model, data = _models()[name], _tiny_set(7, seed=11)
    out = torch.full((7, sum(p.numel() for p in model.parameters())), float("nan"))
    rows = per_sample_gradient_rows(model, data.inputs, data.labels, out=out)
    assert rows.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, _loop_gradients(model, data), rtol=1e-4, atol=1e-6)


# Wide convs keep every vector's output gradients and form their products once (`_grouped_calls`):
# as the defaults set it (the tiny models' convs are too narrow to group), every plain conv grouped,
# and a budget that holds the first conv's buffer (7 samples x 2 vectors x 4 channels x 16 positions)
# and no more.
GROUPINGS = {
    "defaults": {},
    "every conv": {"_GROUP_MIN_PATCH": 1},
    "budget": {"_GROUP_MIN_PATCH": 1, "_GROUP_FLOATS": 7 * 2 * 4 * 16},
}


@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("name", list(_models()))
def test_layerwise_fisher_matches_the_loop_formula(monkeypatch, name, grouping):
    for constant, value in GROUPINGS[grouping].items():
        monkeypatch.setattr(curvature, constant, value)
    model, data = _models()[name], _tiny_set(7, seed=12)
    fast = fisher_sum(model, data.inputs)
    slow = _per_sample_fisher(model, data)
    for (key, got), want in zip(fast.items(), slow, strict=True):
        torch.testing.assert_close(got / len(data), want, rtol=1e-4, atol=1e-7, msg=lambda m, key=key: f"{key}: {m}")
    assert all(value.abs().sum() > 0 for value in fast.values())  # every tensor got a gradient


@pytest.mark.parametrize(("grouping", "grouped"), [("defaults", []), ("every conv", [0, 3]), ("budget", [0])])
def test_grouped_convs_are_the_wide_ones_within_the_budget(monkeypatch, grouping, grouped):
    for constant, value in GROUPINGS[grouping].items():
        monkeypatch.setattr(curvature, constant, value)
    model, data = _models()["conv-bn-linear"], _tiny_set(7, seed=12)
    _, calls = curvature._forward_recorded(model, data.inputs)
    buffers = curvature._grouped_calls(calls, Counter(call.module for call in calls), 2)
    assert [calls[index].prefix for index in buffers] == [str(index) for index in grouped]
    assert all(buffer.shape[:2] == (7, 2) for buffer in buffers.values())


@pytest.mark.parametrize("classes", [2, 10])
def test_logit_fisher_factor_is_exact_with_one_vector_fewer_than_classes(classes):
    """The vectors fisher_sum backpropagates: C - 1 per sample, their outer products diag(p) - p p^T,
    also where a probability is exactly 0 or 1 (a confident model in float32)."""
    probs = torch.softmax(torch.randn(6, classes, generator=torch.Generator().manual_seed(3)) * 4, dim=1)
    probs[1] = 0.0
    probs[1, 0] = 1.0
    probs[2, 1:] = torch.full((classes - 1,), 1.0 / (classes - 1))
    probs[2, 0] = 0.0
    factor = curvature._logit_fisher_factor(probs)
    assert factor.shape == (classes - 1, 6, classes) and factor.dtype == probs.dtype
    summed = torch.einsum("jbc,jbd->bcd", factor.double(), factor.double())
    p = probs.double()
    torch.testing.assert_close(summed, torch.diag_embed(p) - p[:, :, None] * p[:, None, :], rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(3, 4, 3, stride=2),
        nn.Conv2d(3, 4, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
        nn.Conv2d(3, 4, 1),
    ],
)
def test_conv_patches_are_f_unfolds(conv):
    inputs = torch.randn(5, 3, 9, 7, generator=torch.Generator().manual_seed(16))
    call = curvature._Call(conv, "", (inputs,), conv(inputs))
    want = F.unfold(inputs, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    assert torch.equal(curvature._unfolded(call), want)


def test_layerwise_fisher_chunks_match_one_pass(monkeypatch):
    model, data = _models()["conv-bn-linear"], _tiny_set(9, seed=13)
    whole = fisher_sum(model, data.inputs)
    monkeypatch.setattr(curvature, "_CHUNK_FLOATS", 1)  # one sample per product
    for key, value in fisher_sum(model, data.inputs).items():
        torch.testing.assert_close(value, whole[key])


@pytest.mark.parametrize("name", ["conv-bn-linear", "tuple output"])
def test_sampled_fisher_is_an_unbiased_seeded_estimate(name):
    model, data = _models()[name], _tiny_set(3, seed=14)
    exact = fisher_sum(model, data.inputs)
    copies = data.inputs.repeat(2000, 1, 1, 1)  # 2,000 draws per sample

    def sampled(seed: int) -> dict[str, torch.Tensor]:
        return fisher_sum(model, copies, torch.Generator().manual_seed(seed))

    first = sampled(0)
    for key, value in exact.items():  # the mean of the draws is the exact sum (within ~3 standard errors)
        torch.testing.assert_close(first[key].sum() / 2000, value.sum(), rtol=0.1, atol=0)
    assert all(torch.equal(first[key], value) for key, value in sampled(0).items())
    assert not all(torch.equal(first[key], value) for key, value in sampled(1).items())


def test_leading_directions_and_one_draw_give_the_factor_in_expectation():
    """FF's leading_directions: the largest directions as they are, one of the rest drawn and scaled
    so that the outer products add up to diag(p) - p p^T in expectation; none left: a zero vector."""
    probs = torch.softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(5)) * 3, dim=1)
    probs[3] = torch.nn.functional.one_hot(torch.tensor(2), 10).float()  # no weight left to draw
    factor = curvature._logit_fisher_factor(probs)
    assert torch.equal(curvature._leading_and_drawn(factor, 9, torch.Generator()), factor)
    draws = 20_000
    repeated = factor.repeat(1, draws, 1)
    vectors = curvature._leading_and_drawn(repeated, 2, torch.Generator().manual_seed(0))
    assert vectors.shape == (3, 4 * draws, 10) and torch.equal(vectors[:2], repeated[-2:])
    assert torch.isfinite(vectors).all() and not vectors[2, 3::4].any()
    mean = torch.einsum("jbc,jbd->bcd", vectors.double(), vectors.double()).view(draws, 4, 10, 10).mean(0)
    target = torch.einsum("jbc,jbd->bcd", factor.double(), factor.double())
    torch.testing.assert_close(mean, target, rtol=0, atol=0.02 * target.abs().max().item())
    again = curvature._leading_and_drawn(repeated, 2, torch.Generator().manual_seed(0))
    assert torch.equal(again, vectors)


@pytest.mark.parametrize("leading", [0, 1, 2])
def test_fisher_from_leading_directions_is_an_unbiased_seeded_estimate(leading):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 6)).eval()
    data = _tiny_set(3, seed=15)
    exact = fisher_sum(model, data.inputs)
    copies = data.inputs.repeat(2000, 1, 1, 1)  # 2,000 draws per sample
    estimate = fisher_sum(model, copies, torch.Generator().manual_seed(0), leading)
    for key, value in exact.items():  # the mean of the draws is the exact sum (within ~3 standard errors)
        torch.testing.assert_close(estimate[key].sum() / 2000, value.sum(), rtol=0.05, atol=0)
    assert all(
        torch.equal(estimate[key], value)
        for key, value in fisher_sum(model, copies, torch.Generator().manual_seed(0), leading).items()
    )
    # a module holding weights that returns a tuple: the hooks cannot follow it, and torch.func's
    # sum over every class is exact
    model = nn.Sequential(nn.Flatten(), _WeightedPair(16, 6), _First()).eval()
    with pytest.raises(curvature._Unsupported):
        curvature._forward_recorded(model, data.inputs)
    exact = fisher_sum(model, data.inputs)
    for key, value in fisher_sum(model, data.inputs, torch.Generator(), leading).items():
        torch.testing.assert_close(value, exact[key])


@pytest.mark.parametrize("damping, solver", [(1.0, "conjugate gradients"), (1e-6, "direct")])
def test_woodbury_product_by_conjugate_gradients_or_direct(monkeypatch, damping, solver):
    generator = torch.Generator().manual_seed(8)
    gradients = torch.randn(320, 200, generator=generator, dtype=torch.float64) * 0.05
    vector = torch.randn(200, generator=generator, dtype=torch.float64)
    assert curvature._CG_MIN_SAMPLES <= 320  # so CG runs first, with 320 // 32 = 10 steps
    outcomes = []
    solve = curvature._conjugate_gradients

    def spy(*args, **kwargs):
        outcomes.append(solve(*args, **kwargs))
        return outcomes[-1]

    monkeypatch.setattr(curvature, "_conjugate_gradients", spy)
    result = inverse_fisher_product(vector, [lambda: gradients], damping)
    dense = damping * torch.eye(200, dtype=torch.float64) + gradients.T @ gradients / 320
    torch.testing.assert_close(result, torch.linalg.solve(dense, vector), rtol=1e-5, atol=1e-8)
    # damping 1: the system is well conditioned and 10 steps reach the tolerance; 1e-6: they
    # do not, and the direct solve gives the same solution
    assert (outcomes[0] is not None) == (solver == "conjugate gradients")
    if outcomes[0] is not None:  # G^T w, summed along the way, is the product it saves
        torch.testing.assert_close(outcomes[0][1], gradients.T @ outcomes[0][0])


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


@pytest.mark.parametrize("masked", [False, True])
def test_iu_step_equals_the_dense_influence_formula(cpu, masked):
    model, retain_set, forget_set = _tiny_model(), _tiny_set(12, seed=4), _tiny_set(4, seed=5)
    config = IUConfig(alpha=2.0, num_fisher_samples=100, damping=0.1)  # m = all 12 retain samples
    mask = (torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(9)) < 0.5).float()
    masks = {"0.weight": mask} if masked else None
    result = run_method("iu", model, retain_set, forget_set, cpu, config=config, masks=masks)
    retain_grads, forget_grads = _loop_gradients(model, retain_set), _loop_gradients(model, forget_set)
    direction = forget_grads.sum(0) / 16 - 4 / (16 * 12) * retain_grads.sum(0)
    torch.testing.assert_close(influence_direction(model, retain_set, forget_set, 5), direction)
    keep = torch.ones_like(direction, dtype=torch.bool)
    if masked:  # the Fisher and the step live on the unmasked weights only
        keep[: mask.numel()] = mask.flatten() == 1
    retain_grads, direction = retain_grads[:, keep].double(), direction[keep].double()
    fisher = 0.1 * torch.eye(direction.numel(), dtype=torch.float64) + retain_grads.T @ retain_grads / 12
    step = 2.0 * torch.linalg.solve(fisher, direction)
    after = torch.cat([p.flatten() for p in result.model.parameters()])
    before = torch.cat([p.flatten() for p in model.parameters()])
    torch.testing.assert_close((after - before)[keep].double(), step, rtol=1e-4, atol=1e-6)
    assert torch.equal(after[~keep], torch.zeros_like(after[~keep]))


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
    with pytest.raises(ConfigError, match="leading_directions"):
        default_config("ff", leading_directions=-1)


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("method", ["iu", "ff"])
def test_cuda_gives_the_cpu_result(small_case, cpu, method):
    # the same code on both devices: hooks, unfolded inputs, channels_last weights on CUDA,
    # FF's noise drawn on the CPU; masked weights stay zero on the GPU too
    model, retain_set, forget_set, masks = small_case
    config = default_config(method, "digits", **_FAST[method])
    on_cpu = run_method(method, model, retain_set, forget_set, cpu, masks=masks, config=config)
    on_gpu = run_method(method, model, retain_set, forget_set, torch.device("cuda"), masks=masks, config=config)
    for (name, a), b in zip(on_cpu.model.named_parameters(), on_gpu.model.parameters(), strict=True):
        torch.testing.assert_close(
            b.detach().cpu(), a.detach(), rtol=1e-2, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )
        if name in masks:
            assert b[masks[name].to(b.device) == 0].abs().max() == 0
