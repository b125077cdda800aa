"""Unlearning methods on digits class-wise forgetting (class 0): masks, isolation, forgetting."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from unlearn.errors import ConfigError
from unlearn.masks import prunable_parameters
from unlearn.methods import default_config, ft, l1_sparse, retrain, rl, run_method, salun
from unlearn.presets import get_preset
from unlearn.splits import class_wise
from unlearn.train import accuracy, predict

MY_METHODS = ("retrain", "ga", "rl", "l1_sparse", "salun")


@pytest.fixture(scope="module")
def sets(digits):
    """(Dr, Df) of class-wise forgetting of class 0, Dr thinned to a quarter to keep tests fast."""
    split = class_wise(digits, [0])
    retain = split.retain_set(digits)
    return retain.subset(range(0, len(retain), 4)), split.forget_set(digits)


def short_config(name: str, epochs: int = 1, **changes):
    """The method's digits config, shrunk to `epochs`."""
    if name == "retrain":
        return retrain.Config(train=replace(get_preset("digits").train, epochs=epochs), **changes)
    return default_config(name, "digits", epochs=epochs, **changes)


def state(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def parameters(model) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def half_mask(model) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        name: (torch.rand(weight.shape, generator=generator) < 0.5).float()
        for name, weight in prunable_parameters(model).items()
    }


@pytest.mark.parametrize("name", MY_METHODS)
def test_masked_weights_stay_zero_and_input_model_is_untouched(name, digits_original, sets, cpu):
    retain, forget = sets
    masks = half_mask(digits_original)
    before = state(digits_original)
    result = run_method(name, digits_original, retain, forget, cpu, masks=masks, config=short_config(name))
    after = parameters(result.model)
    for weight_name, mask in masks.items():
        assert after[weight_name][mask == 0].abs().max() == 0.0
    assert result.model is not digits_original and result.seconds > 0
    assert all(torch.equal(value, before[key]) for key, value in digits_original.state_dict().items())
    moved = [not torch.equal(after[key], before[key]) for key in after]
    assert any(moved)


class Untouchable:
    """A forget set that fails the test on any use."""

    def __getattr__(self, attribute):
        raise AssertionError(f"retrain read the forget set (.{attribute})")

    def __len__(self):
        raise AssertionError("retrain read the forget set (len)")


def test_retrain_trains_on_retain_ids_only(digits_original, sets, cpu, monkeypatch):
    retain, forget = sets
    seen = []
    real_fit = retrain.fit

    def recording_fit(model, data, *args, **kwargs):
        seen.append(set(data.ids))
        return real_fit(model, data, *args, **kwargs)

    monkeypatch.setattr(retrain, "fit", recording_fit)
    retrain.run(digits_original, retain, Untouchable(), short_config("retrain"), cpu)
    assert seen == [set(retain.ids)]
    assert seen[0].isdisjoint(forget.ids)


def test_retrain_starts_from_a_fresh_seeded_init(digits_original):
    first = parameters(retrain.reinitialise(digits_original, seed=1))
    again = parameters(retrain.reinitialise(digits_original, seed=1))
    original = parameters(digits_original)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["net.0.weight"], original["net.0.weight"])


@pytest.mark.slow
def test_retrain_forgets_the_class_and_keeps_the_rest(digits, digits_original, cpu):
    split = class_wise(digits, [0])
    retain, forget = split.retain_set(digits), split.forget_set(digits)
    model = run_method(
        "retrain", digits_original, retain, forget, cpu, config=default_config("retrain", "digits")
    ).model
    assert accuracy(model, forget, cpu) == 0.0  # UA = 100
    assert accuracy(model, retain, cpu) >= 95.0


def forget_loss(model, forget, cpu) -> float:
    return float(F.cross_entropy(predict(model, forget, cpu), forget.labels))


def test_ga_raises_the_loss_on_the_forget_set(digits_original, sets, cpu):
    retain, forget = sets
    result = run_method("ga", digits_original, retain, forget, cpu, config=short_config("ga", epochs=2))
    before, after = forget_loss(digits_original, forget, cpu), forget_loss(result.model, forget, cpu)
    assert after > 0.1 and after > 20 * before


