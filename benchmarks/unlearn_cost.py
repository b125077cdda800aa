"""Wall time of every unlearning method as a ratio to Retrain's, dense and at 95% sparsity, on digits.

    python benchmarks/unlearn_cost.py [--sparsity 0.95] [--classes 0] [--repeats 3]

One run: trains the digits original (and its OMP-pruned copy), then times each method's
unlearning of class-wise forgetting with its digits defaults (median of `--repeats`), with
UA and RA beside it. Targets (issue 3): FT, l1_sparse, IU <= 8% of Retrain; FF <= 10%.

The paper's FT and l1-sparse run 10 epochs against Retrain's 182 (5.5%). On digits they run
3 against Retrain's 20 (within finding (c)'s quarter, not the target's 8%): their ratio is
set by that epoch count, not by the code. The last rows run them at the paper's proportion
(round(20 * 10 / 182) = 1 epoch) to show what meeting the target costs in forgetting on
digits (docs/architecture.md, "Choices").
"""

from __future__ import annotations

import argparse
import statistics

from machine import describe

from unlearn.data import load_dataset
from unlearn.device import pick_device
from unlearn.methods import METHOD_NAMES, default_config, run_method
from unlearn.presets import get_preset
from unlearn.prune import omp, train_with_rewind
from unlearn.splits import class_wise
from unlearn.train import accuracy

TARGETS = {"ft": 0.08, "l1_sparse": 0.08, "iu": 0.08, "ff": 0.10}
PAPER_EPOCH_RATIO = 10 / 182  # FT / l1-sparse epochs over Retrain's in the paper's CIFAR-10 recipe


def timed(method, config, model, masks, retain, forget, device, repeats):
    """(median seconds, UA, RA) of `repeats` runs of `method` (they differ only in wall time)."""
    runs = [run_method(method, model, retain, forget, device, masks=masks, config=config) for _ in range(repeats)]
    last = runs[-1].model
    ua, ra = 100 - accuracy(last, forget, device), accuracy(last, retain, device)
    return statistics.median(run.seconds for run in runs), ua, ra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--classes", type=int, nargs="+", default=[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device, preset, bundle = pick_device(args.device), get_preset("digits"), load_dataset("digits")
    split = class_wise(bundle, args.classes)
    retain, forget = split.retain_set(bundle), split.forget_set(bundle)
    dense, rewind, _ = train_with_rewind(preset, bundle, bundle.train, device)
    sparse = omp(dense, rewind, preset, bundle, bundle.train, device, args.sparsity)
    paper_epochs = max(1, round(preset.train.epochs * PAPER_EPOCH_RATIO))
    print(f"{describe(device)}\ndigits class-wise {args.classes}, median of {args.repeats}")
    print(f"{'method':22} {'model':>6} {'seconds':>8} {'x retrain':>9} {'target':>7} {'UA':>6} {'RA':>6}")
    cases = [(method, {}) for method in METHOD_NAMES]  # retrain first: the others are measured against it
    cases += [(method, {"epochs": paper_epochs}) for method in ("ft", "l1_sparse")]
    for label, model, masks in (("dense", dense, None), (f"{args.sparsity:.0%}", sparse.model, sparse.masks)):
        retrain_seconds = None
        for method, overrides in cases:
            config = default_config(method, "digits", **overrides)
            seconds, ua, ra = timed(method, config, model, masks, retain, forget, device, args.repeats)
            retrain_seconds = retrain_seconds or seconds
            ratio = seconds / retrain_seconds
            target = f"<={TARGETS[method]:.0%}" if method in TARGETS else ""
            met = "" if method not in TARGETS else (" ok" if ratio <= TARGETS[method] else " MISSED")
            name = method + (f" ({paper_epochs} ep)" if overrides else "")
            print(f"{name:22} {label:>6} {seconds:8.2f} {ratio:9.3f} {target:>7} {ua:6.1f} {ra:6.1f}{met}")


if __name__ == "__main__":
    main()
