"""Trainer throughput (images/s) against a plain DataLoader loop, same model, batch and device.

    python benchmarks/train_throughput.py [--device auto|cpu|cuda] [--repeats 3]

Prints the median images/s of each loop over the repeats and their ratio, for the digits
net on digits and for resnet18 (CIFAR stem) on random 32x32 data.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from machine import describe
from torch.utils.data import DataLoader, TensorDataset

from unlearn.data import TensorSet, load_dataset
from unlearn.device import pick_device, sync
from unlearn.models import build_model
from unlearn.train import TrainConfig, fit


@dataclass
class Case:
    name: str
    arch: str
    data: TensorSet
    batch_size: int
    epochs: int
    num_classes: int = 10


def reference_loop(model, data: TensorSet, case: Case, device: torch.device) -> float:
    """The textbook loop: DataLoader over a TensorDataset, copy each batch to the device, fp32."""
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    inputs = data.inputs.float() / (255.0 if data.inputs.dtype == torch.uint8 else 1.0)
    loader = DataLoader(
        TensorDataset(inputs, data.labels), batch_size=case.batch_size, shuffle=True, pin_memory=device.type == "cuda"
    )
    sync(device)
    started = time.perf_counter()
    for _ in range(case.epochs):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    sync(device)
    return len(data) * case.epochs / (time.perf_counter() - started)


def unlearn_trainer(model, data: TensorSet, case: Case, device: torch.device) -> float:
    """`unlearn.train.fit` (device-resident data, bf16 autocast and channels_last on CUDA)."""
    config = TrainConfig(epochs=case.epochs, lr=0.01, batch_size=case.batch_size, schedule="constant", augment=False)
    data = data.to(device)  # data lives on the device for the whole job: not part of the step cost
    sync(device)
    started = time.perf_counter()
    fit(model, data, config, device)
    sync(device)
    return len(data) * case.epochs / (time.perf_counter() - started)


def cases(device: torch.device) -> list[Case]:
    digits = load_dataset("digits").train
    gpu = device.type == "cuda"
    count = 8192 if gpu else 256
    generator = torch.Generator().manual_seed(0)
    cifar_like = TensorSet(
        torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator),
        torch.randint(0, 10, (count,), generator=generator),
        tuple(f"random/{i}" for i in range(count)),
    )
    return [
        Case("digits_resnet on digits (8x8)", "digits_resnet", digits, 128, 5 if gpu else 3),
        Case("resnet18 on random 32x32", "resnet18", cifar_like, 256 if gpu else 64, 2 if gpu else 1),
    ]


def measure(case: Case, device: torch.device, repeats: int) -> dict[str, float]:
    shape = tuple(case.data.inputs.shape[1:])
    results: dict[str, list[float]] = {"reference": [], "unlearn": []}
    for repeat in range(repeats + 1):  # the first round warms up kernels and caches
        for name, loop in (("reference", reference_loop), ("unlearn", unlearn_trainer)):
            torch.manual_seed(repeat)
            model = build_model(case.arch, shape, case.num_classes, [0.5] * shape[0], [0.25] * shape[0])
            speed = loop(model, case.data, case, device)
            if repeat:
                results[name].append(speed)
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = pick_device(args.device)
    print(f"{describe(device)}; median of {args.repeats} repeats")
    print(f"{'case':34} {'reference img/s':>16} {'unlearn img/s':>14} {'ratio':>6}")
    for case in cases(device):
        speed = measure(case, device, args.repeats)
        ratio = speed["unlearn"] / speed["reference"]
        print(f"{case.name:34} {speed['reference']:16.0f} {speed['unlearn']:14.0f} {ratio:6.2f}x")


if __name__ == "__main__":
    main()