def l1_of(model) -> float:
    return float(l1_sparse.l1_norm(model).detach())


def test_l1_sparse_shrinks_the_l1_norm_more_than_ft(digits_original, sets, cpu):
    retain, forget = sets
    budget = dict(epochs=2, lr=0.05, batch_size=128, seed=0)
    tuned = l1_sparse.run(digits_original, retain, forget, l1_sparse.Config(gamma=5e-3, **budget), cpu)
    plain = ft.run(digits_original, retain, forget, ft.Config(**budget), cpu)
    assert l1_of(tuned.model) < 0.95 * l1_of(plain.model)


def test_l1_gradient_is_the_gradient_of_the_penalty():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[0, :2] = 0.0  # pruned weights: |.| has subgradient 0 there, and stays put
    config = l1_sparse.Config(gamma=0.3, epochs=4)
    inputs = torch.randn(5, 4)
    gamma = l1_sparse.gamma_at(config, 1)
    (model(inputs).sum() + gamma * l1_sparse.l1_norm(model)).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(inputs).sum().backward()
    data_gradient = model[0].weight.grad.clone()
    with torch.no_grad():
        l1_sparse.l1_gradient(config)(model, 1)
    for got, want in zip((p.grad for p in model.parameters()), expected, strict=True):
        torch.testing.assert_close(got, want)
    added = model[0].weight.grad - data_gradient
    assert torch.all(added[0, :2] == 0) and torch.allclose(added[1], gamma * model[0].weight[1].sign())


@pytest.mark.parametrize(
    ("schedule", "no_l1", "expected"),
    [
        ("linear_decay", 0, [1.0, 0.8, 0.6, 0.4, 0.2]),
        ("linear_decay", 1, [1.0, 0.75, 0.5, 0.25, 0.0]),
        ("linear_increase", 1, [0.0, 0.25, 0.5, 0.75, 0.0]),
        ("constant", 2, [1.0, 1.0, 1.0, 0.0, 0.0]),
        ("linear_decay", 5, [1.0] * 5),  # the official code's fallback when every epoch is l1-free
    ],
)
def test_gamma_schedules(schedule, no_l1, expected):
    config = l1_sparse.Config(gamma=2.0, epochs=5, schedule=schedule, no_l1_epochs=no_l1)
    assert [l1_sparse.gamma_at(config, e) for e in range(5)] == pytest.approx([2 * g for g in expected])


def test_l1_sparse_rejects_bad_settings():
    with pytest.raises(ConfigError, match="schedule"):
        l1_sparse.Config(schedule="cosine")
    with pytest.raises(ConfigError, match="lr_schedule 'warm'"):
        l1_sparse.Config(lr_schedule="warm")
    with pytest.raises(ConfigError, match="lr_schedule 'warm'"):
        default_config("ft", "digits", lr_schedule="warm")
    with pytest.raises(ConfigError, match="no_l1_epochs"):
        l1_sparse.Config(epochs=3, no_l1_epochs=4)


def test_saliency_ranks_globally_across_tensors():
    scores = {"a": torch.tensor([1.0, 5.0]), "b": torch.tensor([[3.0, 4.0], [2.0, 0.5]])}
    masks = salun.top_fraction(scores, 0.5)
    assert masks["a"].tolist() == [0.0, 1.0]
    assert masks["b"].tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_salun_moves_only_salient_weights(digits_original, sets, cpu, monkeypatch):
    retain, forget = sets
    captured = {}
    real = salun.saliency_masks

    def capture(*args, **kwargs):
        captured.update(real(*args, **kwargs))
        return captured

    monkeypatch.setattr(salun, "saliency_masks", capture)
    result = salun.run(digits_original, retain, forget, short_config("salun", rho=0.1), cpu)
    original, after = parameters(digits_original), parameters(result.model)
    total = sum(mask.numel() for mask in captured.values())
    assert sum(mask.sum() for mask in captured.values()) == int(0.1 * total)
    for name, mask in captured.items():
        assert torch.equal(after[name][mask == 0], original[name][mask == 0]), name
    assert any(not torch.equal(after[n][m == 1], original[n][m == 1]) for n, m in captured.items())


