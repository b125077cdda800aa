"""The one training loop every method uses: SGD, LR schedules, masks, AMP on CUDA, channels_last.

Data stays on the device as tensors; batches are index slices of it, so there is no
DataLoader, worker process or host-to-device copy per step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.data import TensorSet, batches, random_crop_flip
from unlearn.errors import ConfigError
from unlearn.masks import Masks, apply_masks, mask_gradients, masks_to

log = logging.getLogger(__name__)

SCHEDULES = ("multistep", "cosine", "constant")

# objective(logits, targets, epoch) -> scalar loss to minimise
Objective = Callable[[Tensor, Tensor, int], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """SGD recipe. Defaults are the paper's CIFAR-10 recipe."""

    epochs: int = 182
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `epochs`: 91 and 136 of 182
    gamma: float = 0.1
    warmup_epochs: int = 0
    augment: bool = True
    crop_padding: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} is not one of {SCHEDULES}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ConfigError(f"milestones are fractions of the epochs in (0, 1), got {self.milestones}")

    def lr_factor(self, epoch: int, step_fraction: float = 0.0) -> float:
        """Multiplier of `lr` at `epoch` plus `step_fraction` of it."""
        position = epoch + step_fraction
        if self.warmup_epochs and position < self.warmup_epochs:
            return position / self.warmup_epochs
        if self.schedule == "multistep":
            passed = sum(epoch >= int(m * self.epochs) for m in self.milestones)
            return self.gamma**passed
        if self.schedule == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1)
            return 0.5 * (1 + math.cos(math.pi * (position - self.warmup_epochs) / span))
        return 1.0


@dataclass
class EpochRecord:
    """What one epoch did: mean loss, batch accuracy on the (augmented) inputs, LR, time."""

    epoch: int
    loss: float
    accuracy: float
    lr: float
    seconds: float


@dataclass
class History:
    """Per-epoch records of one `fit` call and its total wall time."""

    epochs: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0


