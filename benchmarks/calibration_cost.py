"""What calibration costs, as a multiple of one Retrain, and what it finds, per seed.

    python benchmarks/calibration_cost.py [--method l1_sparse] [--scenario random] [--threads 1]

One run, two data sets, each with the project's `calibrate:` defaults (2 seeds, 1 fold each, 8
trials, at most 6 Retrains) on a dense original trained with the digits recipe:
- `synth`: a small synthetic npz (5 classes of 60 grey 8x8 images; 240 for training), own data, so
  the relative lr and steps ranges are searched;
- `digits`: the embedded data set (1,437 training samples), the preset's own ranges, with
  `skip_tuned` off (the shipped project skips it: digits has tuned values).
"x Retrain" = the calibration's wall time (references, trials, evaluation) over the mean wall time of
its Retrain references (training only), both measured in this run. The per-seed gaps are those of
the starting values (what runs uncalibrated: digits' shipped tuned values, the synthetic set's
preset defaults) and of the values chosen.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from machine import describe

from tasks.adapters.params import parse_params
from tasks.production.tune import calibrate
from unlearn.data import load_dataset, load_source
from unlearn.original import train_original
from unlearn.presets import get_preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from projects import synthetic_npz  # noqa: E402  (the synthetic data set the calibration tests use)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="l1_sparse")
    parser.add_argument("--scenario", default="random")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cpu = torch.device("cpu")
    print(describe(cpu))
    calibration = {"scenario": args.scenario, "skip_tuned": False}
    with tempfile.TemporaryDirectory() as folder:
        npz = synthetic_npz(Path(folder) / "synth.npz")
        cases = {
            "synth": ({"data": {"source": "npz", "path": str(npz)}}, load_source("npz", npz)),
            "digits": ({}, load_dataset("digits")),
        }
        print(f"{'data set':<8} {'train':>5} {'x Retrain':>9} {'Retrain s':>9} {'trials':>6}  per-seed gap: start -> "
              "calibrated (values)")  # fmt: skip
        for name, (raw, data) in cases.items():
            deletion = {"method": args.method, "sparsity": 0.0}
            params = parse_params({**raw, "deletion": deletion, "calibrate": calibration})
            model, _ = train_original(get_preset("digits"), data, data.train, cpu, seed=0)
            started = time.perf_counter()
            found = calibrate(params, model, data)
            record = found.methods[args.method]
            start = record["start"] or {}
            print(f"{name:<8} {len(data.train):>5} {found.cost_retrains:>9.2f} {found.retrain_seconds:>9.2f} "
                  f"{record['trials']:>6}  {start.get('seed_gaps')} -> {record.get('seed_gaps')} ({record['values']}); "
                  f"wall {time.perf_counter() - started:.1f} s, bound {found.max_retrains:g}")  # fmt: skip
    print(describe(cpu))


if __name__ == "__main__":
    main()
