"""What a benchmark ran on, and whether anything else was competing for it."""

from __future__ import annotations

import os

import torch

# Two processes of two OpenMP threads each on two cores spin-wait on each other: a digits
# fine-tune measured 0.8 s alone and 10-13 s beside a twin. Figures taken under load are noise.
BUSY_LOAD_SHARE = 0.25


def describe(device: torch.device) -> str:
    """`cpu x2 threads, load 0.1 (idle)`, or the GPU's name; warns when other work is running."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}"
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    state = "idle" if load <= BUSY_LOAD_SHARE * cores else "BUSY: other work competes, figures are unreliable"
    return (
        f"cpu x{torch.get_num_threads()} threads of {cores} cores, load {load:.2f} ({state}); torch {torch.__version__}"
    )
