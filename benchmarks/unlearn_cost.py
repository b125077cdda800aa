"""Wall time of every unlearning method as a ratio to Retrain's, dense and at 95% sparsity, on digits.

    python benchmarks/unlearn_cost.py [--sparsity 0.95] [--classes 0]

One run: trains the digits original (and its OMP-pruned copy), then times each method's
unlearning of class-wise forgetting with its digits defaults, with UA and RA beside it.
Targets: FT, l1_sparse, IU <= 8% of Retrain; FF <= 10%.
"""

from __future__ import annotations

import argparse

import torch

from unlearn.data import load_dataset
from unlearn.device import pick_device
from unlearn.methods import METHOD_NAMES, default_config, run_method
from unlearn.presets import get_preset
from unlearn.prune import omp, train_with_rewind
from unlearn.splits import class_wise
from unlearn.train import accuracy

TARGETS = {"ft": 0.08, "l1_sparse": 0.08, "iu": 0.08, "ff": 0.10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--classes", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device, preset, bundle = pick_device(args.device), get_preset("digits"), load_dataset("digits")
    split = class_wise(bundle, args.classes)
    retain, forget = split.retain_set(bundle), split.forget_set(bundle)
    dense, rewind, _ = train_with_rewind(preset, bundle, bundle.train, device)
    sparse = omp(dense, rewind, preset, bundle, bundle.train, device, args.sparsity)
    print(f"device {device}, torch threads {torch.get_num_threads()}; digits class-wise {args.classes}")
    print(f"{'method':10} {'sparsity':>8} {'seconds':>8} {'x retrain':>9} {'target':>7} {'UA':>6} {'RA':>6}")
    for label, model, masks in (("dense", dense, None), (f"{args.sparsity:.0%}", sparse.model, sparse.masks)):
        retrain_seconds = None
        for method in METHOD_NAMES:  # retrain first: the others are measured against it
            result = run_method(
                method, model, retain, forget, device, masks=masks, config=default_config(method, "digits")
            )
            retrain_seconds = retrain_seconds or result.seconds
            ratio = result.seconds / retrain_seconds
            target = f"<={TARGETS[method]:.0%}" if method in TARGETS else ""
            ua = 100 - accuracy(result.model, forget, device)
            ra = accuracy(result.model, retain, device)
            figures = f"{result.seconds:8.2f} {ratio:9.3f} {target:>7} {ua:6.1f} {ra:6.1f}"
            print(f"{method:10} {label:>8} {figures}")


if __name__ == "__main__":
    main()