class SGD:
    """torch.optim.SGD's update (momentum without dampening, no Nesterov), without torch.optim.

    torch.optim imports torch._dynamo when its first optimizer is made, about 2 s of every stage
    process that trains on two cores; this is the same arithmetic in the same order as
    torch.optim.SGD's foreach step (checked equal to it, step by step, in tests/unit/test_train.py).
    Tensors without a gradient are skipped, as there.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: dict[int, Tensor] = {}  # momentum buffers by index in `params`

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        at = [i for i, p in enumerate(self.params) if p.grad is not None]
        params, grads = [self.params[i] for i in at], [self.params[i].grad for i in at]
        if not params:
            return
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        if self.momentum:  # buffer = momentum * buffer + grad; a tensor's first buffer is its grad
            kept = [(self.buffers[i], g) for i, g in zip(at, grads, strict=True) if i in self.buffers]
            if kept:
                torch._foreach_mul_([b for b, _ in kept], self.momentum)
                torch._foreach_add_([b for b, _ in kept], [g for _, g in kept])
            for i, g in zip(at, grads, strict=True):
                if i not in self.buffers:
                    self.buffers[i] = torch.clone(g).detach()
            grads = [self.buffers[i] for i in at]
        torch._foreach_add_(params, grads, alpha=-self.lr)


def cross_entropy(logits: Tensor, targets: Tensor, epoch: int) -> Tensor:
    """The default objective."""
    return F.cross_entropy(logits, targets)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move the model to `device` (channels_last on CUDA)."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


@contextmanager
def _training_layout(model: nn.Module, device: torch.device) -> Iterator[None]:
    """channels_last while `fit` trains on the CPU as well, then the default layout again.

    oneDNN's convolutions are faster in channels_last on the CPU too: a 20-epoch digits training
    of `digits_resnet` took 0.78x the time on two threads (3.74 s against 4.82 s, medians of 3,
    2026-12-07) and 0.92x on one. Prediction gained nothing there, so a CPU model leaves `fit` in
    the default layout (on CUDA, `prepare_model` keeps channels_last throughout).
    """
    if device.type != "cpu":
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def fit(
    model: nn.Module,
    data: TensorSet,
    config: TrainConfig,
    device: torch.device,
    *,
    masks: Masks | None = None,
    objective: Objective = cross_entropy,
    epoch_labels: Callable[[int], Tensor] | None = None,
    start_epoch: int = 0,
    after_step: Callable[[nn.Module], None] | None = None,
    add_gradient: Callable[[nn.Module, int], None] | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> History:
    """Train `model` in place on `data` with SGD and return the per-epoch history.

    Args:
        masks: weights to keep at exactly zero after every optimiser step.
        objective: loss to minimise, given logits, targets and the epoch.
        epoch_labels: labels for all of `data` at an epoch (random labelling).
        start_epoch: resume the schedule here (OMP's weight and LR rewinding).
        after_step: called after each optimiser step (after masks are re-applied).
        add_gradient: called with the model and the epoch after each backward pass, to add the
            gradient of a penalty known in closed form (l1-sparse's gamma * sign(theta)), which is
            cheaper than differentiating the penalty through autograd at every step.
        on_epoch_end: called with the finished epoch's index and the model.
    """
    torch.manual_seed(config.seed + start_epoch)
    generator = torch.Generator().manual_seed(config.seed + start_epoch)
    augment_generator = generator if device.type == "cpu" else None
    model = prepare_model(model, device)
    data = data.to(device)
    masks = masks_to(masks, device)
    apply_masks(model, masks)
    optimizer = SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    steps = math.ceil(len(data) / config.batch_size)
    history = History()
    started = time.perf_counter()
    with _training_layout(model, device):
        for epoch in range(start_epoch, config.epochs):
            model.train()
            epoch_started = time.perf_counter()
            labels = data.labels if epoch_labels is None else epoch_labels(epoch).to(device)
            epoch_data = data.with_labels(labels)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            for step, (inputs, targets) in enumerate(
                batches(epoch_data, config.batch_size, shuffle=True, generator=generator)
            ):
                if len(targets) < 2:  # BatchNorm cannot train on a single sample
                    continue
                optimizer.lr = config.lr * config.lr_factor(epoch, step / steps)
                if config.augment:
                    inputs = random_crop_flip(inputs, config.crop_padding, augment_generator)
                if inputs.ndim == 4:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                with _autocast(device):
                    logits = model(inputs)
                    loss = objective(logits.float(), targets, epoch)
                optimizer.zero_grad()
                loss.backward()
                if add_gradient is not None:
                    with torch.no_grad():
                        add_gradient(model, epoch)
                mask_gradients(model, masks)
                optimizer.step()
                apply_masks(model, masks)
                if after_step is not None:
                    after_step(model)
                loss_sum += loss.detach() * len(targets)
                correct += (logits.argmax(1) == targets).sum()
                seen += len(targets)
            record = EpochRecord(
                epoch,
                float(loss_sum) / max(seen, 1),
                float(correct) / max(seen, 1),
                config.lr * config.lr_factor(epoch),
                time.perf_counter() - epoch_started,
            )
            history.epochs.append(record)
            log.info(
                "epoch %d/%d loss %.4f acc %.4f lr %.4g %.2fs",
                epoch + 1,
                config.epochs,
                record.loss,
                record.accuracy,
                record.lr,
                record.seconds,
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)
    history.seconds = time.perf_counter() - started
    return history


@torch.no_grad()
def predict(model: nn.Module, data: TensorSet, device: torch.device, batch_size: int = 1024) -> Tensor:
    """Logits of `model` on every row of `data`, in eval mode, on the CPU as float32."""
    model = prepare_model(model, device)
    model.eval()
    data = data.to(device)
    outputs = []
    for inputs, _ in batches(data, batch_size):
        if device.type == "cuda":
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with _autocast(device):
            outputs.append(model(inputs).float().cpu())
    if not outputs:
        return torch.empty(0)
    return torch.cat(outputs)


def accuracy(model: nn.Module, data: TensorSet, device: torch.device) -> float:
    """Top-1 accuracy of `model` on `data`, in percent (0 for an empty set)."""
    if len(data) == 0:
        return 0.0
    logits = predict(model, data, device)
    return 100.0 * float((logits.argmax(1) == data.labels.cpu()).float().mean())