def test_random_labels_are_fresh_each_epoch_and_reproducible():
    retain_labels = torch.arange(1, 10).repeat(3)
    labels = rl.random_labeller(200, retain_labels, 10, seed=0)
    assert torch.equal(labels(0), labels(0))
    assert not torch.equal(labels(0)[:200], labels(1)[:200])
    assert torch.equal(labels(3)[200:], retain_labels)
    assert set(labels(0)[:200].tolist()) == set(range(10))


def test_rl_changes_forget_predictions(digits_original, sets, cpu):
    retain, forget = sets
    result = run_method("rl", digits_original, retain, forget, cpu, config=short_config("rl", epochs=2))
    before = predict(digits_original, forget, cpu).argmax(1)
    after = predict(result.model, forget, cpu).argmax(1)
    assert (after != before).float().mean() > 0.3


def test_run_method_rejects_unknown_names_and_wrong_configs(digits_original, sets, cpu):
    retain, forget = sets
    with pytest.raises(ConfigError, match="unknown unlearning method"):
        run_method("sparse_magic", digits_original, retain, forget, cpu)
    with pytest.raises(ConfigError, match="takes a Config"):
        run_method("ga", digits_original, retain, forget, cpu, config=ft.Config())


def test_documented_defaults():
    digits_l1 = default_config("l1_sparse", "digits")
    assert (digits_l1.gamma, digits_l1.lr, digits_l1.batch_size) == (1e-4, 0.2, 32)
    assert (digits_l1.schedule, digits_l1.epochs, digits_l1.no_l1_epochs) == ("linear_decay", 1, 0)
    digits_ft = default_config("ft", "digits")
    assert (digits_ft.epochs, digits_ft.batch_size, digits_ft.lr_schedule) == (1, 32, "cosine")
    assert digits_ft.train_config().schedule == "cosine"
    assert {default_config(name, "digits").epochs for name in ("rl", "salun")} == {3}
    assert default_config("ft").lr_schedule == "constant"
    assert default_config("l1_sparse").gamma == 1e-4
    assert (default_config("ga").lr, default_config("ga").epochs) == (1e-4, 5)
    assert (default_config("salun").rho, default_config("salun").lr) == (0.5, 0.013)
    assert default_config("retrain").train.epochs == 182
    assert default_config("retrain", "digits").train == get_preset("digits").train


def test_no_method_imports_torch_dynamo():
    """torch.optim imports torch._dynamo on its first optimizer (about 2 s of a stage process's start,
    and of the first RTE a process timed): no method, the trainer included, and no evaluation may."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from dataclasses import replace\n"
        "from unlearn.data import load_dataset\n"
        "from unlearn.methods import METHOD_NAMES, default_config, run_method\n"
        "from unlearn.metrics import evaluate\n"
        "from unlearn.original import new_model\n"
        "from unlearn.presets import get_preset\n"
        "from unlearn.splits import class_wise\n"
        "preset, digits, cpu = get_preset('digits'), load_dataset('digits'), torch.device('cpu')\n"
        "split = class_wise(digits, [0])\n"
        "retain, forget = split.retain_set(digits), split.forget_set(digits)\n"
        "model = new_model(preset, digits, seed=0)\n"
        "for name in METHOD_NAMES:\n"
        "    config = default_config(name, 'digits')\n"
        "    if name == 'retrain':\n"
        "        config = replace(config, train=replace(config.train, epochs=1))\n"
        "    run_method(name, model, retain, forget, cpu, config=config)\n"
        "    assert 'torch._dynamo' not in sys.modules, f'{name} imported torch._dynamo'\n"
        "evaluate(model, retain, forget, split.test_set(digits), cpu)\n"
        "assert 'torch._dynamo' not in sys.modules, 'evaluate imported torch._dynamo'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
