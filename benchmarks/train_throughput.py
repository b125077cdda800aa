"""Trainer throughput (images/s) against a plain DataLoader loop, same model, batch and device.

    python benchmarks/train_throughput.py [--device auto|cpu|cuda] [--repeats 3]

Prints the median images/s of each loop over the repeats and their ratio, for the digits
net on digits and for resnet18 (CIFAR stem) on random 32x32 data.

    python benchmarks/train_throughput.py --gpu-check [--cpu] [--no-compile] [--epochs N | --seconds S]

is the measurement of `benchmarks/gpu_check.sh` (run that: it also prints the machine and runs
the CUDA tests): the cifar10 preset's Retrain recipe in `unlearn.train.fit` (ResNet-18, batch
256, bf16 autocast and channels_last on CUDA, data resident on the device), eager and
`torch.compile`d, against a DataLoader(TensorDataset) loop of the same model and batch, on
CIFAR-shaped random data; then each one's projected wall time of that Retrain. It needs torch
(and torchvision for ResNet-18) only. Exit status: 0, 2 (no CUDA without --cpu), 3 (a variant
failed or an MLOps package was imported).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import os
import platform
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from machine import describe
from torch.utils.data import DataLoader, TensorDataset

from unlearn.data import TensorSet, as_float, load_dataset
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


def random_cifar(count: int, num_classes: int = 10) -> TensorSet:
    """`count` CIFAR-shaped samples: uint8 3x32x32 images and labels, seeded (0)."""
    generator = torch.Generator().manual_seed(0)
    return TensorSet(
        torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator),
        torch.randint(0, num_classes, (count,), generator=generator),
        tuple(f"random/{i}" for i in range(count)),
    )


def reference_loop(model, data: TensorSet, case: Case, device: torch.device) -> float:
    """The textbook loop: DataLoader over a TensorDataset, copy each batch to the device, fp32."""
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    inputs = data.inputs.float() / (255.0 if data.inputs.dtype == torch.uint8 else 1.0)
    loader = DataLoader(
        TensorDataset(inputs, data.labels), batch_size=case.batch_size, shuffle=True, pin_memory=device.type == "cuda"
    )
    seconds = sum(loader_epoch(model, loader, optimizer, device) for _ in range(case.epochs))
    return len(data) * case.epochs / seconds


def loader_epoch(model, loader: DataLoader, optimizer, device: torch.device) -> float:
    """Seconds of one epoch of the plain loop people write: batches copied to the device, SGD steps."""
    sync(device)
    started = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - started


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
    cifar_like = random_cifar(8192 if gpu else 256)
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


# --- gpu check: the cifar10 Retrain recipe in `fit`, eager and compiled, against a DataLoader loop ---

MLOPS = ("prefect", "mlflow", "dvc")  # absent on a bare GPU machine: this check must not need them
CIFAR10_TRAIN_IMAGES = 50_000  # CIFAR-10's training split (5,000 per class), before the holdout
CIFAR10_CLASSES = 10
MAX_TIMED_EPOCHS = 1000  # bound of a --seconds budget


@dataclass(frozen=True)
class CheckSizes:
    """How much the gpu check measures: samples, batch, warm-up and timed epochs (or seconds)."""

    samples: int
    batch_size: int
    warmup: int
    epochs: int
    seconds: float | None
    compile: bool


@dataclass
class Variant:
    """One measured loop: its label, epoch times (warm-up and timed) or why it did not run."""

    name: str  # short: "DataLoader loop", "fit eager", "fit compiled"
    label: str
    warm: list[float]
    timed: list[float]
    samples: int
    note: str = ""
    failed: str = ""

    @property
    def images_per_second(self) -> float:
        return self.samples / statistics.median(self.timed)

    @property
    def compile_seconds(self) -> float:
        """First epoch's time beyond a timed epoch's: what torch.compile added (0 for eager loops)."""
        if self.name != "fit compiled" or not self.warm:
            return 0.0
        return max(0.0, self.warm[0] - statistics.median(self.timed))


def retrain_workload() -> tuple[TrainConfig, int]:
    """The cifar10 preset's Retrain recipe (a TrainConfig) and its training-set size.

    The size is CIFAR-10's 50,000 training images less the data code's validation holdout (10%
    of each class, `unlearn.data._stratified_split`), computed rather than restated: 45,000.
    """
    import numpy as np

    from unlearn.data import _stratified_split
    from unlearn.methods import default_config

    recipe = default_config("retrain", "cifar10").train
    labels = np.repeat(np.arange(CIFAR10_CLASSES), CIFAR10_TRAIN_IMAGES // CIFAR10_CLASSES)
    kept, _ = _stratified_split(labels, 0.1, seed=0)
    return recipe, len(kept)


def machine_lines(device: torch.device) -> list[str]:
    """The GPU (name, memory, compute capability), torch/CUDA/cuDNN/triton versions, the CPU."""
    lines = []
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        lines.append(
            f"GPU {device.index or 0} of {torch.cuda.device_count()}: {props.name}, {total / 2**30:.1f} GiB "
            f"({free / 2**30:.1f} GiB free), compute capability {props.major}.{props.minor}, "
            f"{props.multi_processor_count} SMs, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
        )
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = "absent"
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang") or "none"
    lines.append(
        f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}, "
        f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}, "
        f"triton {triton}, C compiler {compiler}, python {platform.python_version()}"
    )
    lines.append(describe(torch.device("cpu")) + f"; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    return lines


def time_epochs(epoch: Callable[[], float], sizes: CheckSizes, warmup: int) -> tuple[list[float], list[float]]:
    """`warmup` untimed epochs, then `sizes.epochs` timed ones (or as many as `sizes.seconds` allows)."""
    warm = [epoch() for _ in range(warmup)]
    timed: list[float] = []
    while True:
        timed.append(epoch())
        if sizes.seconds is None:
            if len(timed) >= sizes.epochs:
                break
        elif sum(timed) >= sizes.seconds or len(timed) >= MAX_TIMED_EPOCHS:
            break
    return warm, timed


def dataloader_epochs(model: torch.nn.Module, data: TensorSet, recipe, device: torch.device) -> Callable[[], float]:
    """The loop people write: DataLoader(TensorDataset) of CPU float tensors, batches copied over, fp32."""
    model = model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    dataset = TensorDataset(as_float(data.inputs.cpu()), data.labels.cpu())
    loader = DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, pin_memory=device.type == "cuda")

    def epoch() -> float:
        return loader_epoch(model, loader, optimizer, device)

    return epoch


def fit_epochs(model: torch.nn.Module, data: TensorSet, recipe, device: torch.device) -> Callable[[], float]:
    """One `unlearn.train.fit` call of one epoch of the recipe per call; data already on `device`."""
    seeds = itertools.count()

    def epoch() -> float:
        sync(device)
        started = time.perf_counter()
        fit(model, data, replace(recipe, epochs=1, seed=next(seeds)), device)
        sync(device)
        return time.perf_counter() - started

    return epoch


def fresh_resnet18(arch: str, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, (3, 32, 32), CIFAR10_CLASSES, [0.5] * 3, [0.25] * 3, **options)


def measure_variants(device: torch.device, sizes: CheckSizes, skip_compile: str) -> list[Variant]:
    """The DataLoader loop, `fit` eager and `fit` compiled (unless `skip_compile` says why not)."""
    from unlearn.presets import get_preset
    from unlearn.train import prepare_model

    preset = get_preset("cifar10")
    recipe, _ = retrain_workload()
    recipe = replace(recipe, batch_size=sizes.batch_size)
    data = random_cifar(sizes.samples, CIFAR10_CLASSES)
    resident = data.to(device)  # lives on the device for the whole job, as in a stage
    cuda = device.type == "cuda"
    fit_label = "unlearn fit, bf16 autocast + channels_last" if cuda else "unlearn fit, fp32 on the CPU"
    variants = []

    warm, timed = time_epochs(
        dataloader_epochs(fresh_resnet18(preset.arch, preset.model_options), data, recipe, device), sizes, sizes.warmup
    )
    variants.append(Variant("DataLoader loop", "DataLoader(TensorDataset) loop, fp32", warm, timed, sizes.samples))

    model = fresh_resnet18(preset.arch, preset.model_options)
    warm, timed = time_epochs(fit_epochs(model, resident, recipe, device), sizes, sizes.warmup)
    variants.append(Variant("fit eager", f"{fit_label}, eager", warm, timed, sizes.samples))
    del model

    label = f"{fit_label}, torch.compile"
    if skip_compile:
        variants.append(Variant("fit compiled", label, [], [], sizes.samples, failed=f"skipped ({skip_compile})"))
        return variants
    try:
        model = torch.compile(prepare_model(fresh_resnet18(preset.arch, preset.model_options), device))
        # the first epoch compiles: always warm up at least once, and report what it added separately
        warm, timed = time_epochs(fit_epochs(model, resident, recipe, device), sizes, max(1, sizes.warmup))
        variants.append(Variant("fit compiled", label, warm, timed, sizes.samples))
    except Exception as error:  # report it and keep the eager figures
        tail = traceback.format_exception_only(type(error), error)[-1].strip().splitlines()[0][:300]
        variants.append(Variant("fit compiled", label, [], [], sizes.samples, failed=f"FAILED: {tail}"))
        traceback.print_exc(limit=3)
    return variants


def duration(seconds: float) -> str:
    """`2 h 05 min`, `14 min 03 s`, `8.2 s` or `3.1 days`."""
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3_600:
        return f"{int(seconds // 3_600)} h {int(seconds % 3_600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


def report(variants: list[Variant], sizes: CheckSizes) -> list[str]:
    """images/s of each variant, their ratios and each one's projected cifar10 Retrain time."""
    recipe, train_images = retrain_workload()
    width = max(len(v.label) for v in variants)
    lines = []
    for v in variants:
        if v.failed:
            lines.append(f"  {v.label:{width}} : {v.failed}")
            continue
        first = f"; first epoch {v.warm[0]:.2f} s" if v.warm else ""
        compiled = f"; compile {v.compile_seconds:.1f} s, excluded" if v.name == "fit compiled" else ""
        lines.append(
            f"  {v.label:{width}} : {v.images_per_second:9.1f} images/s "
            f"(median epoch {statistics.median(v.timed):.3f} s of {len(v.timed)}{first}{compiled})"
        )
    done = {v.name: v for v in variants if not v.failed}
    for over, under in (
        ("fit eager", "DataLoader loop"),
        ("fit compiled", "DataLoader loop"),
        ("fit compiled", "fit eager"),
    ):
        if over in done and under in done:
            ratio = done[over].images_per_second / done[under].images_per_second
            lines.append(f"ratio {over} / {under}: {ratio:.2f}x")
    images = recipe.epochs * train_images
    lines.append(
        f"projected cifar10 Retrain: {recipe.epochs} epochs x {train_images:,} images = {images:,} images "
        f"(measured at batch {sizes.batch_size}; the preset's is {recipe.batch_size}):"
    )
    for v in done.values():
        seconds = images / v.images_per_second + v.compile_seconds
        compiled = f" incl. {v.compile_seconds:.0f} s compile" if v.name == "fit compiled" else ""
        lines.append(f"  {v.label:{width}} : {duration(seconds)} ({seconds:,.0f} s{compiled})")
    return lines


def gpu_check(args: argparse.Namespace) -> int:
    """`benchmarks/gpu_check.sh`'s Python: machine (`--machine-only`) or throughput and projection."""
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu:
        print(
            f"gpu_check: no CUDA device visible to torch {torch.__version__} "
            f"(CUDA build {torch.version.cuda or 'none'}): run it on a GPU machine, or pass --cpu to try the path here",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.machine_only:
        print("\n".join(machine_lines(device)))
        return 0
    if args.cpu:
        sizes = CheckSizes(args.samples or 8, args.batch_size or 4, args.warmup, args.epochs or 1, args.seconds, False)
        skip = "--cpu: the CPU path is for testing the script, not for compile times"
    else:
        preset_batch = retrain_workload()[0].batch_size
        sizes = CheckSizes(
            args.samples or 4096, args.batch_size or preset_batch, args.warmup, args.epochs or 5, args.seconds, True
        )
        skip = "--no-compile" if args.no_compile else ""
    budget = f"{sizes.seconds:g} s of timed epochs" if sizes.seconds is not None else f"{sizes.epochs} timed epoch(s)"
    print(
        f"resnet18 of the cifar10 preset on {device.type}: random 3x32x32 data, {CIFAR10_CLASSES} classes, "
        f"{sizes.samples} samples, batch {sizes.batch_size}; median of {budget} after {sizes.warmup} warm-up epoch(s)"
    )
    print(
        "  fit runs the cifar10 Retrain recipe (SGD, random crop + flip on the device) on device-resident data;"
        " the DataLoader loop copies each batch and has no augmentation, which favours it"
    )
    variants = measure_variants(device, sizes, skip)
    print("\n".join(report(variants, sizes)))
    imported = [name for name in MLOPS if name in sys.modules]
    print(f"MLOps packages imported: {', '.join(imported) or 'none'} (checked {', '.join(MLOPS)})")
    failed = [v for v in variants if v.failed.startswith("FAILED")]
    return 3 if failed or imported else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    check = parser.add_argument_group("gpu check (what benchmarks/gpu_check.sh runs)")
    check.add_argument("--gpu-check", action="store_true", help="the cifar10 Retrain throughput check instead")
    check.add_argument("--cpu", action="store_true", help="on the CPU with tiny sizes, no compile (tests the path)")
    check.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    check.add_argument("--machine-only", action="store_true", help="print the machine and stop")
    budget = check.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="timed epochs per variant (default 5; 1 with --cpu)")
    budget.add_argument("--seconds", type=float, help="timed epochs per variant until this many seconds")
    check.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default 1)")
    check.add_argument("--samples", type=int, help="random samples (default 4096; 8 with --cpu)")
    check.add_argument("--batch-size", type=int, help="default: the preset's 256 (4 with --cpu)")
    args = parser.parse_args()
    if args.gpu_check:
        sys.exit(gpu_check(args))
    device = pick_device(args.device)
    print(f"{describe(device)}; median of {args.repeats} repeats")
    print(f"{'case':34} {'reference img/s':>16} {'unlearn img/s':>14} {'ratio':>6}")
    for case in cases(device):
        speed = measure(case, device, args.repeats)
        ratio = speed["unlearn"] / speed["reference"]
        print(f"{case.name:34} {speed['reference']:16.0f} {speed['unlearn']:14.0f} {ratio:6.2f}x")


if __name__ == "__main__":
    main()
